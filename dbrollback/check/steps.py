"""Run exactly one revision up or down, in its own transaction, through the project's own env.py.

dbrollback's MigrationRunner drives Alembic's EnvironmentContext (so env.py runs as it would under
`alembic upgrade`); here its environment runs a single explicit step instead of a range, which is
what lets `check` take one revision down and up again wherever it sits in a branched history.

Before any step, the connection env.py opened is checked against the throwaway database: the
check's own connection holds a random advisory lock, and env.py's connection must see that lock in
its own database. An env.py that ignores the URL dbrollback passes (reading its own from the
environment, say) would otherwise run downgrades and inserts against a real database.

Migration code (env.py, revision modules, upgrade() and downgrade()) runs with its stdout sent to
stderr: a print() in a revision must not end up inside `check --json`'s document.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from alembic.runtime.migration import MigrationContext, MigrationStep
from sqlalchemy import text

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import MigrationRunner, Timeouts
from dbrollback.check.tables import VersionTable
from dbrollback.errors import RefusedForSafety
from dbrollback.urls import redact

__all__ = ["RevisionDriver", "SameDatabaseGuard", "StepError", "migration_output_to_stderr"]

_NO_TIMEOUTS = Timeouts(None, None, 0)


@contextlib.contextmanager
def migration_output_to_stderr() -> Iterator[None]:
    """While the project's code runs, what it prints goes to stderr (stdout carries the report)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class StepError(Exception):
    """A revision's upgrade() or downgrade() raised; its transaction was rolled back."""

    def __init__(self, revision: str, direction: str, error: BaseException) -> None:
        self.revision = revision
        self.direction = direction
        self.detail = _error_text(error)
        super().__init__(f"{direction} of {revision} failed: {self.detail}")


def _error_text(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    source = orig if orig is not None else error
    lines = str(source).strip().splitlines()
    first = lines[0] if lines else ""
    if orig is None and not isinstance(error, psycopg.Error):
        first = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return redact(first or type(error).__name__)


class SameDatabaseGuard:
    """A random advisory lock held by the check's connection identifies the throwaway database."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.keys = (secrets.randbelow(2**31 - 1) + 1, secrets.randbelow(2**31 - 1) + 1)
        conn.execute("SELECT pg_advisory_lock(%s, %s)", self.keys)
        self.pid = conn.info.backend_pid

    def verify(self, connection: Any) -> None:
        row = connection.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
                "AND pid = :pid AND classid::text = :k1 AND objid::text = :k2 AND objsubid = 2 "
                "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))"
            ),
            {"pid": self.pid, "k1": str(self.keys[0]), "k2": str(self.keys[1])},
        ).fetchone()
        if not row or not row[0]:
            raise RefusedForSafety(
                "The project's env.py connected to another database than the throwaway one dbrollback "
                "check prepared, so nothing was run. env.py must use the connection in "
                "config.attributes['connection'] or the sqlalchemy.url dbrollback sets (as for "
                "`dbrollback upgrade`)."
            )


@dataclass
class _Probe:
    version_table: VersionTable
    heads: tuple[str, ...]


class RevisionDriver:
    """One revision at a time on one database, each step in its own transaction."""

    def __init__(self, project: AlembicProject, sqlalchemy_url: str, guard: SameDatabaseGuard) -> None:
        self.project = project
        self.guard = guard
        self._runner = MigrationRunner(project, sqlalchemy_url, _NO_TIMEOUTS)

    def probe(self) -> _Probe:
        """Check env.py's connection and read the version table's name and the heads; changes nothing."""
        found: list[_Probe] = []

        def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
            self.guard.verify(context.connection)
            found.append(_Probe(VersionTable(context.version_table, context.version_table_schema),
                                tuple(context.get_current_heads())))  # fmt: skip
            return []

        with migration_output_to_stderr():
            self._runner._run_env(fn, {"dont_mutate": True}, destination=None)
        if not found:
            raise RefusedForSafety(
                "The project's env.py did not run migrations online (context.run_migrations() was not "
                "reached with a database connection), so dbrollback check cannot run it."
            )
        return found[0]

    def upgrade(self, revision: str) -> None:
        self._step(revision, upgrade=True)

    def downgrade(self, revision: str) -> None:
        self._step(revision, upgrade=False)

    def _step(self, revision: str, *, upgrade: bool) -> None:
        script_directory = self.project.script
        with migration_output_to_stderr():  # the first lookup imports the revision files
            script = script_directory.get_revision(revision)
        assert script is not None

        def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
            self.guard.verify(context.connection)
            make = MigrationStep.upgrade_from_script if upgrade else MigrationStep.downgrade_from_script
            return [make(script_directory.revision_map, script)]

        try:
            with migration_output_to_stderr():
                self._runner._run_env(fn, {"transaction_per_migration": True}, destination=None)
        except RefusedForSafety:
            raise
        except Exception as exc:
            raise StepError(revision, "upgrade" if upgrade else "downgrade", exc) from exc
