"""`dbrollback rollback` as a library call: undo an upgrade run, merging back the data it destroyed.

See docs/rollback.md. Everything that changes the database happens in ONE transaction (downgrades,
merges, verification, the journal's mark), so a failure changes nothing (exit 4) and a dry run is
the real thing rolled back.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import MigrationRunner, StepFailed, add_version_location
from dbrollback.catalog import audit
from dbrollback.catalog.fingerprints import TAKEN
from dbrollback.catalog.journal import Journal, mark_interrupted_runs
from dbrollback.catalog.lock import acquire, unlock
from dbrollback.catalog.revision_sources import stored_revision_source
from dbrollback.catalog.schema import catalog_exists, ensure_catalog
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.errors import ConfigError, DbrollbackError, MigrationFailed, RefusedForSafety
from dbrollback.expand_api import mirrored_columns, refuse_contracted
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.rollback.execute import DryRunFinished
from dbrollback.rollback.fill import (
    DEFAULT_BATCH_ROWS,
    Fill,
    abandon_fills,
    fills_of,
    pending_fill_run,
    resume_hint,
    run_fills,
)
from dbrollback.rollback.plan import RollbackPlan, check_heads, check_strategy, choose_runs, gather
from dbrollback.rollback.report import RollbackResult, SkippedDowngrade, TableReport
from dbrollback.rollback.restore_strategy import downgrades_guarded
from dbrollback.rollback.roll_forward import RecordingRollbackHooks, SavedValues
from dbrollback.rollback.sqlparts import live_columns
from dbrollback.settings import Settings
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.snapshot_api import configured_store, take_snapshot

Confirm = Callable[[RollbackPlan], bool]


def _quiet(_: str) -> None:
    pass


def rollback(
    settings: Settings,
    *,
    run_id: int | None = None,
    to: str | None = None,
    steps: int | None = None,
    strategy: str = "merge",
    dry_run: bool = False,
    assume_yes: bool = True,
    confirm: Confirm | None = None,
    notify: Notify = _quiet,
    progress: ProgressReporter = SILENT,
    batched: bool = False,
    batch_rows: int | None = None,
    resume: bool = False,
    abandon: bool = False,
) -> RollbackResult:
    """Undo upgrade run `run_id` (default: the most recent one not rolled back yet), or with `to` /
    `steps` several runs newest first (until the database is at revision `to`, or `steps` runs), all
    in one transaction.

    `strategy` "merge" keeps later writes; "restore" puts the snapshotted tables back exactly to
    their pre-image (discarding later writes, counted in `lost_writes`) and skips downgrades that
    are missing, empty or raise. Unless `assume_yes`, `confirm` is shown the plan before anything
    changes and must return True, or the rollback is refused (exit 3); without one it is refused.
    Refusals (exit 3) change nothing; a failure rolls everything back (exit 4).

    `batched` (merge only) puts the values of existing rows back after the transaction commits,
    in transactions of `batch_rows` rows each (default 10,000; a resume goes on with the size the
    rollback began with unless given; see dbrollback.rollback.fill); if those batches are
    interrupted, everything else refuses until ``resume=True`` finishes them (``abandon=True`` as
    well gives them up instead).
    """
    from dbrollback.api import error_text, guard_connection, timeouts_of

    started = time.monotonic()
    check_strategy(strategy)
    if batched and strategy != "merge":
        raise ConfigError("--batched applies to --strategy merge only")
    if batch_rows is not None and batch_rows < 1:
        raise ConfigError(f"--batch-rows must be at least 1, not {batch_rows}")
    if batch_rows is not None and not (batched or resume):
        raise ConfigError("--batch-rows applies to --batched (or --resume) only")
    if abandon and not resume:
        raise ConfigError("--abandon applies to --resume only")
    if resume and (run_id is not None or to is not None or steps is not None or dry_run):
        raise ConfigError(
            "--resume takes no --run, --to, --steps or --dry-run: it finishes the pending rollback"
        )
    AlembicProject(settings.alembic_config)  # a missing alembic.ini fails before any connection
    database = resolve_database(settings, notify)
    project = AlembicProject(settings.alembic_config, database.sqlalchemy_url)
    store = configured_store(settings)
    with (
        connect(database, "rollback") as conn,
        tempfile.TemporaryDirectory(prefix="dbrb-sources-") as tmp,
        contextlib.ExitStack() as guards,
    ):
        if not catalog_exists(conn):
            raise RefusedForSafety("This database has no dbrollback journal: no run to roll back")
        ensure_catalog(conn)
        acquire(conn, settings.lock_wait)
        try:
            mark_interrupted_runs(conn, lock_held_by_us=True)
            pending = pending_fill_run(conn)
            if resume:
                if pending is None:
                    raise RefusedForSafety(
                        "No batched rollback is waiting to be resumed; nothing was changed"
                    )
                return _resume(
                    settings, database, project, conn, pending, batch_rows, started, notify, progress, abandon
                )
            if pending is not None:
                raise RefusedForSafety(resume_hint(pending), rollback_run_id=pending)
            runs = choose_runs(
                conn, run_id, to=to, steps=steps, known_revision=lambda rev: _in_checkout(project, rev)
            )
            run = runs[0]
            applied = [r for one in runs for r in one.applied_revisions]
            notes = _use_stored_sources(conn, project, applied, Path(tmp), notify)
            runner = MigrationRunner(
                project, database.sqlalchemy_url, timeouts_of(settings), single_transaction=True
            )
            heads = guard_connection(database, runner.current_heads)
            check_heads(run, heads)
            plan = gather(conn, settings, store, runs, strategy)
            if batched:
                _refuse_batched_twice(plan)
            skipped: list[SkippedDowngrade] = []
            if strategy == "restore":
                # Before Alembic builds its steps: a step takes the module's downgrade when made.
                guards.enter_context(downgrades_guarded(project, plan.revisions, skipped, notify))
            else:
                _refuse_missing_downgrades(project, plan)
            planned = [s.revision for s in runner.plan("downgrade", plan.target, heads)]
            if planned != plan.revisions:
                which = ", ".join(str(r.id) for r in runs)
                raise RefusedForSafety(
                    f"Downgrading to {plan.target} would undo {', '.join(planned) or 'nothing'}, not "
                    f"what run(s) {which} applied ({', '.join(plan.revisions)}). Nothing was changed.",
                    run_id=run.id,
                )
            _refuse_autocommit_blocks(conn, project, plan)
            refuse_contracted(conn, plan.revisions)
            if not (dry_run or assume_yes) and (confirm is None or not confirm(plan)):
                raise RefusedForSafety("Rollback not confirmed; nothing was changed")
            result = RollbackResult(
                run.id, plan.revisions, strategy, dry_run, run_ids=[r.id for r in runs], notes=notes
            )
            result.skipped_downgrades = skipped
            saved_values: list[SavedValues] = []
            lost = (
                {}
                if dry_run
                else _save_values_the_downgrade_drops(
                    settings, database, conn, store, plan, progress, notify, saved_values
                )
            )
            journal = Journal(conn, settings.actor)
            if not dry_run:
                result.rollback_run_id = journal.start_run(
                    "rollback", "rollback", plan.target, list(heads), plan.revisions
                )
                audit.record(
                    conn,
                    "rollback",
                    settings.actor,
                    run_id=result.rollback_run_id,
                    details={
                        "status": "started",
                        "reverts_run_id": run.id,
                        "reverts_run_ids": result.run_ids,
                        "revisions": plan.revisions,
                        "strategy": strategy,
                    },
                )

            def version_table() -> tuple[str | None, str]:
                context = runner._context
                return (
                    (None, "alembic_version")
                    if context is None
                    else (context.version_table_schema, context.version_table)
                )

            hooks = RecordingRollbackHooks(
                plan, store, journal, result.rollback_run_id, result, lost, notify, version_table
            )
            hooks.saved_values = saved_values  # recorded in the rollback's transaction, for `upgrade`
            hooks.batched = batched
            hooks.batch_rows = batch_rows or DEFAULT_BATCH_ROWS
            if batched and dry_run:
                result.notes.append(
                    "--batched dry run: the rollback's first transaction only; restored_rows counts the "
                    "rows whose values the batches would put back (rows written meanwhile would keep "
                    "their value, as kept), checked against the pre-image; nothing was written"
                )
            runner.hooks = hooks
            try:
                runner.run("downgrade", plan.target)
            except DryRunFinished:
                pass
            except BaseException as exc:
                _journal_failure(conn, journal, settings, result, exc, runner)
                if isinstance(exc, StepFailed):
                    raise MigrationFailed(
                        f"The rollback of run {run.id} failed at the downgrade of {exc.step.revision} "
                        f"and was rolled back; nothing was changed: {error_text(exc.error)}",
                        run_id=run.id,
                        failed_revision=exc.step.revision,
                    ) from exc
                if isinstance(exc, DbrollbackError) or not isinstance(exc, Exception):
                    raise
                raise MigrationFailed(
                    f"The rollback of run {run.id} failed and was rolled back; nothing was "
                    f"changed: {error_text(exc)}",
                    run_id=run.id,
                ) from exc
            if hooks.deferred and result.rollback_run_id is not None:
                notify(
                    f"Rollback run {result.rollback_run_id} committed; putting values back in batches of "
                    f"{batch_rows or DEFAULT_BATCH_ROWS:,} rows"
                )
                fills = _run_fills_journaled(
                    settings,
                    conn,
                    journal,
                    result.rollback_run_id,
                    batch_rows or DEFAULT_BATCH_ROWS,
                    notify,
                    progress,
                    lambda: list(_heads(runner)),
                )
                for fill in fills:
                    fill.add_to(hooks.deferred[fill.position])
            result.duration_s = round(time.monotonic() - started, 3)
            if result.rollback_run_id is not None:
                journal.finish_run(result.rollback_run_id, "succeeded", list(_heads(runner)))
                audit.record(
                    conn,
                    "rollback",
                    settings.actor,
                    run_id=result.rollback_run_id,
                    details={"status": "succeeded", **result.to_dict()},
                )
            return result
        finally:
            unlock(conn)


def _refuse_batched_twice(plan: RollbackPlan) -> None:
    """Batches run after every downgrade: a table an older reverted revision also changed would be
    merged before the newer revision's values are back (--batched needs one revision per table)."""
    seen: dict[tuple[str, str], str] = {}
    for revision in plan.revisions:
        for f in plan.fingerprints.get(revision, []):
            table = (f.schema, f.table)
            if table in seen and seen[table] != revision:
                raise RefusedForSafety(
                    f"--batched: {f.schema}.{f.table} was changed by two of the reverted revisions "
                    f"({seen[table]} and {revision}); roll them back one run at a time, or without "
                    "--batched. Nothing was changed.",
                    table=f"{f.schema}.{f.table}",
                )
            seen[table] = revision


def _run_fills_journaled(
    settings: Settings,
    conn: psycopg.Connection,
    journal: Journal,
    rollback_run_id: int,
    batch_rows: int | None,
    notify: Notify,
    progress: ProgressReporter,
    heads: Callable[[], list[str]],
) -> list[Fill]:
    """The batches of a committed batched rollback; a failure or interruption is journaled on its
    run (which stays resumable, its downgrades committed: `heads` are where they left the database)
    before it propagates."""
    try:
        return run_fills(
            conn,
            rollback_run_id,
            batch_rows=batch_rows,
            lock_timeout_ms=int(settings.lock_timeout.total_seconds() * 1000),
            lock_retries=settings.lock_retries,
            notify=notify,
            progress=progress,
        )
    except BaseException as exc:
        from dbrollback.api import error_text

        status = "failed" if isinstance(exc, Exception) else "interrupted"
        message = (exc.message if isinstance(exc, DbrollbackError) else error_text(exc)).rstrip(". ") + "."
        hint = " Its downgrades are committed; finish it with `dbrollback rollback --resume`."
        with contextlib.suppress(psycopg.Error):
            journal.finish_run(rollback_run_id, status, heads(), None, message + hint)
            audit.record(
                conn,
                "rollback",
                settings.actor,
                run_id=rollback_run_id,
                details={"status": status, "error": message, "resumable": True},
            )
        if isinstance(exc, DbrollbackError) or not isinstance(exc, Exception):
            raise
        raise MigrationFailed(f"The rollback's batches stopped: {message}{hint}", resumable=True) from exc


def _resume(
    settings: Settings,
    database: Database,
    project: AlembicProject,
    conn: psycopg.Connection,
    rollback_run_id: int,
    batch_rows: int | None,
    started: float,
    notify: Notify,
    progress: ProgressReporter,
    abandon: bool = False,
) -> RollbackResult:
    """Finish the batches of `rollback_run_id` (or give them up: `abandon`); the report covers
    the whole rollback."""
    from dbrollback.api import guard_connection, timeouts_of

    journal = Journal(conn, settings.actor)
    runner = MigrationRunner(project, database.sqlalchemy_url, timeouts_of(settings))
    heads = list(guard_connection(database, runner.current_heads))
    # Where the rollback left the database: where the oldest run it reverted had started.
    oldest = fills_of(conn, rollback_run_id)[0].rollback_report["run_ids"][-1]
    row = conn.execute("SELECT from_revisions FROM dbrollback.runs WHERE id = %s", (oldest,)).fetchone()
    left_at = sorted(row[0] or []) if row else []
    if sorted(heads) != left_at:
        # Something moved the version since (alembic run directly): the work tables were made for
        # the schema the rollback's downgrades left.
        where = ", ".join(left_at) or "base"
        raise RefusedForSafety(
            f"Rollback run {rollback_run_id} left the database at {where}, but it is at "
            f"{', '.join(heads) or 'base'} now: its batches cannot go on in another schema. Bring the "
            f"database back to {where}, or give up the batches with `dbrollback rollback --resume "
            "--abandon`. Nothing was changed.",
            rollback_run_id=rollback_run_id,
        )
    if abandon:
        return _abandon(settings, conn, journal, rollback_run_id, heads, started, notify)
    conn.execute(
        "UPDATE dbrollback.runs SET status = 'running', finished_at = NULL, error = NULL WHERE id = %s",
        (rollback_run_id,),
    )
    notify(f"Resuming the batches of rollback run {rollback_run_id}")
    fills = _run_fills_journaled(
        settings, conn, journal, rollback_run_id, batch_rows, notify, progress, lambda: heads
    )
    result = _committed_result(fills[0].rollback_report, rollback_run_id)
    for fill in fills:
        (report,) = [t for t in result.tables if t.table == fill.name]  # one revision per table
        fill.add_to(report)
    result.duration_s = round(time.monotonic() - started, 3)
    journal.finish_run(rollback_run_id, "succeeded", heads)
    audit.record(
        conn,
        "rollback",
        settings.actor,
        run_id=rollback_run_id,
        details={"status": "succeeded", "resumed": True, **result.to_dict()},
    )
    return result


def _abandon(
    settings: Settings,
    conn: psycopg.Connection,
    journal: Journal,
    rollback_run_id: int,
    heads: list[str],
    started: float,
    notify: Notify,
) -> RollbackResult:
    """Give up the remaining batches: the work tables go, the report says which values were not put
    back (they are still in the snapshot the rollback read), and nothing claims to be verified."""
    fills = abandon_fills(conn, rollback_run_id)
    result = _committed_result(fills[0].rollback_report, rollback_run_id)
    left = 0
    for fill in fills:
        (report,) = [t for t in result.tables if t.table == fill.name]
        fill.add_to(report)  # an abandoned fill is not finished: the table is not verified
        left += fill.total_rows - fill.done_n
    result.notes.append(
        f"abandoned: {left:,} row(s) did not get their values back; the snapshot(s) the rollback read still "
        "hold them (`dbrollback verify` / `restore --tables`)"
    )
    notify(result.notes[-1])
    result.duration_s = round(time.monotonic() - started, 3)
    journal.finish_run(rollback_run_id, "failed", heads, None, result.notes[-1])
    audit.record(
        conn,
        "rollback",
        settings.actor,
        run_id=rollback_run_id,
        details={"status": "abandoned", **result.to_dict()},
    )
    return result


def _committed_result(doc: dict[str, Any], rollback_run_id: int) -> RollbackResult:
    """The report a batched rollback's transaction committed, before its batches."""
    result = RollbackResult(
        int(doc["run_id"]),
        list(doc["reverted_revisions"]),
        str(doc["strategy"]),
        False,
        run_ids=[int(r) for r in doc["run_ids"]],
        tables=[TableReport(**t) for t in doc["tables"]],
        schema_matches=doc["schema_matches"],
        schema_differences=list(doc["schema_differences"]),
        rollback_run_id=rollback_run_id,
        notes=[*doc.get("notes", []), f"resumed the batches of rollback run {rollback_run_id}"],
    )
    return result


def _heads(runner: MigrationRunner) -> tuple[str, ...]:
    try:
        return runner.current_heads()
    except Exception:
        return ()


def _journal_failure(
    conn: psycopg.Connection,
    journal: Journal,
    settings: Settings,
    result: RollbackResult,
    exc: BaseException,
    runner: MigrationRunner,
) -> None:
    from dbrollback.api import error_text

    if result.rollback_run_id is None:
        return
    status = "failed" if isinstance(exc, Exception) else "interrupted"
    failed = runner.current_step.revision if runner.current_step else None
    message = exc.message if isinstance(exc, DbrollbackError) else error_text(exc)
    journal.finish_run(result.rollback_run_id, status, list(_heads(runner)), failed, message)
    audit.record(
        conn,
        "rollback",
        settings.actor,
        run_id=result.rollback_run_id,
        details={"status": status, "failed_revision": failed, "error": message},
    )


def _use_stored_sources(
    conn: psycopg.Connection, project: AlembicProject, revisions: list[str], directory: Path, notify: Notify
) -> list[str]:
    """Revisions missing from the checkout (the app was rolled back first) are loaded from the
    source stored at upgrade, written to `directory` as an extra version location."""
    notes: list[str] = []
    missing = [r for r in revisions if not _in_checkout(project, r)]
    for number, revision in enumerate(missing, 1):
        stored = stored_revision_source(conn, revision)
        if stored is None:
            raise RefusedForSafety(
                f"Revision {revision} is not in the checkout and its source was not stored at upgrade; its "
                "downgrade cannot run. Check out the release that has it. Nothing was changed.",
                revision=revision,
            )
        source, sha256, path = stored
        (directory / f"dbrb_stored_{number}.py").write_text(source)
        notes.append(
            f"{revision}: its file ({path}) is missing from the checkout; using the source stored at "
            f"upgrade (sha256 {sha256[:12]}…)"
        )
        notify(notes[-1])
    if missing:
        add_version_location(project.script, directory)
    return notes


def _in_checkout(project: AlembicProject, revision: str) -> bool:
    """`revision` is the exact id of a revision in the checkout (Alembic also resolves prefixes)."""
    try:
        script = project.script.get_revision(revision)
    except Exception:  # Alembic raises several kinds for an unknown id
        return False
    return script is not None and script.revision == revision


def _refuse_missing_downgrades(project: AlembicProject, plan: RollbackPlan) -> None:
    for revision in plan.revisions:
        script = project.script.get_revision(revision)
        if script is not None and not callable(getattr(script.module, "downgrade", None)):
            raise RefusedForSafety(
                f"Revision {revision} has no downgrade(), so --strategy merge cannot undo it. Hint: "
                "--strategy restore moves its version back and puts its tables back to the snapshot "
                "(losing later writes). Nothing was changed.",
                revision=revision,
            )


def _refuse_autocommit_blocks(conn: psycopg.Connection, project: AlembicProject, plan: RollbackPlan) -> None:
    """A revision that commits midway (autocommit_block) would break the single transaction."""
    for revision in plan.revisions:
        script = project.script.get_revision(revision)
        path = Path(script.path) if script is not None and script.path else None
        text = path.read_text(errors="replace") if path is not None and path.suffix == ".py" else ""
        if "autocommit_block" in text:
            raise RefusedForSafety(
                f"Revision {revision} uses autocommit_block, which commits in the middle of the rollback's "
                "single transaction; rollback (and --dry-run) of such a revision is not supported yet. "
                "Nothing was changed.",
                revision=revision,
            )


def _save_values_the_downgrade_drops(
    settings: Settings,
    database: Database,
    conn: psycopg.Connection,
    store: SnapshotStore,
    plan: RollbackPlan,
    progress: ProgressReporter,
    notify: Notify,
    records: list[SavedValues],
) -> dict[tuple[str, str], str]:
    """Snapshot tables holding values in columns a reverted revision added (its downgrade will drop
    them): table -> snapshot id. Taken before the rollback's transaction, on their own. `records`
    gets what was saved per revision whose downgrade drops the columns (for `upgrade` to put back)."""
    saved: dict[tuple[str, str], str] = {}
    for fingerprints in plan.fingerprints.values():
        for f in fingerprints:
            table = (f.schema, f.table)
            if f.status != TAKEN or table in saved:
                continue
            before = {c.name for c in plan.table_manifest(f).columns}
            now = live_columns(conn, f.schema, f.table) or {}
            mirrored = mirrored_columns(conn, table)
            added = [
                c for c, info in now.items() if c not in before and not info.generated and c not in mirrored
            ]
            if not added or not _any_value(conn, table, added):
                continue
            manifest = take_snapshot(
                settings,
                database,
                conn,
                store,
                [table],
                label=f"rollback of run {plan.run.id}: values in columns its downgrade drops",
                progress=progress,
            )
            saved[table] = manifest.id
            records.extend(_saved_per_revision(plan, table, added, manifest.id))
            notify(
                f"Values in {f.schema}.{f.table} ({', '.join(added)}) that the downgrade drops were saved "
                f"to snapshot {manifest.id}"
            )
    return saved


def _saved_per_revision(
    plan: RollbackPlan, table: tuple[str, str], added: list[str], snapshot_id: str
) -> list[SavedValues]:
    """A column belongs to the newest reverted revision whose pre-image of the table lacks it: that
    revision (or a later one without a snapshot of the table) added it, so its downgrade drops it."""
    by_revision: dict[str, tuple[list[str], list[str]]] = {}
    for column in added:
        for revision in plan.revisions:  # newest first
            fingerprints = plan.fingerprints.get(revision, [])
            found = [f for f in fingerprints if (f.schema, f.table) == table and f.status == TAKEN]
            if found and column not in {c.name for c in plan.table_manifest(found[0]).columns}:
                by_revision.setdefault(revision, (found[0].key_columns, []))[1].append(column)
                break
    return [
        SavedValues(snapshot_id, revision, table[0], table[1], columns, list(key))
        for revision, (key, columns) in by_revision.items()
    ]


def _any_value(conn: psycopg.Connection, table: tuple[str, str], columns: list[str]) -> bool:
    from psycopg import sql

    query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(
        sql.Identifier(*table),
        sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in columns),
    )
    row = conn.execute(query).fetchone()
    return bool(row and row[0])
