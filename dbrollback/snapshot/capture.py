"""Capture tables into a snapshot store: one consistent point in time, streamed, compressed.

All tables are read in ONE transaction (REPEATABLE READ, READ ONLY): every COPY and checksum
sees the same MVCC snapshot, so the captured tables are mutually consistent even while other
sessions keep committing. The tables are locked in ACCESS SHARE mode before the snapshot is taken,
so their definitions cannot change (ALTER/DROP/TRUNCATE wait) while they are read; ordinary
INSERT/UPDATE/DELETE by others are not blocked.

Each table is streamed with binary COPY and compressed with zstd chunk by chunk: memory use does
not depend on table size.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone

import psycopg
import zstandard
from psycopg import sql

from dbrollback import __version__
from dbrollback.errors import SnapshotError
from dbrollback.snapshot.checksum import pin_text_settings, table_checksum
from dbrollback.snapshot.manifest import ColumnInfo, SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.urls import redact

ZSTD_LEVEL = 3
NO_PK_NOTE = "no primary key: not split for parallel reads"

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


def _compressed(blocks: Iterable[bytes | bytearray | memoryview], level: int = ZSTD_LEVEL) -> Iterator[bytes]:
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


def _columns(conn: psycopg.Connection, oid: int) -> list[ColumnInfo]:
    return [
        ColumnInfo(name=name, type=type_, nullable=not notnull, default=default, generated=generated)
        for name, type_, notnull, default, generated in conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
    ]


def _primary_key(conn: psycopg.Connection, oid: int) -> list[str]:
    return [name for (name,) in conn.execute(_PK_SQL, (oid,)).fetchall()]


def copy_out_query(schema: str, table: str, columns: list[str]) -> sql.Composed:
    return sql.SQL("COPY (SELECT {} FROM {}.{}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(schema),
        sql.Identifier(table),
    )


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
) -> SnapshotManifest:
    """Capture `tables` ((schema, table) pairs) at one point in time and publish the snapshot.

    `progress` is called after each table, inside the capture transaction. The manifest is
    published only when every table has been written; on any error nothing is listed.
    """
    if not tables:
        raise SnapshotError("No tables to capture")
    if len(set(tables)) != len(tables):
        raise SnapshotError("A table is listed twice")
    snapshot_id = new_snapshot_id()
    try:
        snapshot = _capture(conn_url, store, snapshot_id, tables, lock_timeout, progress)
    except BaseException:
        store.discard(snapshot_id)  # nothing half-written stays behind
        raise
    snapshot = snapshot.model_copy(
        update={"run_id": run_id, "revision": revision, "label": label, "expires_at": expires_at}
    )
    store.publish(snapshot)
    return snapshot


def _capture(
    conn_url: str,
    store: SnapshotStore,
    snapshot_id: str,
    tables: list[tuple[str, str]],
    lock_timeout: str,
    progress: Progress | None,
) -> SnapshotManifest:
    created_at = datetime.now(timezone.utc)
    try:
        conn = psycopg.connect(conn_url, application_name=f"dbrollback {__version__} snapshot")
    except psycopg.Error as exc:
        raise SnapshotError(f"Cannot connect for a snapshot: {redact(str(exc)).strip()}") from None
    with conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        captured: list[TableManifest] = []
        with conn.transaction():
            # Utility statements first: they do not take the transaction snapshot, so the snapshot
            # is taken after the locks are granted and no definition can change under us.
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
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
            server_version = conn.execute("SHOW server_version").fetchone()
            assert server_version is not None
            for number, (schema, table) in enumerate(tables, start=1):
                oid = _table_oid(conn, schema, table)
                columns = _columns(conn, oid)
                copy_columns = [c.name for c in columns if not c.generated]
                if not copy_columns:
                    raise SnapshotError(
                        f"{schema}.{table} has no columns to copy", schema=schema, table=table
                    )
                name = f"{number}.copy.zst"
                with conn.cursor() as cur:
                    with cur.copy(copy_out_query(schema, table, copy_columns)) as copy:
                        entry = store.write_file(snapshot_id, name, _compressed(copy))
                    copied = cur.rowcount
                row_count, checksum = table_checksum(conn, schema, table)
                if copied >= 0 and copied != row_count:
                    raise SnapshotError(
                        f"{schema}.{table}: COPY returned {copied} rows but the checksum counted {row_count}"
                    )
                primary_key = _primary_key(conn, oid)
                manifest = TableManifest(
                    schema_name=schema,
                    table_name=table,
                    columns=columns,
                    primary_key=primary_key,
                    row_count=row_count,
                    checksum=checksum,
                    files=[entry],
                    note="" if primary_key else NO_PK_NOTE,
                )
                captured.append(manifest)
                if progress is not None:
                    progress(manifest)
        database = conn.info.dbname
    return SnapshotManifest(
        id=snapshot_id,
        created_at=created_at,
        server_version=str(server_version[0]),
        database=database,
        tables=captured,
    )
