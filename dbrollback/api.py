"""One function per verb. The CLI and scripts both call these; they return typed results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError as SAOperationalError

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import MigrationRunner, PlannedStep, StepFailed, Timeouts
from dbrollback.catalog import audit
from dbrollback.catalog.journal import (
    Journal,
    RunRecord,
    list_runs,
    mark_interrupted_runs,
    record_applied_step,
)
from dbrollback.catalog.lock import LockHolder, acquire, find_holder, unlock
from dbrollback.catalog.schema import ensure_catalog, installed_version
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.errors import ConnectionFailed, DbrollbackError, MigrationFailed
from dbrollback.settings import Settings
from dbrollback.urls import redact


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
        }


class _JournalHooks:
    """Connects the runner's events to the journal; creates the run row once the plan is known."""

    def __init__(self, journal: Journal, direction: str, target: str, notify: Notify) -> None:
        self.journal = journal
        self.direction = direction
        self.target = target
        self.notify = notify
        self.run_id: int | None = None
        self.from_heads: list[str] = []
        self.plan: list[PlannedStep] = []

    def planned(self, current_heads: tuple[str, ...], steps: list[PlannedStep]) -> None:
        if self.run_id is None:
            self.from_heads = list(current_heads)
            self.plan = steps
            self.run_id = self.journal.start_run(
                self.direction, self.direction, self.target, list(current_heads),
                [s.revision for s in steps],
            )  # fmt: skip
            # Audited as it starts too, so a run killed midway still leaves an audit trail.
            audit.record(self.journal.conn, self.direction, self.journal.actor, run_id=self.run_id,
                         details={"status": "started", "target": self.target,
                                  "planned": [s.revision for s in steps]})  # fmt: skip

    def step_applied(self, connection: Connection, step: PlannedStep, started_at: datetime,
                     attempt: int) -> None:  # fmt: skip
        assert self.run_id is not None
        record_applied_step(connection, self.run_id, step.revision, step.phase, started_at, attempt)
        self.notify(f"{step.phase} {step.revision} applied" + (f": {step.doc}" if step.doc else ""))

    def step_failed(self, step: PlannedStep, started_at: datetime, attempt: int,
                    error: BaseException) -> None:  # fmt: skip
        assert self.run_id is not None
        self.journal.record_failed_step(
            self.run_id, step.revision, step.phase, started_at, attempt, _error_text(error)
        )

    def retrying(self, step: PlannedStep, attempt: int, delay: float) -> None:
        self.notify(
            f"{step.revision}: lock_timeout hit (attempt {attempt}); rolled back, retrying in {delay:.1f}s"
        )


def _error_text(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)


def _timeouts(settings: Settings) -> Timeouts:
    return Timeouts(settings.lock_timeout, settings.statement_timeout, settings.lock_retries)


def _project(settings: Settings, database: Database) -> AlembicProject:
    return AlembicProject(settings.alembic_config, database.sqlalchemy_url)


def migrate(settings: Settings, direction: str, target: str, *, dry_run: bool = False,
            notify: Notify = _quiet) -> MigrationResult:  # fmt: skip
    """Upgrade or downgrade to ``target``: one transaction per revision, each journaled."""
    AlembicProject(settings.alembic_config)  # a missing alembic.ini fails before any connection
    database = resolve_database(settings, notify)
    project = _project(settings, database)
    with connect(database) as conn:
        runner = MigrationRunner(project, database.sqlalchemy_url, _timeouts(settings))
        # Resolve the target before touching anything, so bad input changes nothing.
        heads = _guard_connection(database, runner.current_heads)
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
            journal = Journal(conn, settings.actor)
            hooks = _JournalHooks(journal, direction, target, notify)
            runner.hooks = hooks
            return _run_journaled(settings, conn, runner, hooks, direction, target, marked, database)
        finally:
            unlock(conn)


def _guard_connection(database: Database, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SAOperationalError as exc:
        raise ConnectionFailed(
            f"Cannot connect to {database.display}: {_error_text(exc)}", url=database.display
        ) from None


def _run_journaled(settings: Settings, conn: psycopg.Connection, runner: MigrationRunner,
                   hooks: _JournalHooks, direction: str, target: str, marked: list[int],
                   database: Database) -> MigrationResult:  # fmt: skip
    journal = hooks.journal
    try:
        outcome = runner.run(direction, target)
    except StepFailed as failure:
        heads = _heads_or_none(runner)
        error = _error_text(failure.error)
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
    except DbrollbackError:
        if hooks.run_id is not None:
            journal.finish_run(hooks.run_id, "failed", _heads_or_none(runner), None, "aborted")
        raise
    except BaseException as exc:
        if hooks.run_id is None and isinstance(exc, SAOperationalError):
            raise ConnectionFailed(f"Cannot run migrations on {database.display}: "
                                   f"{_error_text(exc)}") from None  # fmt: skip
        if hooks.run_id is not None:
            status = "failed" if isinstance(exc, Exception) else "interrupted"
            journal.finish_run(hooks.run_id, status, _heads_or_none(runner), None, _error_text(exc))
        if isinstance(exc, Exception):
            raise MigrationFailed(
                f"The migration environment failed before completing: {_error_text(exc)}",
                run_id=hooks.run_id,
            ) from exc
        raise
    to_heads = list(outcome.final_heads)
    assert hooks.run_id is not None
    journal.finish_run(hooks.run_id, "succeeded", to_heads)
    audit.record(conn, direction, settings.actor, run_id=hooks.run_id,
                 details={"status": "succeeded", "target": target,
                          "applied": [s.revision for s in outcome.applied]})  # fmt: skip
    return MigrationResult(hooks.run_id, direction, target, hooks.from_heads, to_heads,
                           outcome.applied, marked, database.display, planned=hooks.plan)  # fmt: skip


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
        }


def status(settings: Settings, *, limit: int = 10, notify: Notify = _quiet) -> StatusReport:
    AlembicProject(settings.alembic_config)
    database = resolve_database(settings, notify)
    project = _project(settings, database)
    with connect(database) as conn:
        mark_interrupted_runs(conn, lock_held_by_us=False)
        runner = MigrationRunner(project, database.sqlalchemy_url, _timeouts(settings))
        heads = _guard_connection(database, runner.current_heads)
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
        )


def history(settings: Settings, *, limit: int | None = 50, notify: Notify = _quiet) -> list[RunRecord]:
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        mark_interrupted_runs(conn, lock_held_by_us=False)
        return list_runs(conn, limit)
