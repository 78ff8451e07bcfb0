"""The SQL each pending revision would really execute.

The pending upgrade runs, through MigrationRunner and the project's own env.py, on a throwaway
schema-only copy of the database (see :mod:`dbrollback.analysis.scratch`) while a SQLAlchemy
``before_cursor_execute`` listener records every statement. That sees ``op.execute()`` raw SQL
and SQL built in Python at run time, exactly as it would be sent. Statements recorded between two
``step_applied`` hooks belong to the revision just applied.

Where no copy can be made, or a revision fails there (it may assert on data a schema-only copy
lacks), the remaining revisions are rendered in Alembic's offline mode (``as_sql``) instead and
marked ``method="offline"``. A revision that cannot even be rendered offline (it queries the
database) is ``method="unavailable"``, with the error as its reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pglast
import psycopg
from alembic import context as alembic_context
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError as SAOperationalError

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import MigrationRunner, PlannedStep, StepFailed, Timeouts
from dbrollback.analysis.classify import classify_sql
from dbrollback.analysis.scratch import ScratchUnavailable, open_scratch
from dbrollback.errors import ConfigError, ConnectionFailed
from dbrollback.urls import display_url, libpq_url, parse_database_url, redact, sqlalchemy_url

__all__ = ["CapturedSQL", "CapturedStatement", "RevisionSQL", "capture_revision_sql", "render_offline"]

EXECUTED, OFFLINE, UNAVAILABLE = "executed", "offline", "unavailable"
# The statement MigrationRunner sends before every revision to set its timeouts.
_RUNNER_SET_CONFIG = "SELECT set_config('lock_timeout',"
_PLACEHOLDER = re.compile(r"%\([^)]*\)s|%s")


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class CapturedStatement:
    """One statement as sent to the server, bound parameters rendered as SQL literals."""

    sql: str
    template: str | None = None  # the driver-level text with placeholders, when it had parameters
    parameters: Any = None  # those parameters (JSON-ready; for executemany, the first set)
    executions: int = 1  # executemany: how many parameter sets were sent

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sql": self.sql}
        if self.template is not None:
            out["template"] = self.template
            out["parameters"] = self.parameters
        if self.executions != 1:
            out["executions"] = self.executions
        return out


@dataclass
class RevisionSQL:
    revision: str
    doc: str
    method: str  # executed | offline | unavailable
    statements: list[CapturedStatement] = field(default_factory=list)
    reason: str = ""  # why it was not executed on the copy, or why nothing could be captured

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "doc": self.doc,
            "method": self.method,
            "reason": self.reason,
            "statements": [s.to_dict() for s in self.statements],
        }


@dataclass
class CapturedSQL:
    database: str
    target: str
    current_heads: tuple[str, ...]
    pending: list[PlannedStep]
    revisions: list[RevisionSQL]
    version_table: tuple[str | None, str]  # (schema or None, name) as Alembic is configured
    scratch: str | None = None  # where the revisions were executed, if anywhere
    scratch_problem: str | None = None  # why (some) revisions were rendered offline

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "target": self.target,
            "current_heads": list(self.current_heads),
            "version_table": {"schema": self.version_table[0], "name": self.version_table[1]},
            "scratch": self.scratch,
            "scratch_problem": self.scratch_problem,
            "revisions": [r.to_dict() for r in self.revisions],
        }


class _NotTheCopy(Exception):
    """env.py did not connect to the scratch copy, or planned other revisions: run nothing there."""


def capture_revision_sql(project: AlembicProject, database_url: str, target: str = "heads",
                         timeouts: Timeouts | None = None, *, use_scratch: bool = True,
                         notify: Callable[[str], None] = _quiet) -> CapturedSQL:  # fmt: skip
    """Capture, per pending revision up to ``target``, the SQL the upgrade would execute.

    ``database_url`` may be a libpq or a SQLAlchemy URL. The database itself is only read.
    """
    url = parse_database_url(database_url)
    source_sa = sqlalchemy_url(url)
    timeouts = timeouts or Timeouts(None, None, 0)
    source_project = AlembicProject(project.ini_path, source_sa)
    runner = MigrationRunner(source_project, source_sa, timeouts)
    try:
        heads, version_table = _inspect_source(runner)
    except SAOperationalError as exc:
        raise ConnectionFailed(
            f"Cannot connect to {display_url(url)}: {_error_text(exc)}", url=display_url(url)
        ) from None
    steps = runner._steps("upgrade", target, heads)
    planned = [runner._planned(s) for s in steps]
    captured = CapturedSQL(display_url(url), target, heads, planned, [], version_table)
    if not planned:
        return captured

    executed: dict[str, list[CapturedStatement]] = {}
    problem: str | None = "not attempted" if not use_scratch else None
    failed_revision: str | None = None
    if use_scratch:
        recorder = _Recorder([p.revision for p in planned], version_table)
        try:
            lock_wait = (
                int(timeouts.lock_timeout.total_seconds() * 1000)
                if timeouts.lock_timeout is not None
                else None
            )
            with open_scratch(libpq_url(url), version_table=version_table[1],
                              version_table_schema=version_table[0], lock_wait_timeout_ms=lock_wait,
                              notify=notify) as scratch:  # fmt: skip
                captured.scratch = scratch.describe()
                recorder.expected_database = scratch.database
                scratch_sa = sqlalchemy_url(parse_database_url(scratch.url))
                scratch_runner = MigrationRunner(AlembicProject(project.ini_path, scratch_sa), scratch_sa,
                                                 timeouts, hooks=recorder)  # fmt: skip
                try:
                    scratch_runner.run("upgrade", target)
                except StepFailed as failure:
                    failed_revision = failure.step.revision
                    where = _revision_line(failure.error, source_project, failed_revision)
                    problem = (f"revision {failed_revision} failed on the schema-only copy: "
                               f"{_error_text(failure.error)}{where}")  # fmt: skip
                except _NotTheCopy as exc:
                    problem = str(exc)
                except ConfigError:
                    raise  # bad input in a revision (e.g. a dbrollback.expand call): the real run fails too
                except Exception as exc:
                    problem = f"the upgrade could not run on the schema-only copy: {_error_text(exc)}"
        except ScratchUnavailable as exc:
            problem = exc.reason
        executed = recorder.by_revision

    remaining = [p for p in planned if p.revision not in executed]
    offline: dict[str, tuple[list[CapturedStatement] | None, str]] = {}
    if remaining:
        captured.scratch_problem = problem or "the upgrade stopped on the schema-only copy"
        notify(f"Rendering {len(remaining)} revision(s) in Alembic offline mode: {captured.scratch_problem}")
        offline = render_offline(source_project, steps, heads)
    for step in planned:
        if step.revision in executed:
            captured.revisions.append(RevisionSQL(step.revision, step.doc, EXECUTED, executed[step.revision]))
            continue
        if step.revision == failed_revision:
            why = captured.scratch_problem or ""
        elif failed_revision is not None:
            why = f"comes after revision {failed_revision}, which failed on the schema-only copy"
        else:
            why = captured.scratch_problem or ""
        statements, error = offline.get(step.revision, (None, "offline mode did not reach this revision"))
        if statements is None:
            captured.revisions.append(RevisionSQL(
                step.revision, step.doc, UNAVAILABLE, [],
                f"{why}; it cannot be rendered offline either: {error}" if why else error,
            ))  # fmt: skip
        else:
            captured.revisions.append(RevisionSQL(step.revision, step.doc, OFFLINE, statements, why))
    return captured


# -- the source: heads and version table ---------------------------------------------------------


def _inspect_source(runner: MigrationRunner) -> tuple[tuple[str, ...], tuple[str | None, str]]:
    found: dict[str, Any] = {}

    def fn(rev: Any, context: MigrationContext) -> list[Any]:
        found["heads"] = tuple(context.get_current_heads())
        found["table"] = (context.version_table_schema, context.version_table)
        return []

    # The runner's own env.py driver; dont_mutate keeps Alembic from creating the version table.
    runner._run_env(fn, {"dont_mutate": True}, destination=None)
    return found.get("heads", ()), found.get("table", (None, "alembic_version"))


# -- executing on the copy ------------------------------------------------------------------------


class _Recorder:
    """RunHooks that also listens to every statement on the migration connection."""

    def __init__(self, expected_revisions: list[str], version_table: tuple[str | None, str]) -> None:
        self.expected_revisions = expected_revisions
        self.expected_database = ""
        self.version_table = version_table
        self.by_revision: dict[str, list[CapturedStatement]] = {}
        self._pending: list[CapturedStatement] = []
        self._listening: Connection | None = None

    def planned(self, current_heads: tuple[str, ...], steps: list[PlannedStep]) -> None:
        revisions = [s.revision for s in steps]
        if revisions != self.expected_revisions:
            raise _NotTheCopy(
                f"the schema-only copy would run revisions {revisions}, not {self.expected_revisions}"
            )
        connection = alembic_context.get_context().connection
        assert connection is not None
        # env.py may ignore the URL it is given (e.g. read DATABASE_URL itself): never run the
        # revisions anywhere but on the copy.
        database = connection.exec_driver_sql("SELECT current_database()").scalar()
        if database != self.expected_database:
            raise _NotTheCopy(
                "the project's env.py did not connect to the schema-only copy it was given "
                f"(it connected to database {database!r}), so nothing was executed there"
            )
        if self._listening is not connection:
            event.listen(connection, "before_cursor_execute", self._before_cursor_execute)
            self._listening = connection
        self._pending = []

    def step_applied(self, connection: Connection, step: PlannedStep, started_at: datetime,
                     attempt: int) -> None:  # fmt: skip
        self.by_revision[step.revision] = [s for s in self._pending if not self._bookkeeping(s)]
        self._pending = []

    def step_failed(self, step: PlannedStep, started_at: datetime, attempt: int,
                    error: BaseException) -> None:  # fmt: skip
        self._pending = []  # rolled back; a retry records the statements again

    def retrying(self, step: PlannedStep, attempt: int, delay: float) -> None:
        pass

    def before_step(self, step: PlannedStep, connection: Connection) -> None:
        pass

    def _before_cursor_execute(self, conn: Connection, cursor: Any, statement: str, parameters: Any,
                               context: Any, executemany: bool) -> None:  # fmt: skip
        try:
            self._pending.append(_captured(cursor, statement, parameters, executemany))
        except Exception:  # recording must never break the migration it watches
            self._pending.append(CapturedStatement(_fallback_render(statement), statement, None))

    def _bookkeeping(self, statement: CapturedStatement) -> bool:
        """Our own set_config() and Alembic's reads and writes of its version table."""
        text = (statement.template or statement.sql).lstrip()
        if text.startswith(_RUNNER_SET_CONFIG):
            return True
        effects = classify_sql(statement.sql)
        schema, name = self.version_table
        return bool(effects) and all(
            e.table is not None and e.table.name == name and e.table.schema == schema for e in effects
        )


def _captured(cursor: Any, statement: str, parameters: Any, executemany: bool) -> CapturedStatement:
    if executemany and isinstance(parameters, Sequence) and not isinstance(parameters, (str, bytes)):
        sets = list(parameters)
        first = sets[0] if sets else None
        rendered = _mogrify(cursor, statement, first).strip()
        return CapturedStatement(rendered, statement, _jsonable(first), len(sets))
    if not parameters:
        # psycopg still reduces %% to % when it is handed an empty parameter set.
        return CapturedStatement(_mogrify(cursor, statement, parameters).strip())
    return CapturedStatement(_mogrify(cursor, statement, parameters).strip(), statement,
                             _jsonable(parameters))  # fmt: skip


def _mogrify(cursor: Any, statement: str, parameters: Any) -> str:
    connection = getattr(cursor, "connection", None)
    if isinstance(connection, psycopg.Connection):
        # Client-side binding renders the parameters exactly as psycopg would send them.
        return psycopg.ClientCursor(connection).mogrify(statement, parameters)
    return _fallback_render(statement) if parameters is not None else statement


def _fallback_render(statement: str) -> str:
    """Placeholders as NULL: enough for the statement to be parsed and classified."""
    return _PLACEHOLDER.sub("NULL", statement).replace("%%", "%")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


# -- offline mode ---------------------------------------------------------------------------------


class _OfflineStep:
    """Stands in for an Alembic RevisionStep; cuts the revision's own SQL out of the output."""

    def __init__(self, step: Any, buffer: io.StringIO,
                 results: dict[str, tuple[list[CapturedStatement] | None, str]]) -> None:  # fmt: skip
        self._step = step
        self._buffer = buffer
        self._results = results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __str__(self) -> str:
        return str(self._step)

    @property
    def migration_fn(self) -> Callable[..., Any]:
        original = self._step.migration_fn
        revision = self._step.revision.revision

        def run(**kw: Any) -> None:
            start = len(self._buffer.getvalue())
            try:
                original(**kw)
            except Exception as exc:
                where = _revision_line(exc, None, revision, self._step.revision.path)
                self._results[revision] = (None, _error_text(exc) + where)
                return  # go on with the next revisions: this is only text
            self._results[revision] = (_split(self._buffer.getvalue()[start:]), "")

        return run


def render_offline(project: AlembicProject, steps: list[Any], start_heads: tuple[str, ...]
                   ) -> dict[str, tuple[list[CapturedStatement] | None, str]]:  # fmt: skip
    """Alembic offline (``--sql``) output per revision: {revision: (statements or None, error)}.

    ``steps`` are Alembic's revision steps planned from ``start_heads``. Nothing connects to a
    database; the version table's own statements are left out.
    """
    buffer = io.StringIO()
    results: dict[str, tuple[list[CapturedStatement] | None, str]] = {}
    cfg = project.config()
    cfg.output_buffer = buffer

    def fn(rev: Any, context: MigrationContext) -> list[Any]:
        return [_OfflineStep(s, buffer, results) for s in steps]

    env = EnvironmentContext(cfg, project.script, fn=fn, as_sql=True,
                             starting_rev=tuple(start_heads) or None)  # fmt: skip
    try:
        with env:
            project.script.run_env()
    except Exception as exc:
        error = f"the migration environment failed in offline mode: {_error_text(exc)}"
        for step in steps:
            results.setdefault(step.revision.revision, (None, error))
    return results


def _split(text: str) -> list[CapturedStatement]:
    if not text.strip():
        return []
    try:
        parts = pglast.split(text, with_parser=False)
    except Exception:  # not even scannable: keep it whole, classify_sql reports it as opaque
        return [CapturedStatement(text.strip())]
    return [CapturedStatement(p.strip()) for p in parts if p.strip()]


def _error_text(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    first = text.splitlines()[0] if text else ""
    return redact(f"{type(error).__name__}: {first}" if first else type(error).__name__)


def _revision_line(error: BaseException, project: AlembicProject | None, revision: str,
                   path: str | None = None) -> str:  # fmt: skip
    """Where in the revision's own file the error was raised, as " (file line N)", if known."""
    if path is None and project is not None:
        with contextlib.suppress(Exception):
            path = project.script.get_revision(revision).path
    if not path:
        return ""
    target = os.path.realpath(path)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.realpath(f.filename) == target]
    if not frames:
        return ""
    return f" ({os.path.basename(path)} line {frames[-1].lineno})"
