"""One function per verb. The CLI and scripts both call these; they return typed results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as psycopg_sql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError as SAOperationalError

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import MigrationRunner, PlannedStep, StepFailed, Timeouts
from dbrollback.catalog import audit
from dbrollback.catalog.fingerprints import TAKEN, FingerprintTarget, take_fingerprint
from dbrollback.catalog.journal import (
    Journal,
    RunRecord,
    list_runs,
    mark_interrupted_runs,
    record_applied_step,
)
from dbrollback.catalog.lock import LockHolder, acquire, find_holder, unlock
from dbrollback.catalog.restore_points import record_restore_point
from dbrollback.catalog.revision_sources import read_revision_file, record_revision_source
from dbrollback.catalog.schema import ensure_catalog, installed_version
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.durations import postgres_ms
from dbrollback.errors import (
    EXIT_REFUSED,
    ConnectionFailed,
    DbrollbackError,
    MigrationFailed,
    RefusedForSafety,
    StoreUnavailable,
)
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.settings import Settings
from dbrollback.snapshot.names import QualifiedName
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.snapshot_api import configured_store, take_snapshot
from dbrollback.urls import redact

if TYPE_CHECKING:
    from dbrollback.rollback.roll_forward import RollForward


def _quiet(_: str) -> None:
    pass


@dataclass
class MigrationResult:
    run_id: int | None
    direction: str
    target: str
    from_heads: list[str]
    to_heads: list[str]
    applied: list[PlannedStep]
    interrupted_runs_marked: list[int]
    database: str
    dry_run: bool = False
    planned: list[PlannedStep] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    restore_points: list[dict[str, Any]] = field(default_factory=list)
    snapshot_policy: str = "never"
    warnings: list[str] = field(default_factory=list)
    # values a rollback saved before its downgrade dropped their columns, put back by this upgrade
    restored_values: list[dict[str, Any]] = field(default_factory=list)
    # after the revisions committed: backfills of the expansions this run opened, FKs validated
    expansions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def step(s: PlannedStep) -> dict[str, Any]:
            return {"revision": s.revision, "phase": s.phase, "doc": s.doc}

        return {
            "run_id": self.run_id,
            "direction": self.direction,
            "target": self.target,
            "from_heads": self.from_heads,
            "to_heads": self.to_heads,
            "applied": [step(s) for s in self.applied],
            "planned": [step(s) for s in self.planned],
            "dry_run": self.dry_run,
            "interrupted_runs_marked": self.interrupted_runs_marked,
            "database": self.database,
            "snapshot_policy": self.snapshot_policy,
            "snapshots": self.snapshots,
            "restore_points": self.restore_points,
            "warnings": self.warnings,
            "restored_values": self.restored_values,
            "expansions": self.expansions,
        }


@dataclass
class SnapshotDuty:
    """What the run must snapshot, and where: revision -> tables (taken just before it runs)."""

    policy: str
    skipped_by_flag: bool = False
    tables_by_revision: dict[str, list[QualifiedName]] = field(default_factory=dict)
    # revision -> table -> columns the analysis says it leaves alone (not hashed in the fingerprint)
    unaffected_by_revision: dict[str, dict[QualifiedName, frozenset[str]]] = field(default_factory=dict)
    store: SnapshotStore | None = None
    settings: Settings | None = None
    database: Database | None = None
    progress: ProgressReporter = SILENT
    warnings: list[str] = field(default_factory=list)


class _JournalHooks:
    """Connects the runner's events to the journal; creates the run row once the plan is known.

    An upgrade also records what a rollback needs: the schema before the run, and inside each
    revision's own transaction its source text and the post-image fingerprint of every table
    snapshotted before it.
    """

    def __init__(self, journal: Journal, direction: str, target: str, notify: Notify,
                 duty: SnapshotDuty | None = None, project: AlembicProject | None = None,
                 version_table: Callable[[], tuple[str | None, str]] | None = None) -> None:  # fmt: skip
        self.journal = journal
        self.direction = direction
        self.target = target
        self.notify = notify
        self.duty = duty or SnapshotDuty("never")
        self.project = project
        self.version_table = version_table
        self._fingerprints_due: dict[str, list[FingerprintTarget]] = {}
        self._schema_due = direction == "upgrade"  # until recorded, or the first revision commits
        self._schema_lock_warned = False
        self.run_id: int | None = None
        self.from_heads: list[str] = []
        self.plan: list[PlannedStep] = []
        self.snapshots: list[dict[str, Any]] = []
        self.restore_points: list[dict[str, Any]] = []
        self._restore_point_warned = False
        self.roll_forward: RollForward | None = None

    def planned(self, current_heads: tuple[str, ...], steps: list[PlannedStep]) -> None:
        if self.run_id is None:
            self.from_heads = list(current_heads)
            self.plan = steps
            self.run_id = self.journal.start_run(
                self.direction, self.direction, self.target, list(current_heads),
                [s.revision for s in steps],
            )  # fmt: skip
            if self.roll_forward is not None:
                self.roll_forward.run_id = self.run_id
            self.journal.conn.execute(
                "UPDATE dbrollback.runs SET snapshot_policy = %s, snapshot_skipped = %s WHERE id = %s",
                (self.duty.policy, self.duty.skipped_by_flag, self.run_id),
            )
            # Audited as it starts too, so a run killed midway still leaves an audit trail.
            details: dict[str, Any] = {"status": "started", "target": self.target,
                                       "planned": [s.revision for s in steps],
                                       "snapshot_policy": self.duty.policy}  # fmt: skip
            if self.duty.skipped_by_flag:
                details["snapshot"] = "skipped by --no-snapshot"
            audit.record(self.journal.conn, self.direction, self.journal.actor, run_id=self.run_id,
                         details=details)  # fmt: skip

    def _record_schema(self, step: PlannedStep) -> None:
        """Record the schema before the run's first revision, on the control connection.

        Reading definitions locks each table they mention (ACCESS SHARE), so a table another
        session holds exclusively makes this wait: under the revision's lock_timeout, and tried
        again before each retry of the revision, but only until the run's first revision commits.
        """
        from dbrollback.catalog.run_schemas import record_run_schema

        assert self.run_id is not None
        tables = list(dict.fromkeys(t for ts in self.duty.tables_by_revision.values() for t in ts))
        version_table = self.version_table() if self.version_table else (None, "alembic_version")
        try:
            record_run_schema(self.journal.conn, self.run_id, version_table, tables,
                              lock_timeout=postgres_ms(step.timeouts.lock_timeout))  # fmt: skip
            self._schema_due = False
        except psycopg.errors.LockNotAvailable:
            if not self._schema_lock_warned:
                self._schema_lock_warned = True
                self.notify(
                    f"The schema before run {self.run_id} could not be read yet (a table is locked by "
                    "another session); it is read again before the revision's next attempt"
                )
        except psycopg.Error as exc:  # only a later rollback's schema comparison needs it
            self._schema_due = False
            self.notify(
                f"Warning: the schema before run {self.run_id} could not be recorded: {error_text(exc)}"
            )

    def before_step(self, step: PlannedStep, connection: Connection) -> None:
        assert self.run_id is not None
        if self._schema_due:
            self._record_schema(step)
        conn = self.journal.conn
        point = record_restore_point(conn, self.run_id, step.revision)
        if not any(p["revision"] == step.revision for p in self.restore_points):
            self.restore_points.append(
                {"revision": step.revision, "wal_lsn": point.wal_lsn, "name": point.name}
            )
        if not point.created and not self._restore_point_warned:
            self._restore_point_warned = True
            self.notify(f"No named restore points ({point.note}); WAL positions are journaled instead")
        self._fingerprints_due.pop(step.revision, None)  # an earlier attempt's snapshot is not this one's
        if self.roll_forward is not None:
            self.roll_forward.forget(step.revision)
        tables = [t for t in self.duty.tables_by_revision.get(step.revision, []) if _table_exists(conn, t)]
        if tables:
            self._snapshot_before(step, connection, tables)

    def _snapshot_before(
        self, step: PlannedStep, connection: Connection, tables: list[QualifiedName]
    ) -> None:
        duty = self.duty
        assert duty.store is not None and duty.settings is not None and duty.database is not None
        # SHARE mode, in the revision's own transaction and under its lock_timeout: writers to
        # these tables wait from now until the revision commits, so no write can land between
        # the snapshot and the revision (and be destroyed without being captured). Readers and
        # the snapshot's own ACCESS SHARE locks are not blocked. A lock timeout here is retried
        # like one inside the revision.
        lock = psycopg_sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
            psycopg_sql.SQL(", ").join(psycopg_sql.Identifier(s, t) for s, t in tables)
        )
        connection.exec_driver_sql(lock.as_string(self.journal.conn))
        try:
            manifest = take_snapshot(duty.settings, duty.database, self.journal.conn, duty.store, tables,
                                     run_id=self.run_id, revision=step.revision,
                                     progress=duty.progress)  # fmt: skip
        except Exception as exc:
            if isinstance(exc, DbrollbackError) and exc.exit_code == EXIT_REFUSED:
                raise
            reason = exc.message if isinstance(exc, DbrollbackError) else redact(str(exc).strip())
            raise RefusedForSafety(
                f"The snapshot before {step.revision} could not be taken, so it was not applied: {reason}",
                revision=step.revision,
            ) from None
        names = [f"{s}.{t}" for s, t in tables]
        # After a lock-timeout retry the new snapshot replaces the earlier attempt's in the report
        # (both stay in the store; the newer one is the state the revision really started from).
        self.snapshots = [s for s in self.snapshots if s["revision"] != step.revision]
        self.snapshots.append({"id": manifest.id, "revision": step.revision, "tables": names})
        unaffected = duty.unaffected_by_revision.get(step.revision, {})
        targets = []
        for t in manifest.tables:
            columns = tuple(c.name for c in t.columns)
            alone = unaffected.get((t.schema_name, t.table_name), frozenset())
            # Under --snapshot touched/all a table may be captured whose data the revision leaves
            # alone: nothing of it will need merging back.
            if not set(columns) <= alone:
                targets.append(FingerprintTarget(manifest.id, t.schema_name, t.table_name, columns, alone))
        self._fingerprints_due[step.revision] = targets
        rows = sum(t.row_count for t in manifest.tables)
        self.notify(
            f"Snapshot {manifest.id} taken before {step.revision}: {', '.join(names)} ({rows:,} rows)"
        )

    def step_applied(self, connection: Connection, step: PlannedStep, started_at: datetime,
                     attempt: int) -> None:  # fmt: skip
        assert self.run_id is not None
        if self._schema_due:
            self._schema_due = False  # after this commit it would no longer be the schema before the run
            self.notify(f"Warning: the schema before run {self.run_id} was not recorded; a rollback of "
                        "this run cannot compare schemas")  # fmt: skip
        if step.is_upgrade:
            # The revision's own psycopg connection: what is written here commits with the revision
            # or not at all, and the SHARE lock from before_step is still held.
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            self._store_source(driver, step)
            if self.roll_forward is not None:
                # Before the fingerprint: it is the state this revision commits, values put back included.
                self.roll_forward.after_revision(driver, step.revision)
            for number, target in enumerate(self._fingerprints_due.pop(step.revision, []), 1):
                self._fingerprint(driver, step, target, number)
        else:
            # A downgrade not written as expand.abort() may leave the revision's expansions open,
            # their dual-write triggers reading columns it dropped: closed here, in its transaction.
            from dbrollback.expand_api import abort_for_rollback

            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            for outcome in abort_for_rollback(driver, step.revision, "downgrade"):
                self.notify(
                    f"Expansion {outcome.expansion.id} of {step.revision} aborted after its downgrade"
                )
        record_applied_step(connection, self.run_id, step.revision, step.phase, started_at, attempt)
        self.notify(f"{step.phase} {step.revision} applied" + (f": {step.doc}" if step.doc else ""))

    def _store_source(self, conn: psycopg.Connection, step: PlannedStep) -> None:
        assert self.run_id is not None
        script = self.project.script.get_revision(step.revision) if self.project else None
        if script is None or not script.path:
            return
        try:
            found = read_revision_file(script.path)
        except OSError as exc:
            self.notify(f"Warning: the source of {step.revision} could not be stored ({exc.strerror or exc})")
            return
        if found is None:
            self.notify(f"Warning: {step.revision} has no source file ({script.path}); none was stored")
            return
        record_revision_source(conn, step.revision, found, self.run_id)

    def _fingerprint(self, conn: psycopg.Connection, step: PlannedStep, target: FingerprintTarget,
                     number: int) -> None:  # fmt: skip
        assert self.run_id is not None
        fingerprint = take_fingerprint(conn, self.run_id, step.revision, target, number)
        name = f"{target.schema}.{target.table}"
        if fingerprint.status == TAKEN:
            self.notify(
                f"Fingerprint of {name} after {step.revision}: {fingerprint.row_count:,} rows, "
                f"{len(fingerprint.hashed_columns)} hashed column(s), {fingerprint.bytes or 0:,} bytes"
            )
        else:
            self.notify(f"No fingerprint of {name} after {step.revision}: {fingerprint.note}")

    def step_failed(self, step: PlannedStep, started_at: datetime, attempt: int,
                    error: BaseException) -> None:  # fmt: skip
        assert self.run_id is not None
        self.journal.record_failed_step(
            self.run_id, step.revision, step.phase, started_at, attempt, error_text(error)
        )

    def retrying(self, step: PlannedStep, attempt: int, delay: float) -> None:
        self.notify(
            f"{step.revision}: lock_timeout hit (attempt {attempt}); rolled back, retrying in {delay:.1f}s"
        )


def error_text(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)


def timeouts_of(settings: Settings) -> Timeouts:
    return Timeouts(settings.lock_timeout, settings.statement_timeout, settings.lock_retries)


def _project(settings: Settings, database: Database) -> AlembicProject:
    return AlembicProject(settings.alembic_config, database.sqlalchemy_url)


def migrate(settings: Settings, direction: str, target: str, *, dry_run: bool = False,
            snapshot: bool = True, progress: ProgressReporter = SILENT,
            notify: Notify = _quiet, skip_saved_values: bool = False,
            backfill: bool = True) -> MigrationResult:  # fmt: skip
    """Upgrade or downgrade to ``target``: one transaction per revision, each journaled.

    An upgrade first works out which revisions destroy data (see dbrollback.analysis.plan) and
    snapshots the tables they touch just before each of them runs, as `settings.snapshot`
    says; ``snapshot=False`` (--no-snapshot) skips that and is recorded in the journal and audit.
    Values a rollback saved before dropping their columns come back when the revision that added
    them is applied again (refused, exit 3, when their snapshot is unusable, unless
    ``skip_saved_values``, which marks them as not restored).
    After the revisions commit, expansions they opened (dbrollback.expand) are backfilled and
    their foreign keys validated, batch by batch, unless ``backfill`` is false.
    """
    AlembicProject(settings.alembic_config)  # a missing alembic.ini fails before any connection
    database = resolve_database(settings, notify)
    project = _project(settings, database)
    with connect(database) as conn:
        runner = MigrationRunner(project, database.sqlalchemy_url, timeouts_of(settings))
        # Resolve the target before touching anything, so bad input changes nothing.
        heads = guard_connection(database, runner.current_heads)
        planned = runner.plan(direction, target, heads)
        if dry_run:
            return MigrationResult(None, direction, target, list(heads), list(heads), [], [],
                                   database.display, dry_run=True, planned=planned)  # fmt: skip
        ensure_catalog(conn)
        acquire(conn, settings.lock_wait)
        try:
            marked = mark_interrupted_runs(conn, lock_held_by_us=True)
            if marked:
                notify(f"Marked earlier run(s) {', '.join(map(str, marked))} as interrupted")
            refuse_pending_batched_rollback(conn)
            if direction == "downgrade":
                from dbrollback.expand_api import refuse_contracted

                refuse_contracted(conn, [s.revision for s in planned])
            forward = _roll_forward(settings, conn, direction, planned, skip_saved_values, notify)
            duty = _snapshot_duty(settings, database, direction, target, planned, snapshot, progress, notify)
            journal = Journal(conn, settings.actor)
            hooks = _JournalHooks(journal, direction, target, notify, duty, project,
                                  version_table=lambda: _version_table(runner))  # fmt: skip
            hooks.roll_forward = forward
            runner.hooks = hooks
            result = _run_journaled(settings, conn, runner, hooks, direction, target, marked, database)
            if backfill and direction == "upgrade" and result.run_id is not None:
                result.expansions = _finish_expansions(settings, conn, result, progress, notify)
            return result
        finally:
            unlock(conn)


def _finish_expansions(settings: Settings, conn: psycopg.Connection, result: MigrationResult,
                       progress: ProgressReporter, notify: Notify) -> list[dict[str, Any]]:  # fmt: skip
    """Backfills and validations after the run committed. Their failure is exit 4 with resumable
    true (like a --batched rollback after its first commit): the revisions stay applied, so it is
    neither a refusal nor a rolled-back migration."""
    from dbrollback.expand_api import finish_opened

    assert result.run_id is not None
    applied = ", ".join(s.revision for s in result.applied) or "nothing new"
    try:
        return finish_opened(conn, result.run_id, lock_timeout=settings.lock_timeout,
                             retries=settings.lock_retries, progress=progress, notify=notify)  # fmt: skip
    except (psycopg.Error, DbrollbackError) as exc:
        why = exc.message if isinstance(exc, DbrollbackError) else f"{error_text(exc)}."
        raise MigrationFailed(
            f"Run {result.run_id} applied {applied}, but finishing the expansions it opened stopped: "
            f"{why} The revisions stay applied and the expansions open; fix the cause, then "
            "`dbrollback backfill --resume` (backfills) or `dbrollback contract` (it validates "
            "foreign keys), or `dbrollback abort`.",
            run_id=result.run_id,
            resumable=True,
        ) from None


def refuse_pending_batched_rollback(conn: psycopg.Connection) -> None:
    """A batched rollback whose batches did not all commit must be finished first: its work tables
    belong to the schema its downgrades left."""
    from dbrollback.rollback.fill import pending_fill_run, resume_hint

    pending = pending_fill_run(conn)
    if pending is not None:
        raise RefusedForSafety(resume_hint(pending) + " Nothing was changed.", rollback_run_id=pending)


def _roll_forward(settings: Settings, conn: psycopg.Connection, direction: str, planned: list[PlannedStep],
                  skip: bool, notify: Notify) -> RollForward | None:  # fmt: skip
    """Values saved by earlier rollbacks for the revisions this upgrade applies; their snapshots are
    checked now, so an unusable one refuses the run before anything changes."""
    from dbrollback.rollback.roll_forward import RollForward, check_saved_snapshots, pending_saved_values

    if direction != "upgrade" or not planned:
        return None
    pending = pending_saved_values(conn, [s.revision for s in planned])
    if not pending:
        return None
    store = None if skip else configured_store(settings)
    manifests = {} if store is None else check_saved_snapshots(conn, store, pending)
    return RollForward(store, pending, manifests, run_id=0, notify=notify, skip=skip)


def _snapshot_duty(settings: Settings, database: Database, direction: str, target: str,
                   planned: list[PlannedStep], snapshot: bool, progress: ProgressReporter,
                   notify: Notify) -> SnapshotDuty:  # fmt: skip
    if direction != "upgrade" or not planned:
        return SnapshotDuty("never")
    if not snapshot:
        notify("Snapshots skipped (--no-snapshot); this is recorded in the journal and audit log")
        return SnapshotDuty(settings.snapshot, skipped_by_flag=True)
    if settings.snapshot == "never":
        return SnapshotDuty("never")
    from dbrollback.analysis.plan import build_plan

    migration_plan = build_plan(settings, target, policy=settings.snapshot, database=database, notify=notify)
    for warning in migration_plan.warnings:
        notify(f"Warning: {warning}")
    uncovered = [(r.revision, reason) for r in migration_plan.revisions for reason in r.uncovered]
    if uncovered:  # fail closed: data this run might destroy would be in no snapshot
        details = "; ".join(f"{revision}: {reason}" for revision, reason in uncovered)
        raise RefusedForSafety(
            f"Cannot tell which tables some SQL changes, so no snapshot would cover it ({details}). "
            "Run with --snapshot all to snapshot every table before the run, or --no-snapshot to go "
            "ahead without snapshots (recorded in the journal and audit log). Nothing was changed.",
            uncovered=[{"revision": r, "reason": why} for r, why in uncovered],
        )
    by_revision: dict[str, list[QualifiedName]] = {}
    unaffected: dict[str, dict[QualifiedName, frozenset[str]]] = {}
    for snap in migration_plan.snapshots:
        if snap.tables:
            by_revision.setdefault(snap.revision, []).extend((t.schema, t.table) for t in snap.tables)
            for t in snap.tables:
                unaffected.setdefault(snap.revision, {})[(t.schema, t.table)] = frozenset(
                    c.name for c in t.columns if not c.affected
                )
    duty = SnapshotDuty(settings.snapshot, tables_by_revision=by_revision, settings=settings,
                        database=database, progress=progress, unaffected_by_revision=unaffected,
                        warnings=list(migration_plan.warnings))  # fmt: skip
    if by_revision:
        duty.store = configured_store(settings)
        duty.store.probe()  # an unwritable store refuses the upgrade before anything changes
        needed = sum(t.estimated_bytes for snap in migration_plan.snapshots for t in snap.tables)
        free = duty.store.free_bytes()
        if free is not None and needed > free:
            raise StoreUnavailable(
                f"The snapshot store {duty.store.location} has {free:,} bytes free; the snapshots this "
                f"upgrade must take need up to {needed:,} bytes (the tables' size before compression). "
                "Free some space (`dbrollback snapshot prune`) or use another store. Nothing was changed.",
                free_bytes=free,
                needed_bytes=needed,
            )
    return duty


def _version_table(runner: MigrationRunner) -> tuple[str | None, str]:
    """(schema, name) of Alembic's version table as the project's env.py configured it, read while
    the run is on."""
    context = runner._context
    if context is None:
        return None, "alembic_version"
    return context.version_table_schema, context.version_table


def _table_exists(conn: psycopg.Connection, table: QualifiedName) -> bool:
    row = conn.execute(
        "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s)) IS NOT NULL", table
    ).fetchone()
    return bool(row and row[0])


def guard_connection(database: Database, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SAOperationalError as exc:
        raise ConnectionFailed(
            f"Cannot connect to {database.display}: {error_text(exc)}", url=database.display
        ) from None


def _run_journaled(settings: Settings, conn: psycopg.Connection, runner: MigrationRunner,
                   hooks: _JournalHooks, direction: str, target: str, marked: list[int],
                   database: Database) -> MigrationResult:  # fmt: skip
    journal = hooks.journal
    try:
        outcome = runner.run(direction, target)
    except StepFailed as failure:
        heads = _heads_or_none(runner)
        error = error_text(failure.error)
        journal.finish_run(hooks.run_id or 0, "failed", heads, failure.step.revision, error)
        audit.record(conn, direction, settings.actor, run_id=hooks.run_id,
                     details={"status": "failed", "failed_revision": failure.step.revision})  # fmt: skip
        applied = _applied_in_run(conn, hooks.run_id)
        raise MigrationFailed(
            f"Revision {failure.step.revision} failed ({failure.step.phase}, attempt "
            f"{failure.attempts}) and its transaction was rolled back: {error}. "
            + (
                f"Earlier revisions of run {hooks.run_id} stay applied: {', '.join(applied)}."
                if applied
                else f"Nothing was applied by run {hooks.run_id}."
            ),
            run_id=hooks.run_id,
            failed_revision=failure.step.revision,
            applied=applied,
            current_heads=heads,
        ) from failure
    except DbrollbackError as exc:
        if hooks.run_id is not None:
            failed = runner.current_step.revision if runner.current_step else None
            journal.finish_run(hooks.run_id, "failed", _heads_or_none(runner), failed, exc.message)
            audit.record(conn, direction, settings.actor, run_id=hooks.run_id,
                         details={"status": "failed", "failed_revision": failed,
                                  "error": exc.kind})  # fmt: skip
        raise
    except BaseException as exc:
        if hooks.run_id is None and isinstance(exc, SAOperationalError):
            raise ConnectionFailed(f"Cannot run migrations on {database.display}: "
                                   f"{error_text(exc)}") from None  # fmt: skip
        if hooks.run_id is not None:
            status = "failed" if isinstance(exc, Exception) else "interrupted"
            journal.finish_run(hooks.run_id, status, _heads_or_none(runner), None, error_text(exc))
        if isinstance(exc, Exception):
            raise MigrationFailed(
                f"The migration environment failed before completing: {error_text(exc)}",
                run_id=hooks.run_id,
            ) from exc
        raise
    to_heads = list(outcome.final_heads)
    assert hooks.run_id is not None
    forward = hooks.roll_forward
    warnings = list(hooks.duty.warnings)
    if forward is not None:
        for warning in forward.left_behind():
            hooks.notify(f"Warning: {warning}")
            warnings.append(warning)
    journal.finish_run(hooks.run_id, "succeeded", to_heads)
    audit.record(conn, direction, settings.actor, run_id=hooks.run_id,
                 details={"status": "succeeded", "target": target,
                          "applied": [s.revision for s in outcome.applied]})  # fmt: skip
    return MigrationResult(hooks.run_id, direction, target, hooks.from_heads, to_heads,
                           outcome.applied, marked, database.display, planned=hooks.plan,
                           snapshots=hooks.snapshots, restore_points=hooks.restore_points,
                           snapshot_policy=hooks.duty.policy, warnings=warnings,
                           restored_values=forward.restored if forward else [])  # fmt: skip


def _heads_or_none(runner: MigrationRunner) -> list[str] | None:
    try:
        return list(runner.current_heads())
    except Exception:
        return None


def _applied_in_run(conn: psycopg.Connection, run_id: int | None) -> list[str]:
    rows = conn.execute(
        "SELECT revision FROM dbrollback.run_steps WHERE run_id = %s AND status = 'succeeded' ORDER BY seq",
        (run_id,),
    ).fetchall()
    return [r[0] for r in rows]


def upgrade(settings: Settings, revision: str = "heads", **kw: Any) -> MigrationResult:
    return migrate(settings, "upgrade", revision, **kw)


def downgrade(settings: Settings, revision: str, **kw: Any) -> MigrationResult:
    return migrate(settings, "downgrade", revision, **kw)


@dataclass
class StatusReport:
    database: str
    embedded: bool
    catalog_version: int
    current_heads: list[str]
    script_heads: list[str]
    pending: list[PlannedStep]
    runs: list[RunRecord]
    interrupted_runs: list[RunRecord]
    lock_holder: LockHolder | None
    # a `rollback --batched` whose batches have not all committed: (rollback run, rows done, rows)
    batched_rollback: tuple[int, int, int] | None = None
    open_expansions: list[dict[str, Any]] = field(default_factory=list)  # with backfill progress

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[0] if self.runs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "embedded": self.embedded,
            "catalog_version": self.catalog_version,
            "current_heads": self.current_heads,
            "script_heads": self.script_heads,
            "up_to_date": not self.pending,
            "pending": [{"revision": s.revision, "doc": s.doc} for s in self.pending],
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "runs": [r.to_dict() for r in self.runs],
            "interrupted_runs": [r.to_dict() for r in self.interrupted_runs],
            "lock_holder": self.lock_holder.to_dict() if self.lock_holder else None,
            "unfinished_batched_rollback": None
            if self.batched_rollback is None
            else dict(zip(("rollback_run_id", "rows_done", "rows"), self.batched_rollback, strict=True)),
            "open_expansions": self.open_expansions,
        }


def status(settings: Settings, *, limit: int = 10, notify: Notify = _quiet) -> StatusReport:
    from dbrollback.expand_api import expansion_summaries
    from dbrollback.rollback.fill import pending_progress

    AlembicProject(settings.alembic_config)
    database = resolve_database(settings, notify)
    project = _project(settings, database)
    with connect(database) as conn:
        mark_interrupted_runs(conn, lock_held_by_us=False)
        runner = MigrationRunner(project, database.sqlalchemy_url, timeouts_of(settings))
        heads = guard_connection(database, runner.current_heads)
        pending = runner.plan("upgrade", "heads", heads)
        runs = list_runs(conn, limit)
        interrupted = [r for r in runs if r.status == "interrupted"]
        return StatusReport(
            database=database.display,
            embedded=database.embedded,
            catalog_version=installed_version(conn),
            current_heads=list(heads),
            script_heads=list(project.heads()),
            pending=pending,
            runs=runs,
            interrupted_runs=interrupted,
            lock_holder=find_holder(conn),
            batched_rollback=pending_progress(conn),
            open_expansions=expansion_summaries(conn),
        )


def history(settings: Settings, *, limit: int | None = 50, notify: Notify = _quiet) -> list[RunRecord]:
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        mark_interrupted_runs(conn, lock_held_by_us=False)
        return list_runs(conn, limit)
