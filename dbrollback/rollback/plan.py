"""Which run a rollback undoes, what it needs, and the refusals (exit 3) before anything changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import pairwise

import psycopg

from dbrollback.catalog.fingerprints import NO_KEY, TAKEN, Fingerprint, fingerprints_of_run
from dbrollback.catalog.journal import RunRecord, list_runs, rolled_back_runs
from dbrollback.durations import format_duration
from dbrollback.errors import ConfigError, DbrollbackError, RefusedForSafety, SnapshotCorrupt, UnknownRevision
from dbrollback.settings import Settings
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore

STRATEGIES = ("merge", "restore")


@dataclass
class RollbackPlan:
    run: RunRecord  # the newest run reverted
    revisions: list[str]  # in downgrade order: newest first, over all runs
    target: str  # the downgrade target: the heads before the oldest run
    fingerprints: dict[str, list[Fingerprint]] = field(default_factory=dict)  # revision -> tables
    manifests: dict[str, SnapshotManifest] = field(default_factory=dict)  # snapshot id -> manifest
    runs: list[RunRecord] = field(default_factory=list)  # every run reverted, newest first
    strategy: str = "merge"

    @property
    def oldest(self) -> RunRecord:
        return self.runs[-1] if self.runs else self.run

    def table_manifest(self, fingerprint: Fingerprint) -> TableManifest:
        manifest = self.manifests[fingerprint.snapshot_id]
        for tm in manifest.tables:
            if (tm.schema_name, tm.table_name) == (fingerprint.schema, fingerprint.table):
                return tm
        raise SnapshotCorrupt(
            f"Snapshot {manifest.id} does not hold {fingerprint.schema}.{fingerprint.table}",
            id=manifest.id,
        )

    def lossy_tables(self) -> list[str]:
        return [f"{f.schema}.{f.table}" for fs in self.fingerprints.values() for f in fs]


def _candidates(conn: psycopg.Connection) -> tuple[list[RunRecord], dict[int, int]]:
    """Upgrade runs not rolled back yet that applied something (or did not complete), newest first."""
    reverted = rolled_back_runs(conn)
    runs = list_runs(conn, None)
    candidates = [
        r
        for r in runs
        if r.command == "upgrade"
        and r.id not in reverted
        and (r.status != "succeeded" or r.applied_revisions)
    ]
    return candidates, reverted


def _given_run(conn: psycopg.Connection, run_id: int, reverted: dict[int, int]) -> RunRecord:
    found = next((r for r in list_runs(conn, None) if r.id == run_id), None)
    if found is None:
        raise ConfigError(f"There is no run {run_id} in this database's journal (`dbrollback history`)")
    if found.command != "upgrade":
        raise RefusedForSafety(
            f"Run {run_id} is a {found.command}, not an upgrade: only upgrade runs can be rolled back",
            run_id=run_id,
        )
    if run_id in reverted:
        raise RefusedForSafety(
            f"Run {run_id} was already rolled back (by run {reverted[run_id]})",
            run_id=run_id,
            rolled_back_by=reverted[run_id],
        )
    return found


def _check_completed(run: RunRecord) -> None:
    if run.status != "succeeded":
        where = f", failed at revision {run.failed_revision}" if run.failed_revision else ""
        applied = ", ".join(run.applied_revisions) or "none"
        raise RefusedForSafety(
            f"Run {run.id} is {run.status}{where} (`dbrollback status` lists it as {run.status}); "
            f"only a completed run can be rolled back. Revisions it applied: {applied}. Finish it with "
            "`dbrollback upgrade`, or undo its applied revisions with `dbrollback downgrade REV`. "
            "Nothing was changed.",
            run_id=run.id,
            status=run.status,
        )
    if not run.applied_revisions:
        raise RefusedForSafety(
            f"Run {run.id} applied no revision: there is nothing to roll back", run_id=run.id
        )


def choose_run(conn: psycopg.Connection, run_id: int | None) -> RunRecord:
    """The run to undo: `run_id`, or the most recent upgrade run that applied something and was not
    rolled back yet. Refuses a run that did not complete."""
    return choose_runs(conn, run_id)[0]


def _start(run: RunRecord) -> str:
    return run.from_revisions[0] if len(run.from_revisions) == 1 else "base" if not run.from_revisions else ""


def choose_runs(
    conn: psycopg.Connection,
    run_id: int | None = None,
    *,
    to: str | None = None,
    steps: int | None = None,
    known_revision: Callable[[str], bool] = lambda _: False,
) -> list[RunRecord]:
    """The runs to undo, newest first.

    Without `to`/`steps`: `run_id`, or the most recent upgrade run not rolled back yet. With
    `steps`: that many runs, newest first; with `to`: runs newest first until the one that started
    at revision `to`. With `run_id` and `to`/`steps`, that run must be among them (the runs after
    it are rolled back too). Refuses runs that did not complete and gaps between runs.
    """
    if to is not None and steps is not None:
        raise ConfigError("--to and --steps cannot be used together")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, not {steps}")
    candidates, reverted = _candidates(conn)
    given = _given_run(conn, run_id, reverted) if run_id is not None else None
    if to is None and steps is None:
        if given is not None:
            _check_completed(given)
            return [given]
        if not candidates:
            raise RefusedForSafety("There is no upgrade run left to roll back in this database's journal")
        _check_completed(candidates[0])
        return [candidates[0]]
    if not candidates:
        raise RefusedForSafety("There is no upgrade run left to roll back in this database's journal")
    chosen: list[RunRecord] = []
    if steps is not None:
        chosen = candidates[:steps]
        if len(chosen) < steps:
            raise RefusedForSafety(
                f"--steps {steps}: only {len(chosen)} upgrade run(s) are left to roll back "
                f"({', '.join(str(r.id) for r in chosen)}). Nothing was changed.",
                available=[r.id for r in chosen],
            )
    else:
        assert to is not None
        if not known_revision(to):  # an exact id is never taken for a prefix of another one
            to = _resolve_prefix(to, candidates)
        for run in candidates:
            chosen.append(run)
            if _start(run) == to:
                break
        else:
            starts = [_start(r) or "several heads" for r in candidates]
            known = to == "base" or known_revision(to) or any(to in r.applied_revisions for r in candidates)
            message = (
                f"--to {to}: no upgrade run left to roll back started from {to}; they started from "
                f"{', '.join(starts)} (newest first). Nothing was changed."
            )
            if not known:
                raise UnknownRevision(f"Unknown revision {to!r}. " + message, revision=to)
            raise RefusedForSafety(message, revision=to, run_starts=starts)
    for run in chosen:
        _check_completed(run)
    for newer, older in pairwise(chosen):
        if sorted(newer.from_revisions) != sorted(older.to_revisions or []):
            raise RefusedForSafety(
                f"Run {newer.id} started at {', '.join(newer.from_revisions) or 'base'}, but run "
                f"{older.id} before it left the database at {', '.join(older.to_revisions or []) or 'base'}: "
                "something changed the revisions in between (a downgrade, a manual stamp). Roll back "
                "the runs one at a time. Nothing was changed.",
                run_id=newer.id,
            )
    if given is not None and given.id not in {r.id for r in chosen}:
        raise RefusedForSafety(
            f"Run {given.id} is not among the runs this rollback would undo "
            f"({', '.join(str(r.id) for r in chosen)}); only the most recent run not rolled back "
            "can be rolled back, or an older one together with every run after it (--to). "
            "Nothing was changed.",
            run_id=given.id,
        )
    return chosen


def _resolve_prefix(to: str, candidates: list[RunRecord]) -> str:
    """`to` as given, or the one revision a candidate run started from that it is a prefix of
    (as Alembic takes revision ids); a prefix of several is a usage error."""
    starts = {_start(r) for r in candidates if _start(r)}
    if to == "base" or to in starts:
        return to
    matches = sorted(s for s in starts if s.startswith(to) and s != "base")
    if len(matches) > 1:
        raise ConfigError(
            f"--to {to} is ambiguous: runs started from {', '.join(matches)}; give more of the revision id"
        )
    return matches[0] if matches else to


def check_heads(run: RunRecord, current_heads: tuple[str, ...]) -> None:
    if sorted(current_heads) != sorted(run.to_revisions or []):
        raise RefusedForSafety(
            f"The database is at {', '.join(current_heads) or 'base'}, but run {run.id} left it at "
            f"{', '.join(run.to_revisions or []) or 'base'}: something ran after it (a later run or a "
            "manual change). Roll that back first (`dbrollback history` shows the runs). "
            "Nothing was changed.",
            run_id=run.id,
            current_heads=list(current_heads),
            run_heads=run.to_revisions,
        )


def downgrade_target(run: RunRecord) -> str:
    """Where the downgrade back to where `run` started stops: that revision, or `base`. A run that
    started from several heads (typically it applied their merge revision) goes down to one of
    them: Alembic undoes what descends from it, unmerging back to every head. Revisions the run
    applied on another branch would stay: the downgrade's planned steps are checked to be exactly
    the run's revisions, so such a rollback is refused, not half done."""
    if len(run.from_revisions) > 1:
        return sorted(run.from_revisions)[0]
    return run.from_revisions[0] if run.from_revisions else "base"


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {strategy!r}: use merge or restore")


def gather(
    conn: psycopg.Connection,
    settings: Settings,
    store: SnapshotStore,
    run: RunRecord | list[RunRecord],
    strategy: str,
) -> RollbackPlan:
    """The fingerprints and snapshots the rollback of `run` (or of several, newest first) needs;
    refuses when one is unusable."""
    check_strategy(strategy)
    runs = run if isinstance(run, list) else [run]
    revisions = [r for one in runs for r in reversed(one.applied_revisions)]
    plan = RollbackPlan(runs[0], revisions, downgrade_target(runs[-1]), runs=runs, strategy=strategy)
    for one in runs:
        _gather_run(conn, plan, one, strategy)
    snapshot_ids = list(dict.fromkeys(f.snapshot_id for fs in plan.fingerprints.values() for f in fs))
    for snapshot_id in snapshot_ids:
        plan.manifests[snapshot_id] = _usable_snapshot(conn, settings, store, snapshot_id)
    for fs in plan.fingerprints.values():
        for fingerprint in fs:
            plan.table_manifest(fingerprint)
    return plan


# Catalog version that added post-image fingerprints: runs applied before it have none.
FINGERPRINTS_SINCE = 4


def unprotected_reason(conn: psycopg.Connection, run_id: int) -> str | None:
    """Why the run's destroyed data was never saved (so no rollback can bring it back), or None.

    Without this, such a run would roll back as a plain downgrade reporting nothing lost."""
    row = conn.execute(
        """SELECT coalesce(r.snapshot_skipped, false), r.snapshot_policy,
                  r.started_at < (SELECT applied_at FROM dbrollback.catalog_version WHERE version = %s)
           FROM dbrollback.runs r WHERE r.id = %s""",
        (FINGERPRINTS_SINCE, run_id),
    ).fetchone()
    if row is None:
        return None
    skipped, policy, before_fingerprints = row
    if skipped:
        return "applied with --no-snapshot"
    if policy == "never":
        return "applied with snapshot policy 'never'"
    if before_fingerprints or policy is None:
        return "journaled by an older dbrollback that kept no snapshots or post-image fingerprints"
    return None


def _gather_run(conn: psycopg.Connection, plan: RollbackPlan, run: RunRecord, strategy: str) -> None:
    reason = unprotected_reason(conn, run.id)
    if reason is not None:
        raise RefusedForSafety(
            f"Run {run.id} was {reason}: the data its revisions destroyed was never saved, so a "
            "rollback cannot bring it back. `dbrollback downgrade` undoes the schema only. "
            "Nothing was changed.",
            run_id=run.id,
        )
    for fingerprint in fingerprints_of_run(conn, run.id):
        plan.fingerprints.setdefault(fingerprint.revision, []).append(fingerprint)
        name = f"{fingerprint.schema}.{fingerprint.table}"
        if fingerprint.status == NO_KEY and strategy == "merge":
            raise RefusedForSafety(
                f"{name} has no primary key or unique NOT NULL key ({fingerprint.note}): its rows cannot "
                "be matched, so --strategy merge cannot roll it back. Hint: --strategy restore puts "
                "the table back to the snapshot (losing later writes). Nothing was changed.",
                table=name,
            )
        if fingerprint.status == TAKEN and not _fingerprint_table_exists(conn, fingerprint):
            raise RefusedForSafety(
                f"The post-image fingerprint of {name} ({fingerprint.fp_table}) is "
                "gone (pruned?); the rollback needs it. Nothing was changed.",
                table=name,
            )


def _fingerprint_table_exists(conn: psycopg.Connection, fingerprint: Fingerprint) -> bool:
    row = conn.execute(
        "SELECT to_regclass(quote_ident('dbrollback') || '.' || quote_ident(%s)) IS NOT NULL",
        (fingerprint.fp_table,),
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class SnapshotProblem:
    """Why a snapshot cannot serve a rollback: ``short`` for status/history, ``refusal`` for rollback."""

    short: str
    refusal: str


def _window(window: timedelta) -> str:
    days = window / timedelta(days=1)
    return f"{int(days)}-day" if days == int(days) and days >= 1 else format_duration(window)


def snapshot_problem(
    conn: psycopg.Connection, settings: Settings, store: SnapshotStore, snapshot_id: str
) -> SnapshotManifest | SnapshotProblem:
    """The snapshot's manifest, or why it is pruned, unreadable or outside the rollback window
    (the checks that do not read every byte; rollback also verifies the files' sha256)."""
    row = conn.execute("SELECT deleted_at FROM dbrollback.snapshots WHERE id = %s", (snapshot_id,)).fetchone()
    if row is not None and row[0] is not None:
        return SnapshotProblem(
            f"snapshot {snapshot_id} pruned on {row[0]:%Y-%m-%d}",
            f"Snapshot {snapshot_id} was pruned on {row[0]:%Y-%m-%d %H:%M %Z}; the "
            "rollback needs it. Nothing was changed.",
        )
    try:
        manifest = store.load(snapshot_id)
    except DbrollbackError as exc:
        return SnapshotProblem(
            f"snapshot {snapshot_id} missing from the store ({store.location})",
            f"Snapshot {snapshot_id} cannot be read from {store.location}: {exc.message}. "
            "Nothing was changed.",
        )
    deadline = manifest.created_at + settings.rollback_window
    if datetime.now(timezone.utc) > deadline:
        return SnapshotProblem(
            f"outside the {_window(settings.rollback_window)} rollback window (ended {deadline:%Y-%m-%d})",
            f"Snapshot {snapshot_id} was taken {manifest.created_at:%Y-%m-%d %H:%M %Z}, outside the "
            f"rollback window ({settings.rollback_window}); its data may no longer match what the app "
            "expects. Nothing was changed.",
        )
    return manifest


def _usable_snapshot(
    conn: psycopg.Connection, settings: Settings, store: SnapshotStore, snapshot_id: str
) -> SnapshotManifest:
    manifest = snapshot_problem(conn, settings, store, snapshot_id)
    if isinstance(manifest, SnapshotProblem):
        raise RefusedForSafety(manifest.refusal, snapshot=snapshot_id)
    problems = store.verify(snapshot_id)
    if problems:
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id} is damaged; nothing was changed: " + "; ".join(problems),
            id=snapshot_id,
            problems=problems,
        )
    return manifest
