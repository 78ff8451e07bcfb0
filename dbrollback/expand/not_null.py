"""add_not_null_column: nullable column + fill trigger + backfill, NOT NULL only at contract.

``ADD COLUMN … NOT NULL`` with a computed value would rewrite or lock the table; instead the column
is added nullable, a BEFORE INSERT OR UPDATE trigger fills it on rows written meanwhile (old code
does not know the column), the backfill fills the rest, and contract adds ``CHECK (col IS NOT
NULL) NOT VALID``, validates it (SHARE UPDATE EXCLUSIVE: writes go on), then SET NOT NULL, which
PostgreSQL proves from the valid CHECK without scanning, and drops the CHECK.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbrollback.backfill.engine import SKIP_TRIGGER_SETTING
from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.expand.registry import record_expansion, set_spec
from dbrollback.expand.sqlexpr import check_expression, row_expression
from dbrollback.expand.synced import function_ident, new_object_name
from dbrollback.expand.table import LiveTable, require_key


def start(
    conn: psycopg.Connection,
    table: LiveTable,
    column: str,
    type_: str,
    backfill: str,
    *,
    revision: str | None,
) -> int:
    from dbrollback.backfill.engine import create_backfill

    table.absent(column)
    if column.startswith(OBJECT_PREFIX):
        from dbrollback.errors import ConfigError

        raise ConfigError(f"Column names starting with {OBJECT_PREFIX} are reserved for dbrollback.")
    check_expression(backfill, table.columns, f"backfill (for {column})")
    require_key(conn, table)
    spec = {"column": column, "type": type_, "backfill": backfill}
    expansion_id = record_expansion(
        conn, revision=revision, kind="not_null_column", table=table.name, spec=spec
    )
    spec["trigger"] = name = new_object_name(expansion_id)
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(table.ident, sql.Identifier(column), sql.SQL(type_))
    )
    columns = [*table.columns, column]
    value = row_expression(backfill, columns, "backfill", "new")  # assigned: coerced, never cut
    target = sql.Identifier(column).as_string(conn)
    body = f"BEGIN IF NEW.{target} IS NULL THEN NEW.{target} := {value}; END IF; RETURN NEW; END"
    conn.execute(
        sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
            function_ident(table.name[0], name), sql.Literal(body)
        )
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW "
            "WHEN (pg_catalog.current_setting({}, true) IS DISTINCT FROM {}) EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(name),
            table.ident,
            sql.Literal(SKIP_TRIGGER_SETTING),
            sql.Literal(name),
            function_ident(table.name[0], name),
        )
    )
    backfill_id = create_backfill(conn, table.name, f"{target} = ({backfill})", f"{target} IS NULL")
    set_spec(conn, expansion_id, spec, backfill_id)
    return expansion_id


def check_name(expansion_id: int, number: int = 0) -> str:
    """The temporary NOT NULL CHECK constraint contract adds and drops."""
    return f"{OBJECT_PREFIX}nn_{expansion_id}_{number}"
