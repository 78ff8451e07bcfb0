"""Synced columns: new columns kept in step with old ones by a dual-write trigger.

The general form behind rename_column, change_column_type and split_column. While the expansion is
open, a BEFORE INSERT OR UPDATE trigger keeps, for every row, ``new_i = up_i(old columns)``:

* a write that changes only the old column(s) (old code) recomputes the new ones;
* a write that changes only new column(s) (new code) recomputes the old ones with ``down`` —
  unless the row is already consistent, so the backfill (which sets the new columns to ``up``)
  never rewrites an old value through a lossy ``down``;
* a write that changes both must be consistent, or it fails with check_violation;
* an INSERT that leaves the new columns NULL computes them; one that leaves the old ones NULL
  computes those.

An old column's DEFAULT moves into the trigger (applied only when an INSERT sets neither shape):
left on the column, it would fill the old column of a row new code inserted and make the row look
like a write to both. Abort puts it back; contract gives the new column ``new_default``.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.backfill.engine import SKIP_TRIGGER_SETTING
from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.errors import ConfigError
from dbrollback.expand.registry import Expansion, record_expansion, set_spec
from dbrollback.expand.sqlexpr import check_expression, row_expression
from dbrollback.expand.table import LiveTable, require_key


@dataclass
class NewColumn:
    name: str
    type: str
    up: str  # SQL over the table's columns giving this column's value


@dataclass
class SyncSpec:
    old: list[str]
    new: list[NewColumn]
    down: dict[str, str] = field(default_factory=dict)  # old column -> SQL over the new columns
    moved_defaults: dict[str, str] = field(default_factory=dict)  # old column -> its DEFAULT
    new_default: str | None = None  # DEFAULT given to the (single) new column at contract
    not_null: bool = False  # contract makes the new column(s) NOT NULL (the old one was)
    trigger: str = ""  # name of the dual-write trigger and its function

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SyncSpec:
        data = dict(raw)
        data["new"] = [NewColumn(**c) for c in data["new"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def new_object_name(expansion_id: int) -> str:
    """A name for an expansion's trigger and trigger function (fixed, greppable prefix). The id is
    zero-padded because PostgreSQL fires a table's BEFORE triggers in name order: expansions then
    fire in the order they were opened (a later one may read what an earlier one computes). The
    random part keeps the name unique where expansion ids restart: plan's schema-only copy has a
    fresh catalog but the user's schemas, open expansions' triggers included."""
    return f"{OBJECT_PREFIX}expand_{expansion_id:06d}_{secrets.token_hex(3)}"


def trigger_name(expansion: Expansion) -> str:
    return str(expansion.spec["trigger"])


def function_ident(schema: str, name: str) -> sql.Identifier:
    """The trigger function lives beside its table, not in the dbrollback schema: a schema-only
    copy of the user's schemas (plan, upgrade's analysis) must restore the trigger too."""
    return sql.Identifier(schema, name)


def _q(conn: psycopg.Connection, name: str) -> str:
    return sql.Identifier(name).as_string(conn)


def start(
    conn: psycopg.Connection, table: LiveTable, spec: SyncSpec, *, kind: str, revision: str | None
) -> int:
    """Add the new columns, the dual-write trigger and a pending backfill; returns the expansion id.

    Runs inside the revision's transaction: a failure anywhere leaves nothing behind."""
    from dbrollback.backfill.engine import create_backfill

    _validate(table, spec)
    require_key(conn, table)
    for old in spec.old:
        column = table.column(old)
        if column.default is not None:
            spec.moved_defaults[old] = column.default
    expansion_id = record_expansion(conn, revision=revision, kind=kind, table=table.name, spec=spec.to_dict())
    spec.trigger = new_object_name(expansion_id)
    for new in spec.new:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table.ident, sql.Identifier(new.name), sql.SQL(new.type)
            )
        )
    for old in spec.moved_defaults:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(table.ident, sql.Identifier(old))
        )
    columns = [*table.columns, *(n.name for n in spec.new)]
    conn.execute(
        sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
            function_ident(table.name[0], spec.trigger),
            sql.Literal(trigger_body(conn, table, spec, expansion_id, columns)),
        )
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW "
            "WHEN (pg_catalog.current_setting({}, true) IS DISTINCT FROM {}) EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(spec.trigger),
            table.ident,
            sql.Literal(SKIP_TRIGGER_SETTING),
            sql.Literal(spec.trigger),
            function_ident(table.name[0], spec.trigger),
        )
    )
    set_sql = ", ".join(f"{_q(conn, n.name)} = ({n.up})" for n in spec.new)
    backfill_id = create_backfill(conn, table.name, set_sql, f"NOT ({consistent(conn, spec, columns)})")
    set_spec(conn, expansion_id, spec.to_dict(), backfill_id)
    return expansion_id


def _validate(table: LiveTable, spec: SyncSpec) -> None:
    if not spec.old or not spec.new:
        raise ConfigError("An expansion needs at least one old and one new column.")
    for old in spec.old:
        if table.column(old).generated:
            raise ConfigError(
                f"Column {old!r} of {table.label} is an identity or generated column; the server "
                "computes it, so a trigger cannot keep it in sync."
            )
    names = [n.name for n in spec.new]
    if len(set(names)) != len(names):
        raise ConfigError(f"New column names repeat: {', '.join(names)}.")
    for name in names:
        table.absent(name)
        if name.startswith(OBJECT_PREFIX):
            raise ConfigError(f"Column names starting with {OBJECT_PREFIX} are reserved for dbrollback.")
    after = [*table.columns, *names]
    for new in spec.new:
        check_expression(new.up, table.columns, f"up (for {new.name})")
    for old, expression in spec.down.items():
        if old not in spec.old:
            raise ConfigError(f"down names {old!r}, which is not an old column of this expansion.")
        check_expression(expression, after, f"down (for {old})")


def _up(conn: psycopg.Connection, new: NewColumn, columns: list[str], row: str | None) -> str:
    """``up`` as a value of the new column's type, for comparisons. Writes assign ``up`` without a
    CAST instead: assignment coercion raises where a CAST would cut a value silently (varchar(n))."""
    expression = row_expression(new.up, columns, "up", row) if row else f"({new.up})"
    return f"CAST({expression} AS {new.type})"


def consistent(conn: psycopg.Connection, spec: SyncSpec, columns: list[str], row: str | None = None) -> str:
    """SQL true when every new column equals ``up`` of the row (over the table, or over ``row``)."""
    prefix = f"{row}." if row else ""
    return " AND ".join(
        f"{prefix}{_q(conn, n.name)} IS NOT DISTINCT FROM {_up(conn, n, columns, row)}" for n in spec.new
    )


def trigger_body(
    conn: psycopg.Connection, table: LiveTable, spec: SyncSpec, expansion_id: int, columns: list[str]
) -> str:
    q = lambda name: _q(conn, name)  # noqa: E731
    new_names = [n.name for n in spec.new]
    set_new = " ".join(f"NEW.{q(n.name)} := {row_expression(n.up, columns, 'up', 'new')};" for n in spec.new)
    if spec.down:
        set_old = " ".join(
            f"NEW.{q(old)} := {row_expression(expr, columns, 'down', 'new')};"
            for old, expr in spec.down.items()
        )
    else:
        set_old = _raise(
            conn,
            expansion_id,
            table,
            spec,
            f"it is computed from {', '.join(spec.old)} while the expansion is open; write that instead",
        )
    defaults = " ".join(
        f"IF NEW.{q(old)} IS NULL THEN NEW.{q(old)} := {default}; END IF;"
        for old, default in spec.moved_defaults.items()
    )
    is_consistent = consistent(conn, spec, columns, "new")
    disagree = _raise(
        conn,
        expansion_id,
        table,
        spec,
        "a write set old and new columns to values "
        "that do not correspond; write one of them and the trigger computes the other",
    )
    all_new_null = " AND ".join(f"NEW.{q(n)} IS NULL" for n in new_names)
    all_old_null = " AND ".join(f"NEW.{q(o)} IS NULL" for o in spec.old)
    # Old code may change any column ``up`` reads, not only the old ones: watch them all.
    read_by_up = [c for n in spec.new for c in check_expression(n.up, table.columns, "up")]
    watched = [c for c in dict.fromkeys([*spec.old, *read_by_up]) if c not in new_names]
    old_changed = " OR ".join(f"NEW.{q(o)} IS DISTINCT FROM OLD.{q(o)}" for o in watched)
    new_changed = " OR ".join(f"NEW.{q(n)} IS DISTINCT FROM OLD.{q(n)}" for n in new_names)
    return f"""
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF {all_new_null} THEN
      {defaults}
      {set_new}
    ELSIF {all_old_null} THEN
      {set_old}
    ELSIF NOT ({is_consistent}) THEN
      {disagree}
    END IF;
  ELSE
    IF ({old_changed}) AND NOT ({new_changed}) THEN
      {set_new}
    ELSIF ({new_changed}) AND NOT ({old_changed}) THEN
      IF NOT ({is_consistent}) THEN
        {set_old}
      END IF;
    ELSIF ({new_changed}) AND ({old_changed}) THEN
      IF NOT ({is_consistent}) THEN
        {disagree}
      END IF;
    ELSIF ({all_new_null}) AND NOT ({all_old_null}) THEN
      {set_new}
    END IF;
  END IF;
  RETURN NEW;
END
"""


def _raise(conn: psycopg.Connection, expansion_id: int, table: LiveTable, spec: SyncSpec, why: str) -> str:
    message = (
        f"dbrollback expansion {expansion_id} on {table.label} "
        f"({', '.join(spec.old)} -> {', '.join(n.name for n in spec.new)}): {why}"
    )
    literal = sql.Literal(message).as_string(conn)
    return f"RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = {literal};"


def drop_trigger(conn: psycopg.Connection, table: LiveTable | None, schema: str, name: str) -> None:
    if table is not None:
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table.ident))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(function_ident(schema, name)))
