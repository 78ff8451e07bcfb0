"""Which run a rollback undoes, what it needs, and the refusals (exit 3) before anything changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg

from dbrollback.catalog.fingerprints import NO_KEY, TAKEN, Fingerprint, fingerprints_of_run
from dbrollback.catalog.journal import RunRecord, list_runs, rolled_back_runs
from dbrollback.errors import ConfigError, DbrollbackError, RefusedForSafety, SnapshotCorrupt
from dbrollback.settings import Settings
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore

STRATEGIES = ("merge", "restore")


@dataclass
class RollbackPlan:
    run: RunRecord
    revisions: list[str]  # in downgrade order: newest first
    target: str  # the downgrade target: the heads before the run
    fingerprints: dict[str, list[Fingerprint]] = field(default_factory=dict)  # revision -> tables
    manifests: dict[str, SnapshotManifest] = field(default_factory=dict)  # snapshot id -> manifest

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


def choose_run(conn: psycopg.Connection, run_id: int | None) -> RunRecord:
    """The run to undo: `run_id`, or the most recent upgrade run that applied something and was not
    rolled back yet. Refuses a run that did not complete."""
    reverted = rolled_back_runs(conn)
    runs = list_runs(conn, None)
    if run_id is not None:
        found = next((r for r in runs if r.id == run_id), None)
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
        run = found
    else:
        candidates = [
            r
            for r in runs
            if r.command == "upgrade"
            and r.id not in reverted
            and (r.status != "succeeded" or r.applied_revisions)
        ]
        if not candidates:
            raise RefusedForSafety("There is no upgrade run left to roll back in this database's journal")
        run = candidates[0]  # list_runs is newest first
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
    return run


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
    if len(run.from_revisions) > 1:
        raise RefusedForSafety(
            f"Run {run.id} started from several heads ({', '.join(run.from_revisions)}); rolling back "
            "a run on a branched history is not supported yet. Nothing was changed.",
            run_id=run.id,
        )
    return run.from_revisions[0] if run.from_revisions else "base"


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {strategy!r}: use merge or restore")
    if strategy == "restore":
        raise ConfigError("--strategy restore is not implemented yet; use --strategy merge (the default)")


def gather(
    conn: psycopg.Connection, settings: Settings, store: SnapshotStore, run: RunRecord, strategy: str
) -> RollbackPlan:
    """The fingerprints and snapshots the merge needs; refuses when one is unusable."""
    check_strategy(strategy)
    plan = RollbackPlan(run, list(reversed(run.applied_revisions)), downgrade_target(run))
    skipped = conn.execute("SELECT snapshot_skipped FROM dbrollback.runs WHERE id = %s", (run.id,)).fetchone()
    if skipped and skipped[0]:
        raise RefusedForSafety(
            f"Run {run.id} was applied with --no-snapshot: the data its revisions destroyed was never "
            "saved, so a merge cannot bring it back. `dbrollback downgrade` undoes the schema only. "
            "Nothing was changed.",
            run_id=run.id,
        )
    for fingerprint in fingerprints_of_run(conn, run.id):
        plan.fingerprints.setdefault(fingerprint.revision, []).append(fingerprint)
        name = f"{fingerprint.schema}.{fingerprint.table}"
        if fingerprint.status == NO_KEY:
            raise RefusedForSafety(
                f"{name} has no primary key or unique NOT NULL key ({fingerprint.note}): its rows cannot "
                "be matched, so --strategy merge cannot roll it back. Hint: --strategy restore puts "
                "the table back to the snapshot (losing later writes). Nothing was changed.",
                table=name,
            )
        if fingerprint.status == TAKEN and not _fingerprint_table_exists(conn, fingerprint):
            raise RefusedForSafety(
                f"The post-image fingerprint of {name} ({fingerprint.fp_table}) is "
                "gone (pruned?); a merge needs it. Nothing was changed.",
                table=name,
            )
    snapshot_ids = list(dict.fromkeys(f.snapshot_id for fs in plan.fingerprints.values() for f in fs))
    for snapshot_id in snapshot_ids:
        plan.manifests[snapshot_id] = _usable_snapshot(conn, settings, store, snapshot_id)
    for fs in plan.fingerprints.values():
        for fingerprint in fs:
            plan.table_manifest(fingerprint)
    return plan


def _fingerprint_table_exists(conn: psycopg.Connection, fingerprint: Fingerprint) -> bool:
    row = conn.execute(
        "SELECT to_regclass(quote_ident('dbrollback') || '.' || quote_ident(%s)) IS NOT NULL",
        (fingerprint.fp_table,),
    ).fetchone()
    return bool(row and row[0])


def _usable_snapshot(
    conn: psycopg.Connection, settings: Settings, store: SnapshotStore, snapshot_id: str
) -> SnapshotManifest:
    row = conn.execute("SELECT deleted_at FROM dbrollback.snapshots WHERE id = %s", (snapshot_id,)).fetchone()
    if row is not None and row[0] is not None:
        raise RefusedForSafety(
            f"Snapshot {snapshot_id} was pruned on {row[0]:%Y-%m-%d %H:%M %Z}; the "
            "rollback needs it. Nothing was changed.",
            snapshot=snapshot_id,
        )
    try:
        manifest = store.load(snapshot_id)
    except DbrollbackError as exc:
        raise RefusedForSafety(
            f"Snapshot {snapshot_id} cannot be read from {store.location}: {exc.message}. "
            "Nothing was changed.",
            snapshot=snapshot_id,
        ) from None
    deadline = manifest.created_at + settings.rollback_window
    if datetime.now(timezone.utc) > deadline:
        raise RefusedForSafety(
            f"Snapshot {snapshot_id} was taken {manifest.created_at:%Y-%m-%d %H:%M %Z}, outside the "
            f"rollback window ({settings.rollback_window}); its data may no longer match what the app "
            "expects. Nothing was changed.",
            snapshot=snapshot_id,
        )
    problems = store.verify(snapshot_id)
    if problems:
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id} is damaged; nothing was changed: " + "; ".join(problems),
            id=snapshot_id,
            problems=problems,
        )
    return manifest
