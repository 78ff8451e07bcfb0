"""The table a backfill walks, its key, and the statements of one batch.

A batch is ``(key) > (last)`` and ``(key) <= (upper)``: a row comparison on the key columns in the
order of a unique index, so each bound is an index range and a batch costs what its rows cost, not
what the table costs. The upper bound is the n-th key after the last one (``OFFSET n - 1``).
Key values travel as text (the type's output, cast back with the column's type), as literals: the
planner sees the real bounds, and the user's SET/WHERE text never meets client-side placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbrollback.errors import ConfigError, RefusedForSafety
from dbrollback.snapshot.names import QualifiedName

_TABLE_SQL = """
SELECT c.oid, c.relkind FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

# Unique, valid, not partial, no expressions, every key column NOT NULL. Preferred: an index the
# row comparison and ORDER BY can walk (default operator class, the column's collation, one
# direction); then the primary key; then the fewest columns. The walk is correct with any of them:
# a batch includes its upper bound and the next starts after it, so even keys comparing equal
# under the column's collation are taken together; only the speed depends on the index.
_KEY_SQL = """
SELECT array_agg(a.attname::text ORDER BY k.ord),
       array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY k.ord),
       bool_and(opc.opcdefault AND i.indcollation[(k.ord - 1)::int] = a.attcollation)
         AND (bool_and((i.indoption[(k.ord - 1)::int] & 1) = 0)
              OR bool_and((i.indoption[(k.ord - 1)::int] & 1) = 1)) AS walkable
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
JOIN pg_catalog.pg_opclass opc ON opc.oid = i.indclass[(k.ord - 1)::int]
WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
  AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, i.indisprimary, i.indnkeyatts
HAVING bool_and(a.attnotnull)
ORDER BY 3 DESC, i.indisprimary DESC, i.indnkeyatts, i.indexrelid
LIMIT 1
"""

_COLUMN_TYPES_SQL = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY(%s)
"""

# The table and, when partitioned, every partition (pg_partition_tree lists nothing for a plain
# table): the relations other sessions may be waiting on; the leaves hold the rows.
_TREE_SQL = """
SELECT %(oid)s::oid AS relid,
       NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(%(oid)s::regclass)) AS isleaf
UNION
SELECT relid, isleaf FROM pg_catalog.pg_partition_tree(%(oid)s::regclass)
"""


def label(table: QualifiedName) -> str:
    return f"{table[0]}.{table[1]}"


def table_oid(conn: psycopg.Connection, table: QualifiedName) -> int:
    """The oid of an ordinary or partitioned table; ConfigError (exit 2) otherwise."""
    row = conn.execute(_TABLE_SQL, table).fetchone()
    if row is None:
        raise ConfigError(f"No such table: {label(table)}", table=label(table))
    if row[1] not in ("r", "p"):
        raise ConfigError(f"{label(table)} is not a table (relkind {row[1]!r})", table=label(table))
    return int(row[0])


def find_key(conn: psycopg.Connection, table: QualifiedName, oid: int) -> tuple[list[str], list[str]]:
    """(key columns, their types) to walk the table by; RefusedForSafety (exit 3) without one."""
    row = conn.execute(_KEY_SQL, (oid,)).fetchone()
    if row is None:
        raise RefusedForSafety(
            f"{label(table)} has no key to walk it by: a backfill needs a primary key or a unique "
            "index on NOT NULL columns (not partial, no expressions). Add one first; nothing was changed.",
            table=label(table),
        )
    return list(row[0]), list(row[1])


def current_key_types(conn: psycopg.Connection, oid: int, key: list[str]) -> dict[str, str]:
    return {name: type_ for name, type_ in conn.execute(_COLUMN_TYPES_SQL, (oid, key)).fetchall()}


def relation_oids(conn: psycopg.Connection, oid: int) -> list[int]:
    """The table and its partitions, if any."""
    return [int(r[0]) for r in conn.execute(_TREE_SQL, {"oid": oid}).fetchall()]


def estimated_rows(conn: psycopg.Connection, oid: int) -> int | None:
    """pg_class.reltuples over the leaves; None when never vacuumed or analysed (-1)."""
    row = conn.execute(
        "SELECT sum(reltuples) FILTER (WHERE reltuples >= 0), count(*) FILTER (WHERE reltuples >= 0) "
        f"FROM pg_catalog.pg_class WHERE oid IN (SELECT relid FROM ({_TREE_SQL}) tree WHERE isleaf)",
        {"oid": oid},
    ).fetchone()
    if row is None or not row[1]:
        return None
    return int(row[0])


@dataclass(frozen=True)
class BatchStatements:
    """The SQL of one batch for a table, key, SET and WHERE; key values are text (None: NULL)."""

    table: QualifiedName
    key: Sequence[str]
    types: Sequence[str]
    set_sql: str
    where_sql: str | None

    @property
    def relation(self) -> sql.Identifier:
        return sql.Identifier(*self.table)

    def _columns(self) -> sql.Composable:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in self.key)
        return sql.SQL("ROW({})").format(columns) if len(self.key) > 1 else columns

    @staticmethod
    def _value(value: str | None, type_: str) -> sql.Composable:
        return sql.SQL("CAST({} AS {})").format(sql.Literal(value), sql.SQL(type_))

    def _values(self, values: Sequence[str | None]) -> sql.Composable:
        casts = sql.SQL(", ").join(self._value(v, t) for v, t in zip(values, self.types, strict=True))
        return sql.SQL("ROW({})").format(casts) if len(self.key) > 1 else casts

    def _range(self, last: Sequence[str | None] | None, upper: Sequence[str | None] | None) -> sql.Composable:
        parts: list[sql.Composable] = []
        # With several key columns, the first column's range as well: implied by the row
        # comparison, but the planner estimates it far better (a row comparison is a guess).
        first = sql.Identifier(self.key[0])
        if last is not None:
            parts.append(sql.SQL("{} > {}").format(self._columns(), self._values(last)))
            if len(self.key) > 1:
                parts.append(sql.SQL("{} >= {}").format(first, self._value(last[0], self.types[0])))
        if upper is not None:
            parts.append(sql.SQL("{} <= {}").format(self._columns(), self._values(upper)))
            if len(self.key) > 1:
                parts.append(sql.SQL("{} <= {}").format(first, self._value(upper[0], self.types[0])))
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")

    def upper(self, last: Sequence[str | None] | None, rows: int) -> sql.Composed:
        """The key of the `rows`-th row after `last` (its values as text), if there is one."""
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.key),
            self.relation,
            self._range(last, None),
            # Qualified: a bare name in ORDER BY would mean the output column, the text.
            sql.SQL(", ").join(sql.Identifier(*self.table, c) for c in self.key),
            sql.Literal(max(rows - 1, 0)),
        )

    def count(self, last: Sequence[str | None] | None) -> sql.Composed:
        """How many rows are left after `last` (the last batch's rows)."""
        return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.relation, self._range(last, None))

    def update(self, last: Sequence[str | None] | None, upper: Sequence[str | None] | None) -> sql.Composed:
        condition = self._range(last, upper)
        if self.where_sql is not None:
            condition = sql.SQL("{} AND ({})").format(condition, sql.SQL(self.where_sql))
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(self.relation, sql.SQL(self.set_sql), condition)

    def matching(self) -> sql.Composed:
        """How many rows the whole backfill would update, as things stand (a dry run)."""
        where = sql.SQL(self.where_sql) if self.where_sql is not None else sql.SQL("true")
        return sql.SQL("SELECT count(*) FROM {} WHERE ({})").format(self.relation, where)


def check_on_server(conn: psycopg.Connection, statements: BatchStatements) -> None:
    """EXPLAIN a real batch (nothing runs) in a savepoint rolled back, so names, types and
    permissions are the server's to judge: ConfigError (exit 2) with its message."""
    nulls: list[str | None] = [None] * len(statements.key)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("EXPLAIN {}").format(statements.update(nulls, nulls)))
            conn.execute(sql.SQL("EXPLAIN {}").format(statements.upper(nulls, 1)))
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).strip()
        raise ConfigError(
            f"The server rejects the backfill's UPDATE of {label(statements.table)}: {message}",
            table=label(statements.table),
        ) from None
