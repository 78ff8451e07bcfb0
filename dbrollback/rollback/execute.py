"""The rollback's run: Alembic downgrades with the merge (or restore) around each, in ONE transaction.

The runner calls these hooks on the revisions' own connection: `before_step` just before a
revision's downgrade (prepare its tables), `step_applied` right after it, before the next one
(merge or restore, verify). The revisions of several runs (--to, --steps) are just more steps of
the same transaction. After the last revision the schema is compared with the one recorded before
the oldest run and every reverted run is marked; a dry run then raises :class:`DryRunFinished`,
which rolls the whole transaction back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import Connection

from dbrollback.alembic_bridge.runner import PlannedStep
from dbrollback.catalog.journal import Journal, mark_reverted, record_applied_step
from dbrollback.catalog.run_schemas import run_schema
from dbrollback.check.schema import capture_schema, diff_schemas
from dbrollback.check.tables import VersionTable
from dbrollback.database import Notify
from dbrollback.errors import DbrollbackError, RefusedForSafety
from dbrollback.rollback.fill import DEFAULT_BATCH_ROWS, DRY_RUN, check_still_fillable, record_rollback_report
from dbrollback.rollback.merge import TableMerge, merge, prepare
from dbrollback.rollback.plan import RollbackPlan
from dbrollback.rollback.report import RollbackResult, TableReport
from dbrollback.rollback.restore_strategy import TableRestore, prepare_restore, restore_tables
from dbrollback.rollback.sqlparts import Hasher
from dbrollback.rollback.verify import verify_table
from dbrollback.snapshot.store import SnapshotStore


class DryRunFinished(DbrollbackError):
    """Raised after a dry run computed everything, so its transaction is rolled back."""

    kind = "dry_run_finished"


class RollbackHooks:
    def __init__(
        self,
        plan: RollbackPlan,
        store: SnapshotStore,
        journal: Journal,
        rollback_run_id: int | None,
        result: RollbackResult,
        lost_values: dict[tuple[str, str], str],
        notify: Notify,
        version_table: Any,
    ) -> None:
        self.plan = plan
        self.store = store
        self.journal = journal
        self.rollback_run_id = rollback_run_id
        self.result = result
        self.lost_values = lost_values
        self.notify = notify
        self.version_table = version_table  # () -> (schema | None, name)
        self._merges: dict[str, list[TableMerge]] = {}
        self._restores: dict[str, list[TableRestore]] = {}
        self._number = 0
        self._hasher: Hasher | None = None
        self.batched = False  # --batched: values put back by fill.py after the transaction
        self.batch_rows = DEFAULT_BATCH_ROWS
        self.deferred: dict[int, TableReport] = {}  # fill position -> the table's report
        self._deferred_columns: list[tuple[str, str, list[tuple[str, str]]]] = []

    def _driver(self, connection: Connection) -> psycopg.Connection:
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        if self._hasher is None or self._hasher.conn is not driver:
            self._hasher = Hasher(driver)
        return driver

    def planned(self, current_heads: tuple[str, ...], steps: list[PlannedStep]) -> None:
        got = [s.revision for s in steps if not s.is_upgrade]
        if got != self.plan.revisions or len(steps) != len(got):
            raise RefusedForSafety(
                f"The downgrade would run {', '.join(got) or 'nothing'}, not the revisions of run "
                f"{self.plan.run.id} ({', '.join(self.plan.revisions)}). Nothing was changed."
            )

    def before_step(self, step: PlannedStep, connection: Connection) -> None:
        conn = self._driver(connection)
        assert self._hasher is not None
        if self.plan.strategy == "restore":
            self._before_restore(step, conn)
            return
        merges = []
        for fingerprint in self.plan.fingerprints.get(step.revision, []):
            self._number += 1
            name = f"{fingerprint.schema}.{fingerprint.table}"
            report = TableReport(
                name, lost_values_saved_to=self.lost_values.get((fingerprint.schema, fingerprint.table))
            )
            m = TableMerge(
                fingerprint,
                self.plan.table_manifest(fingerprint),
                self._number,
                fingerprint.snapshot_id,
                report,
            )
            if self.batched:
                m.batched_run_id = DRY_RUN if self.result.dry_run else self.rollback_run_id
                m.batch_rows = self.batch_rows
            prepare(conn, self._hasher, m)
            merges.append(m)
        self._merges[step.revision] = merges

    def _before_restore(self, step: PlannedStep, conn: psycopg.Connection) -> None:
        assert self._hasher is not None
        restores = []
        for fingerprint in self.plan.fingerprints.get(step.revision, []):
            self._number += 1
            report = TableReport(
                f"{fingerprint.schema}.{fingerprint.table}",
                lost_values_saved_to=self.lost_values.get((fingerprint.schema, fingerprint.table)),
            )
            r = TableRestore(
                fingerprint,
                self.plan.table_manifest(fingerprint),
                self.plan.manifests[fingerprint.snapshot_id],
                self._number,
                report,
            )
            prepare_restore(conn, self._hasher, self.store, r)
            restores.append(r)
        self._restores[step.revision] = restores

    def _after_restore(self, step: PlannedStep, conn: psycopg.Connection) -> None:
        restores = self._restores.get(step.revision, [])
        restore_tables(conn, self.store, restores, dry_run=self.result.dry_run, notify=self.notify)
        for r in restores:
            self.result.tables.append(r.report)
            t = r.report
            self.notify(
                f"{t.table} after the downgrade of {step.revision}: restored to the snapshot "
                f"({t.restored_rows:,} updated, {t.reinserted_rows:,} inserted), {t.lost_writes:,} later "
                "write(s) discarded" + ("" if t.verified else ", NOT verified")
            )

    def _abort_expansions(self, conn: psycopg.Connection, step: PlannedStep) -> None:
        """Expansions the revision opened and its downgrade left open (not written as
        expand.abort()): aborted here, in the rollback's transaction, so no trigger outlives it."""
        from dbrollback.expand.lifecycle import describe
        from dbrollback.expand_api import abort_for_rollback

        for outcome in abort_for_rollback(conn, step.revision, "rollback"):
            e = outcome.expansion
            self.result.notes.append(
                f"expansion {e.id} of {step.revision} ({e.table_name}: {describe(e)}) aborted: "
                f"dropped {', '.join(outcome.dropped)}"
            )

    def step_applied(
        self, connection: Connection, step: PlannedStep, started_at: datetime, attempt: int
    ) -> None:
        from dbrollback.snapshot.restore import advance_sequences, order_parents_first

        conn = self._driver(connection)
        assert self._hasher is not None
        self._abort_expansions(conn, step)
        if self.plan.strategy == "restore":
            self._after_restore(step, conn)
        # Parents first: a re-inserted row (or a value put back) may reference a row re-inserted
        # into another table of the same revision.
        merges = order_parents_first(
            conn, self._merges.get(step.revision, []), lambda m: (m.fingerprint.schema, m.fingerprint.table)
        )
        for m in merges:
            merge(conn, self._hasher, self.store, m)
            m.report.verified = verify_table(conn, self._hasher, m)
            if not self.result.dry_run:  # setval is not undone by a rollback: never in a dry run
                advance_sequences(conn, m.fingerprint.schema, m.fingerprint.table)
            self.result.tables.append(m.report)
            r = m.report
            if m.deferred_rows is not None:
                self.deferred[m.number] = r
                self._deferred_columns.append((m.fingerprint.schema, m.fingerprint.table, m.deferred_columns))
                if self.result.dry_run:  # what the batches would put back (rows written meanwhile: kept)
                    r.restored_rows = m.deferred_rows
                self.notify(f"{r.table}: {m.deferred_rows:,} row(s) to put back in batches after the commit")
            self.notify(
                f"{r.table} after the downgrade of {step.revision}: {r.restored_rows:,} restored, "
                f"{r.reinserted_rows:,} re-inserted, {r.kept_rows:,} kept, {r.conflicts:,} conflict(s)"
                + ("" if r.verified else ", NOT verified")
            )
        if self.rollback_run_id is not None:
            record_applied_step(
                connection, self.rollback_run_id, step.revision, step.phase, started_at, attempt
            )
        self.notify(f"downgrade {step.revision} applied" + (f": {step.doc}" if step.doc else ""))
        if step.revision == self.plan.revisions[-1]:
            self._finish(conn)

    def _finish(self, conn: psycopg.Connection) -> None:
        oldest = self.plan.oldest
        recorded = run_schema(conn, oldest.id)
        if recorded is None:
            self.result.schema_matches = None
            self.notify(f"No schema was recorded before run {oldest.id}: it cannot be compared")
        else:
            schema, name = self.version_table()
            search_path = conn.execute("SELECT current_setting('search_path')").fetchone()
            now = capture_schema(conn, VersionTable(name, schema))
            # capture_schema pins search_path with SET LOCAL, which would outlive its savepoint.
            conn.execute(
                "SELECT set_config('search_path', %s, true)", (search_path[0] if search_path else "",)
            )
            differences = diff_schemas(recorded.schema, now)
            self.result.schema_matches = not differences
            self.result.schema_differences = [d.to_dict() for d in differences]
        check_still_fillable(conn, self._deferred_columns)
        if self.rollback_run_id is not None:
            if self.deferred:
                record_rollback_report(conn, self.rollback_run_id, self.result.to_dict())
            mark_reverted(conn, self.rollback_run_id, self.plan.run.id)
            for run in self.plan.runs[1:]:
                _mark_also_reverted(conn, self.rollback_run_id, run.id)
        if self.result.dry_run:
            raise DryRunFinished("dry run: rolled back")

    def step_failed(
        self, step: PlannedStep, started_at: datetime, attempt: int, error: BaseException
    ) -> None:
        from dbrollback.api import error_text

        if self.rollback_run_id is not None:
            self.journal.record_failed_step(
                self.rollback_run_id, step.revision, step.phase, started_at, attempt, error_text(error)
            )

    def retrying(self, step: PlannedStep, attempt: int, delay: float) -> None:  # single transaction: never
        pass


def _mark_also_reverted(conn: psycopg.Connection, rollback_run_id: int, reverted_run_id: int) -> None:
    """A journal run per further run reverted (a run reverts at most one run), a copy of the
    rollback's own, inserted in the rollback's transaction so it commits if and only if it does."""
    conn.execute(
        """INSERT INTO dbrollback.runs (command, direction, status, started_at, finished_at, actor, os_user,
               host, pid, backend_pid, tool_version, command_line, target, from_revisions,
               planned_revisions, to_revisions, reverts_run_id)
           SELECT command, direction, 'succeeded', started_at, clock_timestamp(), actor, os_user, host, pid,
                  backend_pid, tool_version, command_line, target, from_revisions, planned_revisions,
                  (SELECT from_revisions FROM dbrollback.runs WHERE id = %s), %s
           FROM dbrollback.runs WHERE id = %s""",
        (reverted_run_id, reverted_run_id, rollback_run_id),
    )
