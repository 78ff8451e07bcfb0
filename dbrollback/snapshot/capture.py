"""Capture tables into a snapshot store: one consistent point in time, streamed, compressed.

All tables are read in ONE transaction (REPEATABLE READ, READ ONLY): every COPY and checksum
sees the same MVCC snapshot, so the captured tables are mutually consistent even while other
sessions keep committing. The tables are locked in ACCESS SHARE mode before the snapshot is taken,
so their definitions cannot change (ALTER/DROP/TRUNCATE wait) while they are read; ordinary
INSERT/UPDATE/DELETE by others are not blocked.

The data itself is read by psql processes (from the embedded wheel) that import the transaction's
exported snapshot (``SET TRANSACTION SNAPSHOT``): ``COPY ... TO STDOUT`` over the client protocol,
text format, UTF-8. psql writes the stream at C speed; this process only reads it in 1 MiB blocks,
compresses them with zstd (which releases the GIL, so `jobs` threads really run in parallel) and
writes the store. Memory use does not depend on table size. (Reading COPY through psycopg costs
one Python iteration per row, which made the capture 3x slower; see docs/benchmarks.md.)
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import psycopg
import zstandard
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.conninfo import conninfo_to_dict

from dbrollback import __version__
from dbrollback.catalog.schema import database_identity
from dbrollback.embedded import binary
from dbrollback.errors import SnapshotError, StoreUnavailable
from dbrollback.pgtools import tool_connection
from dbrollback.snapshot.checksum import pin_text_settings, pinned_settings_sql, table_checksum
from dbrollback.snapshot.manifest import ColumnInfo, FileEntry, SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.urls import redact

# Level 1: on COPY text it was both faster and smaller than level 3 here (see docs/benchmarks.md).
ZSTD_LEVEL = 1
COPY_FORMAT: Literal["text"] = "text"
_READ_BLOCK = 1 << 20
NO_PK_NOTE = "no primary key: not split for parallel reads"
SPLIT_MIN_ROWS = 200_000  # smaller tables are read by one connection: splitting costs more than it gains
PARTS_PER_JOB = 2  # more ranges than workers evens out skewed key distributions

_SPLIT_SQL = """
SELECT a.atttypid::regtype::text, c.reltuples
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attrelid = %s AND a.attname = %s
"""
_SPLITTABLE_TYPES = ("smallint", "integer", "bigint")

_TABLE_SQL = """
SELECT c.oid, c.relkind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PK_SQL = """
SELECT a.attname
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""

Progress = Callable[[TableManifest], None]


def new_snapshot_id(now: datetime | None = None) -> str:
    """UTC timestamp plus a short random suffix, e.g. ``20261127T101500Z-3fa2c1``."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def _batched(blocks: Iterable[Buffer], size: int = _READ_BLOCK) -> Iterator[bytes]:
    """Join psycopg's one-block-per-row COPY output into ~1 MiB blocks for the compressor."""
    pending: list[Buffer] = []
    total = 0
    for block in blocks:
        pending.append(block)
        total += len(block)
        if total >= size:
            yield b"".join(pending)
            pending, total = [], 0
    if pending:
        yield b"".join(pending)


def _compressed(blocks: Iterable[Buffer], level: int = ZSTD_LEVEL) -> Iterator[bytes]:
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    for block in blocks:
        out = compressor.compress(block)
        if out:
            yield out
    yield compressor.flush()


def _table_oid(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(_TABLE_SQL, (schema, table)).fetchone()
    if row is None:
        raise SnapshotError(f"Table {schema}.{table} does not exist", schema=schema, table=table)
    oid, relkind = row
    if relkind not in ("r", "p"):
        raise SnapshotError(
            f"{schema}.{table} is not a table (relkind {relkind!r})", schema=schema, table=table
        )
    return int(oid)


def table_columns(conn: psycopg.Connection, oid: int) -> list[ColumnInfo]:
    return [
        ColumnInfo(name=name, type=type_, nullable=not notnull, default=default, generated=generated)
        for name, type_, notnull, default, generated in conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
    ]


def primary_key_columns(conn: psycopg.Connection, oid: int) -> list[str]:
    return [name for (name,) in conn.execute(_PK_SQL, (oid,)).fetchall()]


def copy_out_query(
    schema: str, table: str, columns: list[str], where: sql.Composable | None = None
) -> sql.Composed:
    return sql.SQL("COPY (SELECT {} FROM {}.{}{}) TO STDOUT (FORMAT text, ENCODING 'UTF8')").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(schema),
        sql.Identifier(table),
        sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL(""),
    )


@dataclass
class _Part:
    """One COPY of a table, or of one primary-key range of it, into one file."""

    table_index: int
    name: str
    query: sql.Composed
    entry: FileEntry | None = None
    rows: int = -1
    text: str = ""  # the query rendered for psql
    lock: str = ""  # LOCK of the part's own table, rendered


@dataclass
class _Table:
    schema: str
    table: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    note: str
    parts: list[_Part] = field(default_factory=list)


def capture_tables(
    conn_url: str,
    store: SnapshotStore,
    tables: list[tuple[str, str]],
    *,
    run_id: int | None = None,
    revision: str | None = None,
    label: str | None = None,
    expires_at: datetime | None = None,
    lock_timeout: str = "10s",
    progress: Progress | None = None,
    jobs: int = 1,
    split_min_rows: int = SPLIT_MIN_ROWS,
    on_bytes: Callable[[int], None] | None = None,
) -> SnapshotManifest:
    """Capture `tables` ((schema, table) pairs) at one point in time and publish the snapshot.

    Each table (or, for large tables with a single integer primary key, each key range) is read
    by a psql process that imports the first connection's exported snapshot; `jobs` of them run at
    once, so every byte still comes from one point in time. `progress` is called after each
    table, `on_bytes` with the size of each block read (from worker threads). The manifest is
    published only when every table has been written; on any error nothing is listed.
    """
    if not tables:
        raise SnapshotError("No tables to capture")
    if len(set(tables)) != len(tables):
        raise SnapshotError("A table is listed twice")
    snapshot_id = new_snapshot_id()
    try:
        try:
            snapshot = _capture(conn_url, store, snapshot_id, tables, lock_timeout, progress, jobs,
                                split_min_rows, on_bytes)  # fmt: skip
        except psycopg.errors.InsufficientPrivilege as exc:
            # With row_security off, a table whose policies would hide rows from this role raises
            # instead of silently yielding a partial snapshot.
            raise SnapshotError(
                f"Cannot capture: {exc.diag.message_primary or exc}. The role must be able to read every "
                "row (table owner, BYPASSRLS or superuser) and have SELECT on the table."
            ) from None
        snapshot = snapshot.model_copy(
            update={"run_id": run_id, "revision": revision, "label": label, "expires_at": expires_at}
        )
        store.publish(snapshot)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            store.discard(snapshot_id)  # nothing half-written stays behind
        if isinstance(exc, OSError):  # disk full, permissions, quota...
            raise StoreUnavailable(
                f"Cannot write snapshot {snapshot_id} to {store.location}: {exc.strerror or exc}"
            ) from None
        raise
    return snapshot


def _connect(conn_url: str, purpose: str) -> psycopg.Connection:
    try:
        conn = psycopg.connect(conn_url, application_name=f"dbrollback {__version__} {purpose}")
    except psycopg.Error as exc:
        raise SnapshotError(f"Cannot connect for a snapshot: {redact(str(exc)).strip()}") from None
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def _capture(
    conn_url: str,
    store: SnapshotStore,
    snapshot_id: str,
    tables: list[tuple[str, str]],
    lock_timeout: str,
    progress: Progress | None,
    jobs: int,
    split_min_rows: int,
    on_bytes: Callable[[int], None] | None,
) -> SnapshotManifest:
    with _connect(conn_url, "snapshot") as conn, conn.transaction():
        # Utility statements first: they do not take the transaction snapshot, so the snapshot
        # is taken after the locks are granted and no definition can change under us.
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        conn.execute("SET LOCAL row_security = off")
        pin_text_settings(conn)
        try:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
                )
            )
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise SnapshotError(f"Cannot capture: {exc.diag.message_primary or exc}") from None
        except psycopg.errors.LockNotAvailable:
            raise SnapshotError(
                f"Cannot capture: a table is locked by another session (lock_timeout {lock_timeout})"
            ) from None
        # The first query takes the transaction's snapshot: its time is the snapshot's time.
        first = conn.execute("SELECT statement_timestamp(), current_setting('server_version')").fetchone()
        assert first is not None
        created_at, server_version = first
        database_id = database_identity(conn)
        exported = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert exported is not None
        work = [_describe(conn, number, schema, table, jobs, split_min_rows)
                for number, (schema, table) in enumerate(tables, start=1)]  # fmt: skip
        parts = [part for item in work for part in item.parts]
        for part in parts:  # rendered here: the worker threads do not touch this connection
            part.text = part.query.as_string(conn)
            schema, table = tables[part.table_index]
            part.lock = _lock_nowait(schema, table).as_string(conn)
        # The main transaction waits idle while the readers copy: a database-wide idle timeout
        # must not end it (and with it the exported snapshot) half-way.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        preamble = _session_setup(conn, str(exported[0]), lock_timeout)
        workers = _ParallelCopy(conn_url, preamble, max(1, min(jobs, len(parts))), store, snapshot_id,
                                on_bytes, use_psql=psql_can_reach(conn_url))  # fmt: skip
        workers.start(parts)
        captured: list[TableManifest] = []
        try:
            for index, item in enumerate(work):
                # Runs while the workers copy: the checksum is one more scan of the same snapshot.
                row_count, checksum = table_checksum(conn, item.schema, item.table)
                workers.wait_for(index)
                copied = sum(p.rows for p in item.parts)
                if copied != row_count:
                    raise SnapshotError(
                        f"{item.schema}.{item.table}: COPY returned {copied} rows but the checksum "
                        f"counted {row_count}"
                    )
                manifest = TableManifest(
                    schema_name=item.schema,
                    table_name=item.table,
                    columns=item.columns,
                    primary_key=item.primary_key,
                    row_count=row_count,
                    checksum=checksum,
                    files=[p.entry for p in item.parts if p.entry is not None],
                    note=item.note,
                    copy_format=COPY_FORMAT,
                )
                captured.append(manifest)
                if progress is not None:
                    progress(manifest)
        finally:
            workers.close()
        database = conn.info.dbname
    return SnapshotManifest(
        id=snapshot_id,
        created_at=created_at,
        server_version=str(server_version),
        database_id=database_id,
        database=database,
        tables=captured,
    )


def _describe(conn: psycopg.Connection, number: int, schema: str, table: str, jobs: int,
              split_min_rows: int) -> _Table:  # fmt: skip
    oid = _table_oid(conn, schema, table)
    columns = table_columns(conn, oid)
    copy_columns = [c.name for c in columns if not c.generated]
    if not copy_columns:
        raise SnapshotError(f"{schema}.{table} has no columns to copy", schema=schema, table=table)
    primary_key = primary_key_columns(conn, oid)
    item = _Table(schema, table, columns, primary_key, "" if primary_key else NO_PK_NOTE)
    ranges = _key_ranges(conn, oid, schema, table, primary_key, jobs, split_min_rows)
    if ranges is None:
        item.parts.append(
            _Part(number - 1, f"{number}.copy.zst", copy_out_query(schema, table, copy_columns))
        )
        return item
    key = sql.Identifier(primary_key[0])
    for index, (low, high) in enumerate(ranges, start=1):
        bounds = [sql.SQL("{} >= {}").format(key, sql.Literal(low))]
        if high is not None:
            bounds.append(sql.SQL("{} < {}").format(key, sql.Literal(high)))
        where = sql.SQL(" AND ").join(bounds)
        name = f"{number}.{index:03d}.copy.zst"
        item.parts.append(_Part(number - 1, name, copy_out_query(schema, table, copy_columns, where)))
    return item


def _key_ranges(conn: psycopg.Connection, oid: int, schema: str, table: str, primary_key: list[str],
                jobs: int, split_min_rows: int) -> list[tuple[int, int | None]] | None:  # fmt: skip
    """Equal-width ranges of a single integer primary key, or None when the table is not split."""
    if jobs <= 1 or len(primary_key) != 1:
        return None
    row = conn.execute(_SPLIT_SQL, (oid, primary_key[0])).fetchone()
    if row is None or row[0] not in _SPLITTABLE_TYPES or row[1] < split_min_rows:
        return None
    key = sql.Identifier(primary_key[0])
    bounds = conn.execute(
        sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=key, t=sql.Identifier(schema, table))
    ).fetchone()
    if bounds is None or bounds[0] is None:
        return None
    low, high = int(bounds[0]), int(bounds[1])
    count = min(jobs * PARTS_PER_JOB, max(1, high - low + 1))
    step = (high - low + 1) / count
    edges = [low + round(step * i) for i in range(count)]
    return [(edges[i], edges[i + 1] if i + 1 < count else None) for i in range(count)]


def _lock_nowait(schema: str, table: str) -> sql.Composed:
    # Each reader locks its own table up front, without waiting (as pg_dump's workers do): a DDL
    # queued behind the main connection's lock would otherwise block the reader while we wait for
    # it, a deadlock PostgreSQL cannot see. The main connection holds the locks that matter.
    return sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT").format(sql.Identifier(schema, table))


def _session_setup(conn: psycopg.Connection, exported: str, lock_timeout: str) -> list[str]:
    """Statements each reader runs after BEGIN: join the exported snapshot, pin settings."""
    return [
        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)).as_string(conn),
        "SET LOCAL row_security = off",
        "SET LOCAL statement_timeout = 0",
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)).as_string(conn),
        *(statement.rstrip(";") for statement in pinned_settings_sql(conn)),
    ]


def psql_can_reach(conn_url: str) -> bool:
    """Whether the wheel's psql may carry this connection.

    Its libpq is built without TLS and GSSAPI: over a network it would fail with sslmode=require,
    or, worse, silently connect in cleartext with the default sslmode=prefer. So psql is used only
    for Unix sockets and the loopback interface without TLS demands; anything else is read
    through psycopg (slower: one Python step per row, but encrypted like the user's connection).
    """
    params = conninfo_to_dict(conn_url)
    if (
        params.get("sslmode") in ("require", "verify-ca", "verify-full")
        or params.get("gssencmode") == "require"
    ):
        return False
    if any(key.startswith("ssl") and key != "sslmode" for key in params):
        return False  # client certificates and the like: the user wants TLS
    hosts = str(params.get("host") or os.environ.get("PGHOST") or "").split(",")
    return all(h == "" or h.startswith("/") or h in ("localhost", "127.0.0.1", "::1") for h in hosts)


class _ParallelCopy:
    """`jobs` threads, each running one psql per part; the parts of a table may run at once.

    Each psql joins the main transaction's exported snapshot, so every part is read at the same
    point in time.
    """

    def __init__(self, conn_url: str, setup: list[str], jobs: int, store: SnapshotStore, snapshot_id: str,
                 on_bytes: Callable[[int], None] | None, use_psql: bool) -> None:  # fmt: skip
        self.conn_url, self.use_psql = conn_url, use_psql
        self.conninfo, self.env = tool_connection(conn_url)
        self.setup, self.jobs = setup, jobs
        self.store, self.snapshot_id, self.on_bytes = store, snapshot_id, on_bytes
        self.queue: queue.Queue[_Part | None] = queue.Queue()
        self.pending: dict[int, int] = {}
        self.condition = threading.Condition()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, parts: list[_Part]) -> None:
        for part in parts:
            self.pending[part.table_index] = self.pending.get(part.table_index, 0) + 1
            self.queue.put(part)
        for number in range(self.jobs):
            self.queue.put(None)
            thread = threading.Thread(target=self._work, name=f"dbrollback-copy-{number}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                part = self.queue.get()
                if part is None:
                    break
                self._copy(part)
                with self.condition:
                    self.pending[part.table_index] -= 1
                    self.condition.notify_all()
        except BaseException as exc:
            with self.condition:
                self.error = self.error or exc
                self.stop.set()
                self.condition.notify_all()

    def _copy(self, part: _Part) -> None:
        if self.use_psql:
            self._copy_with_psql(part)
        else:
            self._copy_with_psycopg(part)

    def _blocks(self, chunks: Iterable[bytes], counter: list[int]) -> Iterator[bytes]:
        """Count rows (text COPY: one line per row, newlines in values escaped) and report bytes."""
        for block in chunks:
            if self.stop.is_set():
                raise SnapshotError("Capture stopped: another part failed")
            counter[0] += block.count(b"\n")
            if self.on_bytes is not None:
                self.on_bytes(len(block))
            yield block

    def _copy_with_psycopg(self, part: _Part) -> None:
        counter = [0]
        with _connect(self.conn_url, "snapshot reader") as conn, conn.transaction():
            for statement in self.setup:
                conn.execute(statement.encode())
            try:
                conn.execute(part.lock.encode())
            except psycopg.errors.LockNotAvailable:
                raise _psql_error("could not obtain lock") from None
            with conn.cursor() as cur, cur.copy(part.text.encode()) as copy:
                part.entry = self.store.write_file(
                    self.snapshot_id, part.name, _compressed(self._blocks(_batched(copy), counter))
                )
        part.rows = counter[0]

    def _copy_with_psql(self, part: _Part) -> None:
        script = "\n".join(
            ["\\set ON_ERROR_STOP on", "SET client_min_messages = warning;",
             "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;",
             *(statement + ";" for statement in self.setup), part.lock + ";", part.text + ";", "COMMIT;", ""]
        )  # fmt: skip
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                [str(binary("psql")), "-X", "-q", "-d", self.conninfo, "-f", "-"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=self.env,
            )  # fmt: skip
            assert process.stdin is not None and process.stdout is not None
            counter = [0]
            try:
                try:
                    process.stdin.write(script.encode())
                    process.stdin.close()
                except BrokenPipeError:  # psql ended before reading its script: its stderr says why
                    pass
                else:
                    chunks = iter(lambda: process.stdout.read(_READ_BLOCK), b"")  # type: ignore[union-attr]
                    part.entry = self.store.write_file(
                        self.snapshot_id, part.name, _compressed(self._blocks(chunks, counter))
                    )
            finally:
                with contextlib.suppress(OSError):
                    process.stdin.close()
                if process.poll() is None and part.entry is None:
                    process.kill()
                process.wait()
            if process.returncode != 0 or part.entry is None:
                errors.seek(0)
                raise _psql_error(errors.read().decode(errors="replace"))
        part.rows = counter[0]

    def wait_for(self, table_index: int) -> None:
        with self.condition:
            while self.pending.get(table_index, 0) > 0 and self.error is None:
                self.condition.wait(0.5)
            if self.error is not None:
                raise self.error

    def close(self) -> None:
        """Stop and join the workers; their errors surface through wait_for, never from here
        (close runs in a finally block and must not hide the error that got us there)."""
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _psql_error(stderr: str) -> SnapshotError:
    text = redact(stderr.strip())
    if "could not obtain lock" in text:
        return SnapshotError(
            "Cannot capture: another session is waiting to change a table being captured "
            "(e.g. ALTER TABLE); try again when it is done"
        )
    if "row-level security" in text:
        return SnapshotError(
            f"Cannot capture: {text}. The role must be able to read every row (table owner, BYPASSRLS "
            "or superuser) and have SELECT on the table."
        )
    return SnapshotError(f"Cannot capture: psql failed: {text or 'no message'}")
