"""The `check` verb: prove each revision's downgrade on a throwaway database (see dbrollback.check)."""

from __future__ import annotations

from collections.abc import Callable

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.check.result import CheckResult
from dbrollback.check.revisions import plan_revisions
from dbrollback.check.roundtrip import run_roundtrips
from dbrollback.check.seed import Seeder
from dbrollback.check.target import open_workspace
from dbrollback.settings import Settings

__all__ = ["CheckResult", "check"]

DEFAULT_ROWS = 300


def _quiet(_: str) -> None:
    pass


def check(settings: Settings, from_rev: str | None = None, to_rev: str | None = None, *,
          rows: int = DEFAULT_ROWS, seed: int = 0, embedded: bool = False,
          notify: Callable[[str], None] = _quiet) -> CheckResult:  # fmt: skip
    """Upgrade, downgrade and upgrade again every revision from ``from_rev`` (default: the first)
    to ``to_rev`` (default: heads), with ``rows`` generated rows per table.

    Runs on a new database on the embedded server, dropped afterwards; with a configured database
    URL (and not ``embedded``), on that database if it has no user tables, else RefusedForSafety.
    Bad revision arguments fail before any database is touched.
    """
    project = AlembicProject(settings.alembic_config)
    planned = plan_revisions(project, from_rev, to_rev)
    result = CheckResult(database="", seed=seed, rows=rows)
    if not any(p.checked for p in planned):
        result.notes.append("no revisions to check")
        return result
    with open_workspace(settings, embedded=embedded, notify=notify) as workspace:
        checks, description, notes = run_roundtrips(planned, workspace, settings.alembic_config,
                                             Seeder(seed, rows), notify)  # fmt: skip
    result.database = description
    result.revisions = checks
    result.notes.extend(notes)
    return result
