"""What the expand helpers need to know about a live table, read from the catalog in one place."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbrollback.errors import ConfigError, RefusedForSafety
from dbrollback.snapshot.names import QualifiedName

_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '' OR a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Indexes and constraints that use a column (besides NOT NULL), and views reading it: dropping the
# column would drop the first silently and is refused by the second.
_DEPENDENTS_SQL = """
SELECT DISTINCT 'index ' || quote_ident(ci.relname)
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class ci ON ci.oid = d.objid AND ci.relkind IN ('i', 'I')
JOIN pg_catalog.pg_attribute a ON a.attrelid = %(oid)s AND a.attname = %(column)s
WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND d.refobjsubid = a.attnum
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c WHERE c.conindid = ci.oid AND c.conrelid = %(oid)s)
UNION ALL
SELECT CASE WHEN c.conrelid = %(oid)s THEN 'constraint ' || quote_ident(c.conname)
            ELSE 'foreign key ' || quote_ident(c.conname) || ' of ' || c.conrelid::regclass::text END
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_attribute a ON a.attrelid = %(oid)s AND a.attname = %(column)s
WHERE (c.conrelid = %(oid)s AND a.attnum = ANY(c.conkey) AND c.contype <> 'n')
   OR (c.confrelid = %(oid)s AND a.attnum = ANY(c.confkey))
UNION ALL
SELECT DISTINCT 'view ' || v.oid::regclass::text
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_attribute a ON a.attrelid = %(oid)s AND a.attname = %(column)s
WHERE d.refobjid = %(oid)s AND d.refobjsubid = a.attnum AND d.classid = 'pg_rewrite'::regclass
  AND v.oid <> %(oid)s
ORDER BY 1
"""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None
    generated: bool  # identity or generated: the server computes it, a trigger may not


@dataclass(frozen=True)
class LiveTable:
    name: QualifiedName
    oid: int
    columns: dict[str, Column]

    @property
    def label(self) -> str:
        return f"{self.name[0]}.{self.name[1]}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(*self.name)

    def column(self, name: str) -> Column:
        found = self.columns.get(name)
        if found is None:
            raise ConfigError(f"Table {self.label} has no column {name!r}.", table=self.label, column=name)
        return found

    def absent(self, name: str) -> None:
        if name in self.columns:
            raise ConfigError(
                f"Table {self.label} already has a column {name!r}.", table=self.label, column=name
            )


def live_table(conn: psycopg.Connection, table: str, schema: str | None) -> LiveTable:
    """The table ``schema.table`` (``schema`` None: the first on the search_path), or ConfigError."""
    row = conn.execute(
        """SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p')
             AND c.oid = to_regclass(CASE WHEN %s::text IS NULL THEN quote_ident(%s)
                                          ELSE quote_ident(%s) || '.' || quote_ident(%s) END)""",
        (schema, table, schema, table),
    ).fetchone()
    if row is None:
        shown = f"{schema}.{table}" if schema else table
        raise ConfigError(f"No such table: {shown}.", table=shown)
    return read_table(conn, (row[1], row[2]), int(row[0]))


def read_table(conn: psycopg.Connection, name: QualifiedName, oid: int) -> LiveTable:
    columns = {
        r[0]: Column(r[0], r[1], bool(r[2]), r[3], bool(r[4]))
        for r in conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
    }
    return LiveTable(name, oid, columns)


def table_by_name(conn: psycopg.Connection, name: QualifiedName) -> LiveTable | None:
    row = conn.execute("SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))::oid", name).fetchone()
    if row is None or row[0] is None:
        return None
    return read_table(conn, name, int(row[0]))


def require_key(conn: psycopg.Connection, table: LiveTable) -> None:
    """Refuse a table that a backfill could not walk: no primary key, no unique NOT NULL key."""
    row = conn.execute(
        """SELECT EXISTS (
             SELECT FROM pg_catalog.pg_index i
             WHERE i.indrelid = %s AND i.indisvalid
               AND (i.indisprimary OR (i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL
                    AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                                      AND NOT a.attnotnull))))""",
        (table.oid,),
    ).fetchone()
    if not (row and row[0]):
        raise RefusedForSafety(
            f"Table {table.label} has no primary key and no unique index on NOT NULL columns; an "
            "expansion backfills it in key order, so it needs one. Add a primary key (or a unique "
            "index on NOT NULL columns) first. Nothing was changed.",
            table=table.label,
        )


def dependents(conn: psycopg.Connection, table: LiveTable, column: str) -> list[str]:
    """Indexes, constraints and views that use ``column`` ("index x", "constraint x", "foreign key x
    of other_table" for another table's key referencing it, "view v")."""
    rows = conn.execute(_DEPENDENTS_SQL, {"oid": table.oid, "column": column}).fetchall()
    return [r[0] for r in rows]
