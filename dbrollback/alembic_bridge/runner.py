"""Runs Alembic revisions one transaction each, journaling every revision as it commits.

We drive Alembic's EnvironmentContext ourselves (as alembic.command does) so that whatever the
project's env.py passes to ``context.configure`` we can add ``transaction_per_migration`` and an
``on_version_apply`` hook. Alembic calls that hook inside each revision's transaction, after the
version table is updated, so the journal row commits atomically with the revision.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import NullPool, create_engine, text
from sqlalchemy.engine import Connection, Engine

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.durations import parse_optional_duration, postgres_ms
from dbrollback.errors import ConfigError, DbrollbackError

# A module-level dict a revision file may define to override settings for that revision only:
#     dbrollback_options = {"lock_timeout": "30s", "statement_timeout": "10min", "lock_retries": 5}
REVISION_OPTIONS_ATTRIBUTE = "dbrollback_options"
# Make the server abandon a statement whose client vanished (kill -9) instead of finishing it.
_CLIENT_CHECK_INTERVAL_MS = "2000"


@dataclass(frozen=True)
class Timeouts:
    lock_timeout: timedelta | None
    statement_timeout: timedelta | None
    lock_retries: int


class RevisionOptions(BaseModel):
    """What a revision's dbrollback_options may set; validated before anything runs."""

    model_config = ConfigDict(extra="forbid")

    lock_timeout: timedelta | None = None
    statement_timeout: timedelta | None = None
    lock_retries: int | None = Field(None, ge=0)

    @field_validator("lock_timeout", "statement_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta | None:
        return parse_optional_duration(value)

    def over(self, defaults: Timeouts) -> Timeouts:
        given = self.model_fields_set
        return Timeouts(
            lock_timeout=self.lock_timeout if "lock_timeout" in given else defaults.lock_timeout,
            statement_timeout=(
                self.statement_timeout if "statement_timeout" in given else defaults.statement_timeout
            ),
            lock_retries=(
                self.lock_retries
                if "lock_retries" in given and self.lock_retries is not None
                else defaults.lock_retries
            ),
        )


def revision_timeouts(script: Any, defaults: Timeouts) -> Timeouts:
    raw = getattr(script.module, REVISION_OPTIONS_ATTRIBUTE, None)
    if raw is None:
        return defaults
    try:
        return RevisionOptions.model_validate(raw).over(defaults)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"Invalid {REVISION_OPTIONS_ATTRIBUTE} in revision {script.revision} ({script.path}): "
            f"{problems}. Allowed keys: lock_timeout, statement_timeout, lock_retries.",
            revision=script.revision,
        ) from None


@dataclass(frozen=True)
class PlannedStep:
    revision: str
    is_upgrade: bool
    doc: str
    timeouts: Timeouts

    @property
    def phase(self) -> str:
        return "upgrade" if self.is_upgrade else "downgrade"


class RunHooks(Protocol):
    def planned(self, current_heads: tuple[str, ...], steps: list[PlannedStep]) -> None: ...

    def step_applied(self, connection: Connection, step: PlannedStep, started_at: datetime,
                     attempt: int) -> None: ...  # fmt: skip

    def step_failed(self, step: PlannedStep, started_at: datetime, attempt: int,
                    error: BaseException) -> None: ...  # fmt: skip

    def retrying(self, step: PlannedStep, attempt: int, delay: float) -> None: ...

    def before_step(self, step: PlannedStep, connection: Connection) -> None:
        """Called just before a revision's migration code runs, on every attempt.

        `connection` is the revision's own connection, inside its transaction, with its timeouts
        set: locks taken on it are held until the revision commits. Raising a DbrollbackError
        stops the run (the revision's transaction is rolled back and the error propagates
        unchanged); a lock timeout is retried like one inside the revision.
        """
        ...


@dataclass
class RunOutcome:
    applied: list[PlannedStep] = field(default_factory=list)
    final_heads: tuple[str, ...] = ()


class StepFailed(Exception):
    """A revision raised; its transaction was rolled back. Wraps the original error."""

    def __init__(self, step: PlannedStep, error: BaseException, attempts: int) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error
        self.attempts = attempts


def is_lock_timeout(error: BaseException) -> bool:
    """True if PostgreSQL cancelled a statement because lock_timeout expired (SQLSTATE 55P03)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if getattr(exc, "sqlstate", None) == "55P03":
            return True
        stack.extend([getattr(exc, "orig", None), exc.__cause__, exc.__context__])
    return False


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _StepProxy:
    """Stands in for Alembic's RevisionStep so we can act just before its migration runs."""

    def __init__(self, step: Any, planned: PlannedStep, before: Callable[[PlannedStep], None]):
        self._step = step
        self._planned = planned
        self._before = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __str__(self) -> str:
        return str(self._step)

    @property
    def migration_fn(self) -> Callable[..., Any]:
        original = self._step.migration_fn

        def run(**kw: Any) -> Any:
            self._before(self._planned)
            return original(**kw)

        return run


class MigrationRunner:
    def __init__(self, project: AlembicProject, sqlalchemy_url: str, timeouts: Timeouts,
                 hooks: RunHooks | None = None, sleep: Callable[[float], None] = time.sleep,
                 engine_hook: Callable[[Engine], None] | None = None,
                 single_transaction: bool = False):  # fmt: skip
        self.project = project
        # One transaction for the whole run (rollback: downgrades and data merge commit together or
        # not at all); hooks are still called per revision. A failed statement aborts the whole
        # transaction, so nothing is retried.
        self.single_transaction = single_transaction
        self.engine_hook = engine_hook  # e.g. to attach a cursor-execute listener
        self.sqlalchemy_url = sqlalchemy_url
        self.timeouts = timeouts
        self.hooks = hooks
        self._sleep = sleep
        self._context: MigrationContext | None = None
        self._current: PlannedStep | None = None
        self._current_started = _now()
        self._current_journaled = False
        self._attempt = 1
        self._attempts: dict[str, int] = {}  # lock-timeout attempts per revision in this run

    @property
    def current_step(self) -> PlannedStep | None:
        """The revision running now (or that was running when the run stopped)."""
        return self._current

    # -- read-only -----------------------------------------------------------------------------
    def current_heads(self) -> tuple[str, ...]:
        """The heads recorded in the database, read through the project's own env.py."""
        captured: list[tuple[str, ...]] = []

        def fn(rev: Any, context: MigrationContext) -> list[Any]:
            captured.append(tuple(context.get_current_heads()))
            return []

        self._run_env(fn, {"dont_mutate": True}, destination=None)
        return captured[0] if captured else ()

    def plan(self, direction: str, target: str, heads: tuple[str, ...]) -> list[PlannedStep]:
        return [self._planned(s) for s in self._steps(direction, target, heads)]

    # -- migrating -----------------------------------------------------------------------------
    def run(self, direction: str, target: str) -> RunOutcome:
        outcome = RunOutcome()
        self._attempts = {}
        while True:
            try:
                self._attempt_run(direction, target, outcome)
                break
            except (StepFailed, DbrollbackError):
                raise
            except Exception as exc:
                step = self._current
                if step is None:
                    raise
                if self._current_journaled:  # the failure came at COMMIT, after our journal row
                    outcome.applied = [s for s in outcome.applied if s is not step]
                if self.hooks:
                    self.hooks.step_failed(step, self._current_started, self._attempt, exc)
                retryable = is_lock_timeout(exc) and not self.single_transaction
                if retryable and self._attempt <= step.timeouts.lock_retries:
                    delay = min(30.0, 0.5 * 2 ** (self._attempt - 1)) * random.uniform(0.8, 1.2)
                    if self.hooks:
                        self.hooks.retrying(step, self._attempt, delay)
                    self._sleep(delay)
                    self._attempts[step.revision] = self._attempt + 1
                    continue
                raise StepFailed(step, exc, self._attempt) from exc
        outcome.final_heads = self.current_heads()
        return outcome

    def _attempt_run(self, direction: str, target: str, outcome: RunOutcome) -> None:
        self._current = None

        def fn(rev: Any, context: MigrationContext) -> Iterable[Any]:
            self._context = context
            heads = tuple(context.get_current_heads())
            steps = self._steps(direction, target, heads)
            planned = [self._planned(s) for s in steps]
            if self.hooks:
                self.hooks.planned(heads, planned)
            return [_StepProxy(s, p, self._before_step) for s, p in zip(steps, planned, strict=True)]

        def on_version_apply(**kw: Any) -> None:
            assert self._current is not None and self._context is not None
            if self.hooks:
                assert self._context.connection is not None
                self.hooks.step_applied(self._context.connection, self._current,
                                        self._current_started, self._attempt)  # fmt: skip
            self._current_journaled = True
            outcome.applied.append(self._current)

        self._run_env(
            fn,
            {
                "transaction_per_migration": not self.single_transaction,
                "on_version_apply": on_version_apply,
            },
            destination=target,
        )

    def _before_step(self, step: PlannedStep) -> None:
        self._current = step
        self._current_started = _now()
        self._current_journaled = False
        self._attempt = self._attempts.get(step.revision, 1)
        assert self._context is not None and self._context.connection is not None
        # Session-level (is_local false) so the values also hold inside autocommit blocks;
        # they are set again before every revision.
        self._context.connection.execute(
            text(
                "SELECT set_config('lock_timeout', :lt, false), "
                "set_config('statement_timeout', :st, false), "
                "set_config('client_connection_check_interval', :cc, false)"
            ),
            {
                "lt": postgres_ms(step.timeouts.lock_timeout),
                "st": postgres_ms(step.timeouts.statement_timeout),
                "cc": _CLIENT_CHECK_INTERVAL_MS,
            },
        )
        if self.hooks is not None:
            self.hooks.before_step(step, self._context.connection)

    # -- plumbing ------------------------------------------------------------------------------
    def _steps(self, direction: str, target: str, heads: tuple[str, ...]) -> list[Any]:
        script = self.project.script
        try:
            if direction == "upgrade":
                return list(script._upgrade_revs(target, heads))  # type: ignore[arg-type]
            return list(script._downgrade_revs(target, heads))  # type: ignore[arg-type]
        except CommandError as exc:
            raise self.project.unknown_revision(target, str(exc)) from None

    def _planned(self, step: Any) -> PlannedStep:
        script = step.revision
        return PlannedStep(
            revision=script.revision,
            is_upgrade=bool(step.is_upgrade),
            doc=script.doc or "",
            timeouts=revision_timeouts(script, self.timeouts),
        )

    def _run_env(self, fn: Callable[..., Any], extra: dict[str, Any],
                 destination: str | None) -> None:  # fmt: skip
        engine = create_engine(self.sqlalchemy_url, poolclass=NullPool,
                               connect_args={"application_name": "dbrollback migrate"})  # fmt: skip
        if self.engine_hook is not None:
            self.engine_hook(engine)
        try:
            with engine.connect() as connection:
                cfg = self.project.config(connection=connection)
                env = EnvironmentContext(cfg, self.project.script, fn=fn, destination_rev=destination)
                original_configure = env.configure

                def configure(*args: Any, **kw: Any) -> None:
                    callbacks = kw.get("on_version_apply") or ()
                    if callable(callbacks):
                        callbacks = (callbacks,)
                    merged = dict(kw)
                    merged.update(extra)
                    if "on_version_apply" in extra:
                        merged["on_version_apply"] = (*callbacks, extra["on_version_apply"])
                    original_configure(*args, **merged)

                # The proxy behind `alembic.context` binds the instance's attributes, so an
                # instance attribute is what env.py's `context.configure(...)` will call.
                env.configure = configure  # type: ignore[method-assign]
                with env:
                    self.project.script.run_env()
                if connection.in_transaction():
                    connection.rollback()
        finally:
            engine.dispose()


def add_version_location(script: ScriptDirectory, directory: Path) -> None:
    """Make ``script`` also load the revision files in ``directory`` (e.g. stored sources of
    revisions no longer in the checkout) and forget the revisions it had already read."""
    from alembic.script.revision import RevisionMap

    locations = list(script._version_locations)
    script.__dict__["_version_locations"] = [*locations, directory.absolute()]  # memoized property
    script.revision_map = RevisionMap(script._load_revisions)
