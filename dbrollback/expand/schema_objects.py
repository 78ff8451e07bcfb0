"""add_foreign_key and create_index: schema objects added without blocking writers.

A foreign key is added NOT VALID inside the revision (a brief SHARE ROW EXCLUSIVE lock, no scan)
and validated after the revision commits (SHARE UPDATE EXCLUSIVE: reads and writes go on).
An index is built CONCURRENTLY, which PostgreSQL only allows outside a transaction: the helper
runs it in an Alembic autocommit block, after dropping an INVALID index of the same name that an
earlier, failed attempt left behind.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from dbrollback.errors import ConfigError
from dbrollback.expand.registry import record_expansion
from dbrollback.expand.sqlexpr import check_expression
from dbrollback.expand.table import LiveTable

_REFERENTIAL_ACTIONS = {"CASCADE", "RESTRICT", "SET NULL", "SET DEFAULT", "NO ACTION"}


def _action(value: str | None, what: str) -> str:
    if value is None:
        return ""
    normal = " ".join(value.upper().split())
    if normal not in _REFERENTIAL_ACTIONS:
        raise ConfigError(f"{what} must be one of {', '.join(sorted(_REFERENTIAL_ACTIONS))}, not {value!r}.")
    return f" {what} {normal}"


def start_foreign_key(
    conn: psycopg.Connection,
    name: str,
    source: LiveTable,
    referent: LiveTable,
    local_cols: list[str],
    remote_cols: list[str],
    *,
    ondelete: str | None,
    onupdate: str | None,
    revision: str | None,
) -> int:
    if not local_cols or len(local_cols) != len(remote_cols):
        raise ConfigError("A foreign key needs as many referencing as referenced columns (at least one).")
    for column in local_cols:
        source.column(column)
    for column in remote_cols:
        referent.column(column)
    actions = _action(ondelete, "ON DELETE") + _action(onupdate, "ON UPDATE")
    spec: dict[str, Any] = {
        "name": name,
        "referent": list(referent.name),
        "local_cols": local_cols,
        "remote_cols": remote_cols,
        "actions": actions.strip(),
        "validated": False,
    }
    expansion_id = record_expansion(conn, revision=revision, kind="foreign_key", table=source.name, spec=spec)
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){} NOT VALID").format(
            source.ident,
            sql.Identifier(name),
            sql.SQL(", ").join(map(sql.Identifier, local_cols)),
            referent.ident,
            sql.SQL(", ").join(map(sql.Identifier, remote_cols)),
            sql.SQL(actions),
        )
    )
    return expansion_id


def validate_foreign_key(conn: psycopg.Connection, table: LiveTable, name: str) -> None:
    conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(table.ident, sql.Identifier(name)))


def orphan_rows(conn: psycopg.Connection, table: LiveTable, spec: dict[str, Any]) -> tuple[int, int]:
    """(rows, rows whose key matches no referenced row): what VALIDATE CONSTRAINT would reject."""
    local = [sql.Identifier("s", c) for c in spec["local_cols"]]
    matches = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("r", remote), sql.Identifier("s", column))
        for column, remote in zip(spec["local_cols"], spec["remote_cols"], strict=True)
    )
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE {} AND NOT EXISTS (SELECT FROM {} AS r WHERE {})) "
            "FROM {} AS s"
        ).format(
            sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in local),
            sql.Identifier(*spec["referent"]),
            matches,
            table.ident,
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def index_spec(
    table: LiveTable, name: str, columns: list[str], *, unique: bool, where: str | None, using: str | None
) -> dict[str, Any]:
    if not columns:
        raise ConfigError("An index needs at least one column.")
    for column in columns:
        table.column(column)
    if where is not None:
        check_expression(where, table.columns, "where (of the index)")
    if using is not None and not using.isidentifier():
        raise ConfigError(f"Not an index method: {using!r}.")
    return {"name": name, "columns": columns, "unique": unique, "where": where, "using": using}


def index_state(conn: psycopg.Connection, schema: str, name: str) -> bool | None:
    """True: a valid index of that name exists; False: an INVALID one (a failed build); None: none."""
    row = conn.execute(
        """SELECT i.indisvalid FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (schema, name),
    ).fetchone()
    return None if row is None else bool(row[0])


def build_index_concurrently(conn: psycopg.Connection, table: LiveTable, spec: dict[str, Any]) -> None:
    """Build the index on an autocommit connection; an INVALID leftover is dropped first."""
    schema = table.name[0]
    state = index_state(conn, schema, spec["name"])
    if state is False:
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, spec["name"]))
        )
    elif state is True:
        return  # built by an earlier attempt of this revision
    conn.execute(
        sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {}{} ({}){}").format(
            sql.SQL("UNIQUE " if spec["unique"] else ""),
            sql.Identifier(spec["name"]),
            table.ident,
            sql.SQL(f" USING {spec['using']}" if spec.get("using") else ""),
            sql.SQL(", ").join(map(sql.Identifier, spec["columns"])),
            sql.SQL(f" WHERE ({spec['where']})" if spec.get("where") else ""),
        )
    )


def start_index(
    conn: psycopg.Connection, table: LiveTable, spec: dict[str, Any], *, revision: str | None
) -> int:
    return record_expansion(conn, revision=revision, kind="index", table=table.name, spec=spec)
