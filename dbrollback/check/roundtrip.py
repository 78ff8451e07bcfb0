"""The up → down → up procedure, revision by revision, on a throwaway database.

For each revision R (its parents applied):

1. every empty user table is seeded, and tables with a column NULL in every row (one the revision
   before added) get more rows; the schema S0 and every table's rows D0 are recorded;
2. R is upgraded (its own transaction); every table gets more generated rows (empty ones the full
   amount), the rows written now being remembered as D1;
3. R is downgraded; the schema S1 is compared with S0; D0 and D1 are compared with what is left,
   in the columns that exist on both sides (``before_upgrade`` and ``after_upgrade`` losses);
4. R is upgraded again.

The data stays: the next revision starts from the state step 4 left, rows included, so it is checked
against the rows earlier revisions saw (and tables dropped and recreated empty are seeded again).

Nothing stops the run at the first failure:

* an upgrade that fails on the generated rows is retried on fresh rows without NULLs in nullable
  columns (a SET NOT NULL real data would pass: a note, not a failure), then on empty tables: an
  upgrade that passes only there fails on rows the schema before it allows, so production data can
  make it fail too, and the data of rows written before it cannot be checked — ``data_roundtrip`` is
  ``unverified``, a failure. If it fails on empty tables too, R and everything that needs R are
  reported as not checked, and the other branches go on;
* a column that held only NULLs before the upgrade (no value could be generated for its type)
  proves nothing when the upgrade drops it or changes its type and the downgrade brings it back:
  ``unverified`` too (a note when the upgrade leaves it alone);
* a downgrade that fails is rolled back; if the schema is then exactly what the upgrade left,
  the run goes on from there;
* when the database is left somewhere the next revisions cannot start from (a failed re-upgrade,
  or a failed downgrade that left changes behind), a fresh throwaway database is made and the
  revisions checked so far are replayed on it (upgrade only). With a configured database, which
  cannot be replaced, the remaining revisions are reported as not checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from psycopg import sql

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.check.data import (
    STAGE_AFTER_UPGRADE,
    STAGE_BEFORE_UPGRADE,
    LostData,
    TableRows,
    align_types,
    compare_rows,
    pin_output_settings,
    read_rows,
)
from dbrollback.check.result import ERROR, LOST, OK, UNVERIFIED, RevisionCheck
from dbrollback.check.revisions import PlannedRevision
from dbrollback.check.schema import SchemaSnapshot, capture_schema, diff_schemas
from dbrollback.check.seed import Seeder, SeedOutcome
from dbrollback.check.steps import RevisionDriver, SameDatabaseGuard, StepError
from dbrollback.check.tables import QualifiedName, TableInfo, describe_tables, quote_name
from dbrollback.check.target import Target, Workspace
from dbrollback.database import connect

__all__ = ["Session", "run_roundtrips"]

Notify = Callable[[str], None]

# What a revision's check left behind.
APPLIED, NOT_APPLIED, UNUSABLE = "applied", "not_applied", "unusable"


class Session:
    """The check's own connection to one throwaway database, and the driver that migrates it."""

    def __init__(self, target: Target, alembic_ini: Path) -> None:
        self.target = target
        self._stack = contextlib.ExitStack()
        try:
            self.conn = self._stack.enter_context(connect(target.database, "check"))
            pin_output_settings(self.conn)
            guard = SameDatabaseGuard(self.conn)
            project = AlembicProject(alembic_ini, target.database.sqlalchemy_url)
            self.driver = RevisionDriver(project, target.database.sqlalchemy_url, guard)
            self.version_table = self.driver.probe().version_table
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def upgrade(self, revision: str) -> None:
        """Upgrade ``revision`` as `dbrollback upgrade` does: then run the backfills of the
        expansions it opened (dbrollback.expand), so an ``up`` that fails on rows fails here."""
        from dbrollback.backfill.engine import run_backfill, unfinished_backfills
        from dbrollback.errors import DbrollbackError

        self.driver.upgrade(revision)
        for record in unfinished_backfills(self.conn):
            try:
                run_backfill(self.conn, record.id)
            except DbrollbackError as exc:
                # Back to where the upgrade started (its downgrade is expand.abort()), so the round
                # trip can be retried on other rows like any failed upgrade.
                with contextlib.suppress(StepError):
                    self.driver.downgrade(revision)
                raise StepError(
                    revision, "upgrade", Exception(f"the backfill it opened failed: {exc.message}")
                ) from exc

    def tables(self) -> list[TableInfo]:
        return describe_tables(self.conn, self.version_table)

    def schema(self) -> SchemaSnapshot:
        return capture_schema(self.conn, self.version_table)

    def read_all(self, tables: list[TableInfo]) -> dict[QualifiedName, TableRows]:
        return {t.qualified: read_rows(self.conn, t) for t in tables}

    def truncate_all(self) -> None:
        tables = self.tables()
        if tables:
            names = sql.SQL(", ").join(sql.Identifier(*t.qualified) for t in tables)
            self.conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(names))


class SeedingNotes:
    """Seeding problems, each told once (the same table usually fails the same way every time)."""

    def __init__(self) -> None:
        self.notes: dict[tuple[str, str], str] = {}

    def add(self, revision: str, outcome: SeedOutcome, when: str) -> None:
        for problem in outcome.problems:
            self.notes.setdefault((problem.table, problem.kind),
                                  f"seeding {when} {revision}: {problem.message}")  # fmt: skip


def check_revision(session: Session, planned: PlannedRevision, seeder: Seeder,
                   seeding: SeedingNotes) -> tuple[RevisionCheck, str]:  # fmt: skip
    """Up, down and up again for one revision; returns the report and the state it left."""
    check = RevisionCheck(planned.revision, planned.doc, planned.path, planned.line)
    rows = _seed_before(session, planned.revision, seeder, seeding)
    before_schema = session.schema()
    upgraded_rows = _upgrade(session, planned.revision, seeder, seeding, check, rows)
    if upgraded_rows is None:
        return check, NOT_APPLIED
    before_rows = upgraded_rows
    upgraded_schema = session.schema()
    upgraded_tables = {t.qualified: t for t in session.tables()}
    _check_null_only_columns(check, before_rows, upgraded_tables)
    seeded = seeder.add_rows(session.conn, list(upgraded_tables.values()))
    seeding.add(planned.revision, seeded, "after the upgrade of")
    written_after = {
        name: TableRows.of(upgraded_tables[name], rows) for name, rows in seeded.inserted.items()
    }
    try:
        session.driver.downgrade(planned.revision)
        check.downgrade = OK
    except StepError as exc:
        check.downgrade = ERROR
        check.errors.append(f"downgrade failed: {exc.detail}")
        state = APPLIED if session.schema() == upgraded_schema else UNUSABLE
        return check, state
    differences = diff_schemas(before_schema, session.schema())
    check.schema_differences = differences
    check.schema_roundtrip = "diff" if differences else OK
    after_rows = session.read_all(session.tables())
    check.lost = _losses(session, before_rows, after_rows, STAGE_BEFORE_UPGRADE) + _losses(
        session, written_after, after_rows, STAGE_AFTER_UPGRADE
    )
    check.data_roundtrip = LOST if check.lost else UNVERIFIED if check.unverified else OK
    try:
        session.upgrade(planned.revision)
        check.reupgrade = OK
    except StepError as exc:
        check.reupgrade = ERROR
        check.errors.append(f"upgrade after the downgrade failed: {exc.detail}")
        return check, UNUSABLE
    return check, APPLIED


def _seed_before(session: Session, revision: str, seeder: Seeder,
                 seeding: SeedingNotes) -> dict[QualifiedName, TableRows]:  # fmt: skip
    """Seed empty tables, and top up those with a column NULL in every row; returns all rows."""
    seeding.add(revision, seeder.fill_empty(session.conn, session.tables()), "before")
    tables = session.tables()
    rows = session.read_all(tables)
    null_only = {name: table.null_only_columns() for name, table in rows.items() if table.rows}
    if any(null_only.values()):
        topped = seeder.top_up(session.conn, tables, null_only)
        if topped.inserted:
            seeding.add(revision, topped, "before")
            rows = session.read_all(tables)
    return rows


def _upgrade(session: Session, revision: str, seeder: Seeder, seeding: SeedingNotes, check: RevisionCheck,
             rows: dict[QualifiedName, TableRows]) -> dict[QualifiedName, TableRows] | None:  # fmt: skip
    """Upgrade ``revision``, retrying as the module docstring says; returns the rows present just
    before the upgrade that passed (what the data round trip is checked against), None if none did."""
    try:
        session.upgrade(revision)
        check.upgrade = OK
        return rows
    except StepError as exc:
        failure = exc
    # Generated NULLs can break an upgrade real data would pass (a column made NOT NULL after an
    # earlier revision filled it), so the same round trip is tried on rows without them.
    if any(None in row for table in rows.values() for row in table.rows):
        session.truncate_all()
        seeding.add(revision, seeder.fill_empty(session.conn, session.tables(), without_nulls=True), "before")
        rows = session.read_all(session.tables())
        try:
            session.upgrade(revision)
        except StepError as exc:
            failure = exc
        else:
            check.upgrade = OK
            check.notes.append(
                f"the upgrade failed on the generated rows ({failure.detail}) and passed on new rows "
                "without NULLs in nullable columns; this revision was checked on those"
            )
            return rows
    session.truncate_all()
    try:
        session.upgrade(revision)
    except StepError as exc:
        check.upgrade = ERROR
        check.errors.append(f"upgrade failed: {exc.detail}")
        return None
    check.upgrade = OK
    check.unverified.append(
        f"the upgrade fails on rows the schema before it allows ({failure.detail}) and passed only on "
        "empty tables, so whether the downgrade brings back data written before the upgrade was not "
        "checked; data like these rows in a real database would make this upgrade fail too"
    )
    return {}


def _check_null_only_columns(check: RevisionCheck, before: dict[QualifiedName, TableRows],
                             upgraded: dict[QualifiedName, TableInfo]) -> None:  # fmt: skip
    """A column that held only NULLs proves nothing when the upgrade drops it or changes its type:
    a downgrade re-adding it empty would give the same NULLs back."""
    for name, rows in before.items():
        after = upgraded.get(name)
        after_types = dict(zip(after.column_names, after.column_types, strict=True)) if after else {}
        idle = [(column, rows.types[rows.columns.index(column)]) for column in rows.null_only_columns()]
        touched = ", ".join(f"{quote_name(c)} ({t})" for c, t in idle if after_types.get(c) != t)
        untouched = ", ".join(f"{quote_name(c)} ({t})" for c, t in idle if after_types.get(c) == t)
        if touched:
            if rows.rows:
                held = f"held only NULLs in {touched} (no value could be generated for them)"
            else:
                held = "had no rows (it could not be seeded)"
            change = "drops the table" if after is None else f"drops or changes the type of {touched}"
            check.unverified.append(
                f"{rows.display} {held}, and the upgrade {change}: whether the downgrade brings that "
                "data back is not verified"
            )
        if untouched and rows.rows:
            check.notes.append(
                f"{rows.display}: {untouched} held only NULLs (no value could be generated for them), "
                "so their data round trip is not verified"
            )


def _losses(session: Session, before: dict[QualifiedName, TableRows], after: dict[QualifiedName, TableRows],
            stage: str) -> list[LostData]:  # fmt: skip
    found = []
    for name, rows in before.items():
        if name in after:
            lost = compare_rows(*align_types(session.conn, rows, after[name]), stage)
            if lost is not None:
                found.append(lost)
    return found


class _Run:
    def __init__(self, workspace: Workspace, alembic_ini: Path, seeder: Seeder, notify: Notify) -> None:
        self.workspace = workspace
        self.alembic_ini = alembic_ini
        self.seeder = seeder
        self.notify = notify
        self.session: Session | None = Session(workspace.open(), alembic_ini)
        self.applied: list[str] = []
        self.unavailable: dict[str, str] = {}  # revision -> why it (and so its descendants) is missing
        self.stopped: str | None = None
        self.seeding = SeedingNotes()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def recover(self, reason: str) -> None:
        """A fresh database with the revisions applied so far, or stop when none can be made."""
        assert self.session is not None
        self.session.close()
        self.session = None
        if not self.workspace.can_replace:
            self.stopped = f"{reason}, and the configured database cannot be replaced by a fresh one"
            return
        self.notify(f"{reason}: replaying {len(self.applied)} revision(s) on a fresh throwaway database")
        self.session = Session(self.workspace.replace(), self.alembic_ini)
        for revision in self.applied:
            try:
                self.session.upgrade(revision)
            except StepError as exc:
                self.stopped = f"{reason}, and replaying {revision} on a fresh database failed: {exc.detail}"
                return

    def not_checked(self, planned: PlannedRevision, why: str) -> RevisionCheck:
        check = RevisionCheck(planned.revision, planned.doc, planned.path, planned.line)
        check.not_checked = why
        return check

    def step(self, planned: PlannedRevision, index: int, total: int) -> RevisionCheck | None:
        if self.stopped is not None:
            return self.not_checked(planned, self.stopped) if planned.checked else None
        blocked = [d for d in planned.down_revisions if d in self.unavailable]
        if blocked:
            self.unavailable[planned.revision] = self.unavailable[blocked[0]]
            return self.not_checked(planned, self.unavailable[blocked[0]]) if planned.checked else None
        assert self.session is not None
        if not planned.checked:
            try:
                self.session.upgrade(planned.revision)
                self.applied.append(planned.revision)
            except StepError as exc:
                self.unavailable[planned.revision] = (
                    f"revision {planned.revision} could not be applied: {exc.detail}"
                )
            return None
        self.notify(f"Checking {planned.revision} ({index}/{total}): upgrade, downgrade, upgrade again")
        check, state = check_revision(self.session, planned, self.seeder, self.seeding)
        if state == NOT_APPLIED:
            self.unavailable[planned.revision] = f"it needs {planned.revision}, whose upgrade failed"
        else:
            self.applied.append(planned.revision)
            if state == UNUSABLE:
                self.recover(
                    f"{planned.revision} left the database in a state the next revisions cannot start from"
                )
        return check


def run_roundtrips(planned: list[PlannedRevision], workspace: Workspace, alembic_ini: Path, seeder: Seeder,
                   notify: Notify) -> tuple[list[RevisionCheck], str, list[str]]:  # fmt: skip
    """Check every planned revision; returns the reports, a description of the database used and
    notes on seeding."""
    run = _Run(workspace, alembic_ini, seeder, notify)
    assert workspace.current is not None
    description = workspace.current.description
    try:
        checks: list[RevisionCheck] = []
        total = sum(1 for p in planned if p.checked)
        index = 0
        for item in planned:
            index += item.checked
            result = run.step(item, index, total)
            if result is not None:
                checks.append(result)
        return checks, description, list(run.seeding.notes.values())
    finally:
        run.close()
