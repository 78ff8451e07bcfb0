"""Small SQL builders the merge and its verification share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbrollback.snapshot.checksum import has_extended_hash

_LIVE_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class LiveColumn:
    name: str
    type: str
    generated: bool
    identity: str


def live_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, LiveColumn] | None:
    """The table's columns now (as this transaction sees it), or None when it does not exist."""
    exists = conn.execute(
        "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s)) IS NOT NULL", (schema, table)
    ).fetchone()
    if not (exists and exists[0]):
        return None
    rows = conn.execute(_LIVE_COLUMNS_SQL, (schema, table)).fetchall()
    return {str(r[0]): LiveColumn(str(r[0]), str(r[1]), bool(r[2]), str(r[3])) for r in rows}


def names(columns: Iterable[str], alias: str | None = None) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)


def keys_equal(key: list[str], left: str, right: str) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in key
    )


def key_json(key: list[str], alias: str) -> sql.Composed:
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in key)
    )


class Hasher:
    """64-bit hashes of values exactly as fingerprints and checksums compute them: a type's own
    extended hash function, else its text form (under the pinned output settings)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._binary: dict[str, bool] = {}

    def _has_hash(self, type_name: str) -> bool:
        if type_name not in self._binary:
            self._binary[type_name] = has_extended_hash(self.conn, type_name)
        return self._binary[type_name]

    def value(self, alias: str, column: str, type_name: str) -> sql.Composable:
        return self.row(alias, [(column, type_name)])

    def row(self, alias: str, columns: list[tuple[str, str]]) -> sql.Composable:
        if not columns:
            return sql.SQL("0::bigint")
        parts = [
            sql.Identifier(alias, c)
            if self._has_hash(t)
            else sql.SQL("{}::text").format(sql.Identifier(alias, c))
            for c, t in columns
        ]
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))

    def differs(self, column: str, left: tuple[str, str], right: tuple[str, str]) -> sql.Composable:
        """`left.column` and `right.column` ((alias, type) each) hold different values; values of
        different types are compared by their text."""
        (la, lt), (ra, rt) = left, right
        if lt == rt:
            return sql.SQL("{} IS DISTINCT FROM {}").format(
                self.value(la, column, lt), self.value(ra, column, rt)
            )
        return sql.SQL("{}::text IS DISTINCT FROM {}::text").format(
            sql.Identifier(la, column), sql.Identifier(ra, column)
        )


def count(conn: psycopg.Connection, query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


@contextmanager
def local_settings(conn: psycopg.Connection, settings: dict[str, str]) -> Iterator[None]:
    """`settings` for the statements in the block only (the rollback's one transaction also runs
    the user's downgrades, which should see the session's own values). Restored on success only:
    an error aborts the transaction, which undoes them anyway."""
    before = {
        name: str(conn.execute("SELECT pg_catalog.current_setting(%s)", (name,)).fetchone()[0])  # type: ignore[index]
        for name in settings
    }
    for name, value in settings.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
    yield
    for name, value in before.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
