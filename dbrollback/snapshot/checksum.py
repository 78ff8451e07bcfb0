"""An order-independent checksum of a table's contents, computed on the server.

Each row's text form (``ROW(t.*)::text``) is hashed with md5; the first 64 bits, read as a signed
bigint, are summed as numeric (no overflow). The sum does not depend on row order or physical
layout, so it can be recomputed later (after a restore, or on another server) to verify contents.

Text output depends on a few settings; they are pinned with SET LOCAL for the computation so the
result does not depend on the session's TimeZone, DateStyle and so on.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

ALGORITHM = "rowmd5sum64-v1"

# Settings that influence the text form of values, pinned for a reproducible checksum.
_PINNED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)


def pin_text_settings(conn: psycopg.Connection) -> None:
    """SET LOCAL the output settings for the current transaction (does not take a snapshot)."""
    for name, value in _PINNED_SETTINGS:
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value)))


def checksum_query(schema: str, table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT count(*), "
        "coalesce(sum(('x' || substr(md5(ROW(t.*)::text), 1, 16))::bit(64)::bigint::numeric), 0) "
        "FROM {}.{} AS t"
    ).format(sql.Identifier(schema), sql.Identifier(table))


def table_checksum(conn: psycopg.Connection, schema: str, table: str) -> tuple[int, str]:
    """(row_count, checksum_text) of schema.table, as seen by the current transaction's snapshot.

    Runs inside a transaction (a savepoint when one is already open, so the caller's snapshot is
    kept) because the pinned settings are SET LOCAL.
    """
    with conn.transaction():
        pin_text_settings(conn)
        row = conn.execute(checksum_query(schema, table)).fetchone()
    assert row is not None
    count, total = row
    return int(count), f"{ALGORITHM}:{total}"
