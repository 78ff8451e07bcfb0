"""Rolling forward again: values a rollback saved before its downgrade dropped their columns come
back when `upgrade` re-applies the revision (see docs/rollback.md, "Rolling forward again").

The rollback records what it saved in `dbrollback.saved_values`, in its own transaction. The
upgrade puts the values back inside the re-applied revision's transaction, right after its code
ran, and marks the record consumed in that same transaction: restored (or skipped) at most once,
and only if the revision commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import Connection

from dbrollback.alembic_bridge.runner import PlannedStep
from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.database import Notify
from dbrollback.errors import DbrollbackError, RefusedForSafety, SnapshotCorrupt
from dbrollback.rollback.execute import RollbackHooks
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore

STAGE_PREFIX = f"{OBJECT_PREFIX}rf_"


@dataclass(frozen=True)
class SavedValues:
    """Values of `columns` in `schema.table` (rows identified by `key_columns`), saved in snapshot
    `snapshot_id` by rollback run `rollback_run_id` before the downgrade of `revision` dropped them."""

    snapshot_id: str
    revision: str
    schema: str
    table: str
    columns: list[str]
    key_columns: list[str]
    id: int | None = None
    rollback_run_id: int | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


# -- the rollback side ------------------------------------------------------------------------------


def record_saved_values(conn: psycopg.Connection, rollback_run_id: int, saved: list[SavedValues]) -> None:
    for s in saved:
        conn.execute(
            """INSERT INTO dbrollback.saved_values
                   (snapshot_id, rollback_run_id, revision, schema_name, table_name, columns, key_columns)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (s.snapshot_id, rollback_run_id, s.revision, s.schema, s.table, s.columns, s.key_columns),
        )


class RecordingRollbackHooks(RollbackHooks):
    """The rollback's hooks, also recording what was saved, in the rollback's own transaction
    (after the last downgrade, before its COMMIT): recorded if and only if the rollback commits."""

    saved_values: list[SavedValues]

    def step_applied(
        self, connection: Connection, step: PlannedStep, started_at: datetime, attempt: int
    ) -> None:
        super().step_applied(connection, step, started_at, attempt)
        last = step.revision == self.plan.revisions[-1]
        saved = getattr(self, "saved_values", [])
        if last and saved and not self.result.dry_run and self.rollback_run_id is not None:
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            record_saved_values(driver, self.rollback_run_id, saved)


# -- the upgrade side -------------------------------------------------------------------------------


def pending_saved_values(conn: psycopg.Connection, revisions: list[str]) -> list[SavedValues]:
    """Records not consumed yet for any of `revisions`, oldest first (a newer save wins)."""
    rows = conn.execute(
        """SELECT id, snapshot_id, rollback_run_id, revision, schema_name, table_name, columns, key_columns
           FROM dbrollback.saved_values WHERE outcome IS NULL AND revision = ANY(%s) ORDER BY id""",
        (revisions,),
    ).fetchall()
    return [
        SavedValues(r[1], r[3], r[4], r[5], list(r[6]), list(r[7]), id=int(r[0]), rollback_run_id=int(r[2]))
        for r in rows
    ]


def _hint(s: SavedValues) -> str:
    return (
        f"put them back by hand after the upgrade (`dbrollback restore --snapshot {s.snapshot_id} "
        f"--tables {s.qualified} --into-schema SCHEMA` loads that snapshot side by side, to update "
        "those columns from it), or run `dbrollback upgrade --skip-saved-values` to apply the revisions "
        "without them"
    )


def check_saved_snapshots(
    conn: psycopg.Connection, store: SnapshotStore, pending: list[SavedValues]
) -> dict[str, SnapshotManifest]:
    """Every snapshot the pending records need, read and verified (sha256 of every file) before
    anything runs; a missing or damaged one refuses the upgrade (exit 3), naming it."""
    manifests: dict[str, SnapshotManifest] = {}
    for s in pending:
        if s.snapshot_id in manifests:
            problem = _table_problem(manifests[s.snapshot_id], s)
        else:
            problem = _snapshot_problem(conn, store, s, manifests)
        if problem:
            raise RefusedForSafety(
                f"Rollback run {s.rollback_run_id} saved the values of {s.qualified} "
                f"({', '.join(s.columns)}) that the downgrade of {s.revision} dropped in snapshot "
                f"{s.snapshot_id}, which cannot be used: {problem}. Upgrading would not bring them back; "
                f"{_hint(s)}. Nothing was changed.",
                snapshot_id=s.snapshot_id,
                revision=s.revision,
                table=s.qualified,
                columns=s.columns,
            )
    return manifests


def _snapshot_problem(
    conn: psycopg.Connection, store: SnapshotStore, s: SavedValues, manifests: dict[str, SnapshotManifest]
) -> str | None:
    query = "SELECT deleted_at FROM dbrollback.snapshots WHERE id = %s"
    row = conn.execute(query, (s.snapshot_id,)).fetchone()
    if row is not None and row[0] is not None:
        return f"it was pruned on {row[0]:%Y-%m-%d %H:%M}"
    try:
        manifest = store.load(s.snapshot_id)
        problems = store.verify(s.snapshot_id)
    except DbrollbackError as exc:
        return exc.message
    if problems:
        return "; ".join(problems)
    manifests[s.snapshot_id] = manifest
    return _table_problem(manifest, s)


def _table_problem(manifest: SnapshotManifest, s: SavedValues) -> str | None:
    tm = _table_of(manifest, s)
    if tm is None:
        return f"it holds no table {s.qualified}"
    have = set(tm.copy_columns)
    lacking = [c for c in [*s.key_columns, *s.columns] if c not in have]
    return f"it lacks column(s) {', '.join(lacking)}" if lacking else None


def _table_of(manifest: SnapshotManifest, s: SavedValues) -> TableManifest | None:
    return next((t for t in manifest.tables if (t.schema_name, t.table_name) == (s.schema, s.table)), None)


@dataclass
class RollForward:
    """What an upgrade run puts back, revision by revision (one per re-applied revision's transaction)."""

    store: SnapshotStore | None
    pending: list[SavedValues]
    manifests: dict[str, SnapshotManifest]
    run_id: int
    notify: Notify
    skip: bool = False
    # record id -> (revision whose transaction consumed it, report entry or None when skipped)
    consumed: dict[int, tuple[str, dict[str, Any] | None]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    _number: int = 0

    def forget(self, revision: str) -> None:
        """A revision about to be (re)tried: what an earlier attempt of it did was rolled back."""
        self.consumed = {k: v for k, v in self.consumed.items() if v[0] != revision}
        self.applied = [r for r in self.applied if r != revision]

    def after_revision(self, conn: psycopg.Connection, revision: str) -> None:
        """In `revision`'s transaction, after its code: put back every pending record of a revision
        applied so far in this run whose columns exist again (a column may come back in a later
        revision than the one whose downgrade dropped it)."""
        from dbrollback.rollback.sqlparts import live_columns

        self.applied.append(revision)
        for s in self.pending:
            assert s.id is not None
            if s.id in self.consumed or s.revision not in self.applied:
                continue
            if self.skip:
                _mark(conn, s, "skipped", self.run_id, None, None)
                self.consumed[s.id] = (revision, None)
                self.notify(
                    f"Values of {s.qualified} ({', '.join(s.columns)}) saved in snapshot {s.snapshot_id} "
                    "were not restored (--skip-saved-values)"
                )
                continue
            tm = _table_of(self.manifests[s.snapshot_id], s)
            assert tm is not None
            if not _columns_back(live_columns(conn, s.schema, s.table), tm, s):
                continue
            self._number += 1
            assert self.store is not None  # only None with --skip-saved-values
            restored, missing = restore_saved_values(conn, self.store, s, tm, self._number)
            _mark(conn, s, "restored", self.run_id, restored, missing)
            entry = {
                "table": s.qualified,
                "columns": s.columns,
                "rows": restored,
                "rows_deleted_since": missing,
                "from_snapshot": s.snapshot_id,
                "revision": revision,
            }
            self.consumed[s.id] = (revision, entry)
            self.notify(
                f"Values of {s.qualified} ({', '.join(s.columns)}) saved by rollback run {s.rollback_run_id} "
                f"put back from snapshot {s.snapshot_id}: {restored:,} row(s)"
                + (f", {missing:,} row(s) deleted since skipped" if missing else "")
            )

    @property
    def restored(self) -> list[dict[str, Any]]:
        return [entry for _, entry in self.consumed.values() if entry is not None]

    def left_behind(self) -> list[str]:
        """Warnings for records of revisions this run applied whose columns never came back."""
        return [
            f"Values of {s.qualified} ({', '.join(s.columns)}) saved in snapshot {s.snapshot_id} were not "
            f"put back: after {s.revision} the table does not have those columns with the saved types; "
            f"{_hint(s)}"
            for s in self.pending
            if s.id not in self.consumed and s.revision in self.applied
        ]


def _columns_back(live: Any, tm: TableManifest, s: SavedValues) -> bool:
    if live is None:
        return False
    saved_types = {c.name: c.type for c in tm.columns}
    for name in [*s.key_columns, *s.columns]:
        column = live.get(name)
        if column is None or column.type != saved_types.get(name):
            return False
    return not any(live[c].generated for c in s.columns)


def _mark(conn: psycopg.Connection, s: SavedValues, outcome: str, run_id: int, restored: int | None,
          missing: int | None) -> None:  # fmt: skip
    conn.execute(
        """UPDATE dbrollback.saved_values
           SET outcome = %s, restored_by_run_id = %s, restored_at = clock_timestamp(),
               restored_rows = %s, missing_rows = %s
           WHERE id = %s AND outcome IS NULL""",
        (outcome, run_id, restored, missing, s.id),
    )


def restore_saved_values(
    conn: psycopg.Connection, store: SnapshotStore, s: SavedValues, tm: TableManifest, number: int
) -> tuple[int, int]:
    """Stage the saved snapshot in a temp table and set the saved columns back on every row whose
    key still exists; returns (rows that got a value back, rows holding a saved value that were
    deleted since)."""
    stage = f"{STAGE_PREFIX}{number}"
    staged = sql.Identifier("pg_temp", stage)
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
        for c in tm.columns
        if not c.generated
    )
    # One statement over the extended protocol: the type names come from a manifest file.
    with conn.cursor(binary=True) as cur:
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(staged, definition))
    rows = load_table_copy(conn, store, s.snapshot_id, tm, "pg_temp", stage)
    if rows != tm.row_count:
        raise SnapshotCorrupt(
            f"Snapshot {s.snapshot_id}: {s.qualified} loaded {rows} rows, the manifest says {tm.row_count}",
            id=s.snapshot_id,
        )
    conn.execute(sql.SQL("ANALYZE {}").format(staged))
    target = sql.Identifier(s.schema, s.table)
    same_key = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("t", k), sql.Identifier("s", k)) for k in s.key_columns
    )
    # Compared as text: types without an equality operator (json, point) have a text form.
    differs = sql.SQL(" OR ").join(
        sql.SQL("{}::text IS DISTINCT FROM {}::text").format(sql.Identifier("t", c), sql.Identifier("s", c))
        for c in s.columns
    )
    update = sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE {} AND ({})").format(
        target,
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("s", c)) for c in s.columns
        ),
        staged,
        same_key,
        differs,
    )
    restored = max(conn.execute(update).rowcount, 0)
    holding = sql.SQL(" OR ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier("s", c)) for c in s.columns
    )
    missing_query = sql.SQL(
        "SELECT count(*) FROM {} AS s WHERE ({}) AND NOT EXISTS (SELECT FROM {} AS t WHERE {})"
    )
    row = conn.execute(missing_query.format(staged, holding, target, same_key)).fetchone()
    conn.execute(sql.SQL("DROP TABLE {}").format(staged))
    return restored, int(row[0]) if row else 0
