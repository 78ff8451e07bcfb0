"""Table names as users type them: `orders`, `sales.orders`, `"My Schema"."Odd.Name"`.

PostgreSQL's own parse_ident() splits and unquotes them (unquoted parts fold to lower case, as
in SQL), so what works in psql works here.
"""

from __future__ import annotations

import psycopg

from dbrollback.errors import SnapshotError

QualifiedName = tuple[str, str]

_USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dbrollback', 'pg_toast')
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
  AND NOT (c.relname = 'alembic_version')
ORDER BY 1, 2
"""


def parse_name(conn: psycopg.Connection, text: str) -> tuple[str | None, str]:
    """(schema or None, table) from a possibly qualified, possibly quoted name."""
    try:
        row = conn.execute("SELECT parse_ident(%s)", (text,)).fetchone()
    except psycopg.errors.InvalidParameterValue:
        raise SnapshotError(f"Not a valid table name: {text!r}", name=text) from None
    parts: list[str] = list(row[0]) if row else []
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise SnapshotError(f"Not a table name (expected [schema.]table): {text!r}", name=text)


def resolve_live_tables(conn: psycopg.Connection, names: list[str]) -> list[QualifiedName]:
    """Existing tables named by the user; an unqualified name is looked up on the search_path."""
    found: list[QualifiedName] = []
    missing: list[str] = []
    for text in names:
        schema, table = parse_name(conn, text)
        row = conn.execute(
            """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.oid = to_regclass(CASE WHEN %s::text IS NULL THEN quote_ident(%s)
                                              ELSE quote_ident(%s) || '.' || quote_ident(%s) END)""",
            (schema, table, schema, table),
        ).fetchone()
        if row is None:
            missing.append(text)
        elif (row[0], row[1]) not in found:
            found.append((row[0], row[1]))
    if missing:
        raise SnapshotError(f"No such table: {', '.join(missing)}", missing=missing)
    return found


def user_tables(conn: psycopg.Connection) -> list[QualifiedName]:
    """Every ordinary table outside system schemas and dbrollback's own catalog."""
    return [(r[0], r[1]) for r in conn.execute(_USER_TABLES_SQL).fetchall()]


def match_snapshot_tables(conn: psycopg.Connection, names: list[str],
                          available: list[QualifiedName]) -> list[QualifiedName]:  # fmt: skip
    """Tables of a snapshot named by the user (they may no longer exist in the database)."""
    chosen: list[QualifiedName] = []
    for text in names:
        schema, table = parse_name(conn, text)
        hits = [q for q in available if q[1] == table and (schema is None or q[0] == schema)]
        if len(hits) > 1:
            raise SnapshotError(
                f"{text!r} is ambiguous in this snapshot: {', '.join(f'{s}.{t}' for s, t in hits)}; "
                "qualify it with the schema"
            )
        if not hits:
            have = ", ".join(f"{s}.{t}" for s, t in available) or "(none)"
            raise SnapshotError(f"Table {text!r} is not in the snapshot; it has: {have}", name=text)
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return chosen
