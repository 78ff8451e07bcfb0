"""An order-independent checksum of a table's contents, computed on the server.

Each row is hashed to 64 bits and the hashes are summed (``sum(bigint)`` is exact: PostgreSQL
accumulates in 128 bits and returns numeric). The sum does not depend on row order or physical
layout, so it can be recomputed later (after a restore, or on another server) to verify contents.

Rows are hashed with ``hash_record_extended(ROW(c1, c2, ...), 0)``: each column with its type's
own binary hash function, which is ~4x faster than hashing the row's text form and does not depend
on TimeZone/DateStyle. A column whose type has no extended hash function (json, xml, point, ...)
is hashed through its text form instead; the text-output settings are pinned with SET LOCAL so
that is reproducible too. Which columns go through text is decided from the column types alone,
so the same table definition always gives the same expression.

Equal values hash equal (that is what the hash functions guarantee), so e.g. numeric ``1.5`` and
``1.50`` are not told apart; every value that differs in meaning is (up to 64-bit collisions).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

ALGORITHM = "rowhash64-v2"

# Settings that influence the text form of values, pinned for a reproducible checksum.
_PINNED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),  # exact float text on every version (12+ treat any value > 0 alike)
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)

_COLUMN_TYPES_SQL = """
SELECT a.attname, a.atttypid, pg_catalog.format_type(a.atttypid, NULL)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def _pinned_settings() -> list[sql.Composed]:
    return [sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value))
            for name, value in _PINNED_SETTINGS]  # fmt: skip


def pin_text_settings(conn: psycopg.Connection) -> None:
    """SET LOCAL the output settings for the current transaction (does not take a snapshot)."""
    for statement in _pinned_settings():
        conn.execute(statement)


def pinned_settings_sql(conn: psycopg.Connection) -> list[str]:
    """The same settings as SQL text, e.g. for a psql script (text COPY output depends on them)."""
    return [statement.as_string(conn) + ";" for statement in _pinned_settings()]


def has_extended_hash(conn: psycopg.Connection, type_name: str) -> bool:
    # The type cache resolves arrays, ranges, domains and composites to their elements, and is
    # consulted even for a NULL value: a cheap, exact test.
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT hash_record_extended(ROW(NULL::{}), 0)").format(sql.SQL(type_name)))
        return True
    except psycopg.errors.UndefinedFunction:
        return False


def row_hash_expression(
    conn: psycopg.Connection, schema: str, table: str, alias: str = "t", columns: list[str] | None = None
) -> sql.Composed:
    """The per-row 64-bit hash expression for schema.table (columns referenced through `alias`).

    `columns` restricts (and orders) the hashed columns; default: all, in table order.
    """
    oid_row = conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    if oid_row is None:
        raise psycopg.errors.UndefinedTable(f"relation {schema}.{table} does not exist")
    parts: list[sql.Composable] = []
    verdicts: dict[int, bool] = {}
    found = {name: (type_oid, type_name) for name, type_oid, type_name in
             conn.execute(_COLUMN_TYPES_SQL, (oid_row[0],)).fetchall()}  # fmt: skip
    for name in found if columns is None else columns:
        type_oid, type_name = found[name]
        if type_oid not in verdicts:
            # format_type() output is already a quoted, valid type name.
            verdicts[type_oid] = has_extended_hash(conn, type_name)
        column = sql.Identifier(alias, name)
        parts.append(column if verdicts[type_oid] else sql.SQL("{}::text").format(column))
    if not parts:
        return sql.Composed([sql.SQL("0::bigint")])
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))


def checksum_query(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    where: sql.Composable | None = None,
    columns: list[str] | None = None,
) -> sql.Composed:
    """SELECT count(*), sum(row hash) over schema.table [WHERE where] (alias t)."""
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}.{} AS t{}").format(
        row_hash_expression(conn, schema, table, columns=columns),
        sql.Identifier(schema),
        sql.Identifier(table),
        sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL(""),
    )


def table_checksum(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    where: sql.Composable | None = None,
    columns: list[str] | None = None,
) -> tuple[int, str]:
    """(row_count, checksum_text) of schema.table, as seen by the current transaction's snapshot.

    Runs inside a transaction (a savepoint when one is already open, so the caller's snapshot is
    kept) because the pinned settings are SET LOCAL. `where` restricts it to some rows (values in it
    as sql.Literal: no separate parameters, which psycopg would confuse with a `%` in an identifier),
    `columns` to some columns (e.g. the non-generated ones, to compare with a staging copy).
    """
    with conn.transaction():
        pin_text_settings(conn)
        row = conn.execute(checksum_query(conn, schema, table, where, columns)).fetchone()
    assert row is not None
    count, total = row
    return int(count), f"{ALGORITHM}:{total}"
