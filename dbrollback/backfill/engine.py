"""Backfills: an UPDATE of a whole table, run as short keyset batches that survive kill -9.

:func:`create_backfill` checks the SET/WHERE text (one UPDATE, see sqlcheck), finds the key to walk
by (keyset) and lets the server judge the statement, then records a row in dbrollback.backfills. It
runs inside the caller's transaction (an Alembic revision's): savepoints only, never a commit.

:func:`run_backfill` walks the table in key order on an autocommit connection, one transaction per
batch: find the key of the n-th row after the last position, UPDATE the rows between, and record
the new position, the counts and the batch size in dbrollback.backfills, all in that transaction.
A committed batch is therefore never redone, and one cut short (kill -9, Ctrl-C, a lost connection,
an error) is rolled back whole and redone once by the next run. Rows inserted above the position
while it runs are covered; rows inserted below it are not (the writer or a trigger must fill those:
expand's dual-write triggers do). The walk ends when no key is left after the position.

Per batch: ``lock_timeout`` (a timeout or deadlock rolls the batch back, waits with jitter, halves
the batch and retries, a bounded number of times, then stops resumable) and a generous
``statement_timeout``. Between batches the size adapts towards `target_batch_ms`, and the
throttle waits for standbys that lag and for sessions waiting on the table's locks (see throttle).
A session advisory lock per backfill keeps two runs of one backfill apart.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from dbrollback.backfill.keyset import (
    BatchStatements,
    check_on_server,
    current_key_types,
    estimated_rows,
    find_key,
    label,
    relation_oids,
    table_oid,
)
from dbrollback.backfill.sqlcheck import check_update_pieces
from dbrollback.backfill.throttle import Throttle
from dbrollback.catalog.journal import os_user
from dbrollback.catalog.schema import ensure_catalog
from dbrollback.errors import ConfigError, LockHeld, MigrationFailed, RefusedForSafety
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.snapshot.names import QualifiedName
from dbrollback.urls import redact

# Session advisory locks (two int4 keys): 0x64626266 is "dbbf", the second key the backfill's id.
# Other dbrollback locks use the "dbrl" space, so none of them collide.
LOCK_SPACE = 0x64626266
UNFINISHED = ("pending", "failed")

_COLUMNS = (
    "id, table_schema, table_name, set_sql, where_sql, key_columns, key_types, last_key, rows_updated, "
    "rows_scanned, batches, batch_rows, status, error, actor, created_at, updated_at, finished_at"
)

# The text form of key values must read back the same in any later session: these output settings
# are pinned while keys are read (ISO input is understood whatever DateStyle says).
_TEXT_SETTINGS = (("DateStyle", "ISO"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"))


def _quiet(_: str) -> None:
    pass


class _Cancelled(Exception):
    """The backfill was cancelled (its expansion aborted) while it ran."""


@dataclass
class BackfillOptions:
    """How a run goes. None for a limit switches that throttle off."""

    target_batch_ms: int = 200  # batch size adapts so one batch takes about this long; 0: fixed size
    initial_batch_rows: int = 1000
    max_batch_rows: int = 50_000
    pause_ms: int = 0  # sleep between batches
    lock_timeout_ms: int = 2000  # per batch; 0: wait for locks without limit
    max_replication_lag_bytes: int | None = 64 * 1024 * 1024
    # Before a batch: more sessions than this waiting for locks on the table -> wait (at most
    # max_lock_wait_ms) so they go first.
    max_lock_waiters: int | None = 0
    max_lock_wait_ms: int = 5000
    lock_retries: int = 10  # per batch, after a lock timeout or deadlock
    statement_timeout_ms: int | None = None  # per batch; None: max(60 s, 50 x target_batch_ms)
    max_batches: int | None = None  # stop (resumable, still pending) after this many batches
    # A resumed backfill starts at the batch size it had reached, not at initial_batch_rows.
    resume_at_saved_batch_rows: bool = True

    def check(self) -> None:
        for name in ("target_batch_ms", "pause_ms", "lock_timeout_ms", "max_lock_wait_ms", "lock_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"backfill option {name} must not be negative")
        for name in ("initial_batch_rows", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"backfill option {name} must be at least 1")
        for name in ("max_replication_lag_bytes", "max_lock_waiters", "statement_timeout_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"backfill option {name} must not be negative")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError("backfill option max_batches must be at least 1")

    @property
    def statement_timeout(self) -> int:
        if self.statement_timeout_ms is not None:
            return self.statement_timeout_ms
        return max(60_000, 50 * self.target_batch_ms)


@dataclass
class BackfillRecord:
    """A row of dbrollback.backfills."""

    id: int
    table_schema: str
    table_name: str
    set_sql: str
    where_sql: str | None
    key_columns: list[str]
    key_types: list[str]
    last_key: list[str] | None
    rows_updated: int
    rows_scanned: int
    batches: int
    batch_rows: int | None
    status: str
    error: str | None
    actor: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def table(self) -> QualifiedName:
        return (self.table_schema, self.table_name)

    @property
    def label(self) -> str:
        return label(self.table)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.label,
            "set": self.set_sql,
            "where": self.where_sql,
            "key_columns": self.key_columns,
            "last_key": self.last_key,
            "status": self.status,
            "rows_updated": self.rows_updated,
            "rows_scanned": self.rows_scanned,
            "batches": self.batches,
            "batch_rows": self.batch_rows,
            "error": self.error,
            "actor": self.actor,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


@dataclass
class BackfillResult:
    """One run of a backfill. Counts are this run's; `total_*` the backfill's since it began."""

    id: int
    table: str
    status: str  # done, or pending when stopped by max_batches
    rows_updated: int = 0
    rows_scanned: int = 0
    batches: int = 0
    duration_s: float = 0.0
    batch_rows: int | None = None  # the size of the last batch
    throttled_s: float = 0.0  # waited for standbys and lock waiters
    lock_retries: int = 0
    resumed: bool = False  # started from a saved position
    total_rows_updated: int = 0
    total_batches: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows_scanned / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.table,
            "status": self.status,
            "rows_updated": self.rows_updated,
            "rows_scanned": self.rows_scanned,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "batch_rows": self.batch_rows,
            "throttled_s": round(self.throttled_s, 3),
            "lock_retries": self.lock_retries,
            "resumed": self.resumed,
            "total_rows_updated": self.total_rows_updated,
            "total_batches": self.total_batches,
        }


@dataclass
class BackfillPreview:
    """A dry run: what a backfill would walk and update, nothing recorded or changed."""

    table: str
    set_sql: str
    where_sql: str | None
    key_columns: list[str]
    key_types: list[str]
    rows_matching: int  # rows the UPDATE would change as things stand
    rows_estimate: int | None  # rows in the table, from pg_class.reltuples

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "table": self.table,
            "set": self.set_sql,
            "where": self.where_sql,
            "key_columns": self.key_columns,
            "key_types": self.key_types,
            "rows_matching": self.rows_matching,
            "rows_estimate": self.rows_estimate,
        }


# -- records ------------------------------------------------------------------------------------


def _catalog_has_backfills(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('dbrollback.backfills') IS NOT NULL").fetchone()
    return bool(row and row[0])


def get_backfill(conn: psycopg.Connection, backfill_id: int) -> BackfillRecord | None:
    if not _catalog_has_backfills(conn):
        return None
    query = f"SELECT {_COLUMNS} FROM dbrollback.backfills WHERE id = %s"
    row = conn.execute(query, (backfill_id,), binary=True).fetchone()
    return BackfillRecord(*row) if row else None


def unfinished_backfills(conn: psycopg.Connection) -> list[BackfillRecord]:
    """Pending and failed backfills, oldest first."""
    return list_backfills(conn, unfinished_only=True)


def list_backfills(conn: psycopg.Connection, *, unfinished_only: bool = False) -> list[BackfillRecord]:
    # Binary results: psycopg cannot parse timestamps in every DateStyle a session may have.
    if not _catalog_has_backfills(conn):
        return []
    if unfinished_only:
        query = f"SELECT {_COLUMNS} FROM dbrollback.backfills WHERE status = ANY(%s) ORDER BY id"
        rows = conn.execute(query, (list(UNFINISHED),), binary=True).fetchall()
    else:
        query = f"SELECT {_COLUMNS} FROM dbrollback.backfills ORDER BY id"
        rows = conn.execute(query, binary=True).fetchall()
    return [BackfillRecord(*r) for r in rows]


# -- creating -----------------------------------------------------------------------------------


def _prepare(
    conn: psycopg.Connection, table: QualifiedName, set_sql: str, where_sql: str | None
) -> BatchStatements:
    """Every check a backfill must pass; in the caller's transaction (statements in savepoints)."""
    assigned = check_update_pieces(set_sql, where_sql)
    oid = table_oid(conn, table)
    key, types = find_key(conn, table, oid)
    moved = [c for c in assigned if c in key]
    if moved:
        raise ConfigError(
            f"--set assigns the key column(s) {', '.join(moved)} of {label(table)}, which the backfill "
            "walks the table by: rows would move and be visited twice or not at all",
            table=label(table),
        )
    statements = BatchStatements(table, key, types, set_sql, where_sql)
    check_on_server(conn, statements)
    return statements


def create_backfill(
    conn: psycopg.Connection,
    table: QualifiedName,
    set_sql: str,
    where_sql: str | None = None,
    *,
    actor: str | None = None,
) -> int:
    """Check and record a backfill of `table` (status 'pending'); returns its id.

    Works inside the caller's open transaction (an Alembic revision's): only savepoints, never a
    commit, so it is recorded when that transaction commits. Refused (exit 3) for a table without
    a primary key or unique NOT NULL key; ConfigError (exit 2) for a missing table or SET/WHERE
    text that is not one valid UPDATE of it.
    """
    with conn.transaction():
        statements = _prepare(conn, table, set_sql, where_sql)
        ensure_catalog(conn)
        row = conn.execute(
            """INSERT INTO dbrollback.backfills
                   (table_schema, table_name, set_sql, where_sql, key_columns, key_types, actor)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (table[0], table[1], set_sql, where_sql, list(statements.key), list(statements.types),
             actor or os_user()),
        ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def preview_backfill(
    conn: psycopg.Connection, table: QualifiedName, set_sql: str, where_sql: str | None = None
) -> BackfillPreview:
    """The checks of create_backfill and a count of the rows it would update; nothing changes."""
    with conn.transaction(force_rollback=True):
        statements = _prepare(conn, table, set_sql, where_sql)
        row = conn.execute(statements.matching()).fetchone()
        estimate = estimated_rows(conn, table_oid(conn, table))
    return BackfillPreview(
        label(table),
        set_sql,
        where_sql,
        list(statements.key),
        list(statements.types),
        int(row[0]) if row else 0,
        estimate,
    )


# -- running ------------------------------------------------------------------------------------


def _try_lock(conn: psycopg.Connection, backfill_id: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_SPACE, _lock_key(backfill_id))).fetchone()
    return bool(row and row[0])


def _lock_key(backfill_id: int) -> int:
    return backfill_id & 0x7FFFFFFF


def lock_holder_pid(conn: psycopg.Connection, backfill_id: int) -> int | None:
    row = conn.execute(
        """SELECT pid FROM pg_catalog.pg_locks
           WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s AND objid = %s
             AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())""",
        (LOCK_SPACE, _lock_key(backfill_id)),
    ).fetchone()
    return int(row[0]) if row else None


def run_backfill(
    conn: psycopg.Connection,
    backfill_id: int,
    options: BackfillOptions | None = None,
    *,
    progress: ProgressReporter = SILENT,
    notify: Callable[[str], None] = _quiet,
) -> BackfillResult:
    """Run backfill `backfill_id` from its saved position until it is done (or max_batches).

    `conn` must be in autocommit mode and not in a transaction: each batch commits on its own.
    LockHeld (exit 3) when another session runs this backfill; MigrationFailed (exit 4, field
    resumable) when a batch failed (status 'failed') or kept hitting locks (still 'pending'): what
    committed stays, and running it again goes on from there.
    """
    options = options or BackfillOptions()
    options.check()
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        raise ConfigError(
            "A backfill runs its batches in transactions of their own: it needs an autocommit connection "
            "outside any transaction (in a migration: inside op.get_context().autocommit_block())"
        )
    record = get_backfill(conn, backfill_id)
    if record is None:
        raise ConfigError(f"No backfill {backfill_id}", backfill_id=backfill_id)
    if not _try_lock(conn, backfill_id):
        pid = lock_holder_pid(conn, backfill_id)
        raise LockHeld(
            f"Backfill {backfill_id} ({record.label}) is already running in another session"
            + (f" (server backend pid {pid})" if pid else ""),
            backfill_id=backfill_id,
            backend_pid=pid,
        )
    try:
        record = get_backfill(conn, backfill_id)  # as it is now that no one else runs it
        assert record is not None
        return _Run(conn, record, options, progress, notify).run()
    finally:
        # A lost connection has released the session's lock already.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, _lock_key(backfill_id)))


def _error_text(exc: BaseException) -> str:
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    text = (primary or str(exc)).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


@dataclass
class _Batch:
    scanned: int
    updated: int
    finished: bool


# The dual-write (or fill) trigger of the expansion a backfill belongs to does nothing for the
# backfill's own rows (it sets the new columns to exactly what the trigger would compute): the
# trigger's WHEN skips it where this transaction-local setting names it, saving its per-row cost.
SKIP_TRIGGER_SETTING = "dbrollback.backfilling"


def _expansion_trigger(conn: psycopg.Connection, backfill_id: int) -> str | None:
    """The trigger of the open expansion the backfill belongs to (None: it belongs to none, or this
    role may not read the expansions; the trigger then simply runs for the backfill's rows too)."""
    try:
        row = conn.execute(
            """SELECT spec->>'trigger' FROM dbrollback.expansions
               WHERE backfill_id = %s AND status = 'open'""",
            (backfill_id,),
        ).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):
        return None
    return str(row[0]) if row and row[0] else None


class _Run:
    def __init__(
        self,
        conn: psycopg.Connection,
        record: BackfillRecord,
        options: BackfillOptions,
        progress: ProgressReporter,
        notify: Callable[[str], None],
    ) -> None:
        self.conn = conn
        self.record = record
        self.options = options
        self.progress = progress
        self.notify = notify
        self.name = f"Backfill {record.id} ({record.label})"
        self.last: list[str] | None = record.last_key
        self.own_trigger = _expansion_trigger(conn, record.id)
        self.result = BackfillResult(
            record.id,
            record.label,
            record.status,
            resumed=record.last_key is not None or record.batches > 0,
            total_rows_updated=record.rows_updated,
            total_batches=record.batches,
            batch_rows=record.batch_rows,
        )
        self._user_text: list[tuple[str, str]] = []  # settings to pin while reading keys, as they were

    def run(self) -> BackfillResult:
        started = time.monotonic()
        try:
            return self._run()
        finally:
            self.result.duration_s = time.monotonic() - started

    def _run(self) -> BackfillResult:
        record, options = self.record, self.options
        if record.status == "done":
            self.notify(f"{self.name} is already done")
            return self.result
        if record.status == "cancelled":
            raise RefusedForSafety(f"{self.name} was cancelled; it does not run again", backfill_id=record.id)
        statements, oid = self._statements()
        if record.status == "failed" or record.error:
            self.conn.execute(
                "UPDATE dbrollback.backfills SET status = 'pending', error = NULL, "
                "updated_at = clock_timestamp() WHERE id = %s",
                (record.id,),
            )
        if self.result.resumed:
            self.notify(
                f"{self.name}: resuming after {record.rows_scanned:,} rows ({record.batches:,} batches done)"
            )
        size = options.initial_batch_rows
        if self.result.resumed and record.batch_rows and options.resume_at_saved_batch_rows:
            size = record.batch_rows
        size = max(1, min(size, max(options.max_batch_rows, options.initial_batch_rows)))
        relations = relation_oids(self.conn, oid)
        throttle = Throttle(
            self.conn,
            self.name,
            relations,
            max_lag_bytes=options.max_replication_lag_bytes,
            max_lock_waiters=options.max_lock_waiters,
            max_lock_wait_s=options.max_lock_wait_ms / 1000,
            notify=self.notify,
        )
        estimate = estimated_rows(self.conn, oid)
        total = None if estimate is None else max(estimate - record.rows_scanned, 0)
        self._user_text = self._text_settings()
        task = self.progress.task(f"backfill {record.label}", total, unit="rows")
        try:
            while True:
                if options.max_batches is not None and self.result.batches >= options.max_batches:
                    self.notify(
                        f"{self.name}: stopped after {self.result.batches} batch(es) (max_batches); "
                        "still pending"
                    )
                    break
                if self.result.batches and options.pause_ms:
                    time.sleep(options.pause_ms / 1000)
                try:
                    throttle.wait()
                except psycopg.Error as exc:
                    why = f"reading replication lag and lock waiters failed: {_error_text(exc)}"
                    raise self._fail(why, resumable=True) from None
                self.result.throttled_s = throttle.waited_s
                try:
                    batch, elapsed, size = self._batch_with_retries(statements, size)
                except _Cancelled:
                    self.notify(f"{self.name}: cancelled (its expansion was aborted); stopped")
                    self.result.status = "cancelled"
                    return self.result
                task.advance(batch.scanned)
                if batch.finished:
                    self.result.status = "done"
                    break
                size = self._next_size(size, elapsed)
        finally:
            task.finish()
        if self.result.status != "done":
            self.result.status = "pending"
        return self.result

    def _statements(self) -> tuple[BatchStatements, int]:
        """The batch SQL with the key's types as they are now (as this session names them)."""
        record = self.record
        try:
            oid = table_oid(self.conn, record.table)
        except ConfigError:
            raise self._fail(f"the table {record.label} no longer exists", resumable=False) from None
        types = current_key_types(self.conn, oid, record.key_columns)
        missing = [c for c in record.key_columns if c not in types]
        if missing:
            raise self._fail(
                f"the key column(s) {', '.join(missing)} of {record.label} no longer exist", resumable=False
            )
        now = [types[c] for c in record.key_columns]
        if now != record.key_types:
            self.notify(f"{self.name}: key types changed from {record.key_types} to {now}")
        statements = BatchStatements(record.table, record.key_columns, now, record.set_sql, record.where_sql)
        return statements, oid

    def _text_settings(self) -> list[tuple[str, str]]:
        """The pinned output settings this session does not already have."""
        wanted: list[tuple[str, str]] = []
        for name, value in _TEXT_SETTINGS:
            row = self.conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            current = str(row[0]) if row else ""
            if name == "DateStyle" and current.upper().startswith("ISO"):
                continue
            if name == "extra_float_digits" and current.lstrip("-").isdigit() and int(current) >= 1:
                continue
            if name == "IntervalStyle" and current == value:
                continue
            wanted.append((name, current))
        return wanted

    def _set_text_settings(self, pinned: bool) -> None:
        for name, before in self._user_text:
            value = dict(_TEXT_SETTINGS)[name] if pinned else before
            self.conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))

    def _batch(self, statements: BatchStatements, size: int) -> _Batch:
        conn, options = self.conn, self.options
        with conn.transaction():
            conn.execute(
                "SELECT pg_catalog.set_config('lock_timeout', %s, true), "
                "pg_catalog.set_config('statement_timeout', %s, true), "
                "pg_catalog.set_config(%s, %s, true)",
                (f"{options.lock_timeout_ms}ms", f"{options.statement_timeout}ms",
                 SKIP_TRIGGER_SETTING, self.own_trigger or ""),
            )  # fmt: skip
            self._set_text_settings(pinned=True)
            row = conn.execute(statements.upper(self.last, size)).fetchone()
            upper: list[str] | None = [str(v) for v in row] if row is not None else None
            if upper is None:
                counted = conn.execute(statements.count(self.last)).fetchone()
                scanned = int(counted[0]) if counted else 0
            else:
                scanned = size
            self._set_text_settings(pinned=False)
            updated = conn.execute(statements.update(self.last, upper)).rowcount
            cur = conn.execute(
                """UPDATE dbrollback.backfills SET
                       last_key = coalesce(%s, last_key), rows_updated = rows_updated + %s,
                       rows_scanned = rows_scanned + %s, batches = batches + 1, batch_rows = %s,
                       status = CASE WHEN %s THEN 'done' ELSE status END,
                       finished_at = CASE WHEN %s THEN clock_timestamp() END,
                       error = NULL, updated_at = clock_timestamp()
                   WHERE id = %s AND status <> 'cancelled'""",
                (upper, updated, scanned, size, upper is None, upper is None, self.record.id),
            )
            if cur.rowcount == 0:  # aborted meanwhile (dbrollback abort): this batch is undone
                raise _Cancelled()
        if upper is not None:
            self.last = upper
        self.result.rows_updated += updated
        self.result.rows_scanned += scanned
        self.result.batches += 1
        self.result.batch_rows = size
        self.result.total_rows_updated += updated
        self.result.total_batches += 1
        return _Batch(scanned, updated, upper is None)

    def _batch_with_retries(self, statements: BatchStatements, size: int) -> tuple[_Batch, float, int]:
        """One batch, retried smaller after lock timeouts; (batch, its seconds, its size)."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                return self._batch(statements, size), time.monotonic() - started, size
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                    psycopg.errors.QueryCanceled) as exc:  # fmt: skip
                if isinstance(exc, psycopg.errors.QueryCanceled) and "statement timeout" not in str(exc):
                    raise self._fail(f"a batch was cancelled: {_error_text(exc)}", resumable=True) from None
                what = {
                    psycopg.errors.LockNotAvailable: "lock timeout",
                    psycopg.errors.DeadlockDetected: "deadlock",
                }.get(type(exc), "statement timeout")
                attempt += 1
                self.result.lock_retries += 1
                if attempt > self.options.lock_retries:
                    raise self._stop_pending(
                        f"a batch hit a {what} {attempt} time(s) in a row (last at {size:,} rows)"
                    ) from None
                delay = min(0.05 * 2**attempt, 5.0) * random.uniform(0.5, 1.5)
                size = max(1, size // 2)
                self.notify(f"{self.name}: {what}; retrying the batch with {size:,} rows in {delay:.1f} s")
                time.sleep(delay)
            except psycopg.Error as exc:
                if self._cancelled():  # the expansion was aborted under it (its column is gone)
                    raise _Cancelled() from None
                raise self._fail(
                    f"a batch failed and was rolled back: {_error_text(exc)}", resumable=True
                ) from None

    def _cancelled(self) -> bool:
        with contextlib.suppress(psycopg.Error):
            row = self.conn.execute(
                "SELECT status FROM dbrollback.backfills WHERE id = %s", (self.record.id,)
            ).fetchone()
            return bool(row and row[0] == "cancelled")
        return False

    def _next_size(self, size: int, elapsed: float) -> int:
        options = self.options
        if options.target_batch_ms <= 0:
            return max(1, min(options.initial_batch_rows, options.max_batch_rows))
        proposed = int(size * (options.target_batch_ms / 1000) / max(elapsed, 0.001))
        proposed = min(max(proposed, size // 2), size * 2)
        return max(1, min(proposed, options.max_batch_rows))

    def _done_so_far(self) -> str:
        scanned = self.record.rows_scanned + self.result.rows_scanned
        return f"{scanned:,} rows walked so far stay done"

    def _resume_hint(self) -> str:
        return f"resume with `dbrollback backfill --resume --id {self.record.id}`"

    def _fail(self, why: str, *, resumable: bool) -> MigrationFailed:
        """Mark the backfill failed (best effort: the connection may be gone) and say so."""
        message = f"{self.name}: {why}; status 'failed', {self._done_so_far()}"
        try:
            self.conn.execute(
                "UPDATE dbrollback.backfills SET status = 'failed', error = %s, "
                "updated_at = clock_timestamp() WHERE id = %s AND status <> 'cancelled'",
                (why, self.record.id),
            )
        except psycopg.Error:
            message = f"{self.name}: {why}; {self._done_so_far()}"
        if resumable:
            message += f". Fix the cause, then {self._resume_hint()}"
        self.result.status = "failed"
        return MigrationFailed(
            message, backfill_id=self.record.id, table=self.record.label, resumable=resumable
        )

    def _stop_pending(self, why: str) -> MigrationFailed:
        """Stop with the backfill still pending (nothing is wrong with it), the reason recorded."""
        with contextlib.suppress(psycopg.Error):
            self.conn.execute(
                "UPDATE dbrollback.backfills SET error = %s, updated_at = clock_timestamp() WHERE id = %s",
                (why, self.record.id),
            )
        self.result.status = "pending"
        return MigrationFailed(
            f"{self.name}: {why}; it stays pending, {self._done_so_far()}: {self._resume_hint()}",
            backfill_id=self.record.id,
            table=self.record.label,
            resumable=True,
        )
