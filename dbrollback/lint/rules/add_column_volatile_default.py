"""add-column-volatile-default: adding a column whose default must be computed per row rewrites the table.

Since PostgreSQL 11 a non-volatile default (a constant, ``now()``, ``CURRENT_DATE``…) is evaluated
once and stored in the catalog, so ADD COLUMN is instant. A volatile default (``random()``,
``gen_random_uuid()``, ``clock_timestamp()``, ``nextval()`` — hence serial and identity columns)
is evaluated for every existing row: the whole table is rewritten under an ACCESS EXCLUSIVE lock.
Before PostgreSQL 11 every non-null default rewrites.

Which calls count as volatile is decided from the function name alone, with no database: the known
volatile built-ins, and any function not on the list of known STABLE / IMMUTABLE built-ins — because
``CREATE FUNCTION`` makes a function VOLATILE unless it says otherwise, which is what PostgreSQL
itself then assumes. Operators and casts are taken as non-volatile (the built-in ones are).
"""

from __future__ import annotations

from typing import Any

from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType

from dbrollback.analysis.pg_tree import deparse, walk_nodes
from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    alter_table_commands,
    table_label,
)

# fmt: off
# Built-ins that are VOLATILE: a default calling one is evaluated once per existing row.
VOLATILE_FUNCTIONS: frozenset[str] = frozenset({
    "random", "random_normal", "setseed", "gen_random_uuid", "uuidv4", "uuidv7", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes", "gen_salt", "clock_timestamp",
    "timeofday", "nextval", "setval", "currval", "lastval", "txid_current", "txid_current_if_assigned",
    "pg_current_xact_id", "pg_current_xact_id_if_assigned",
})
# Built-ins that are STABLE or IMMUTABLE, i.e. evaluated once when the column is added (PostgreSQL 11+).
NON_VOLATILE_FUNCTIONS: frozenset[str] = frozenset({
    "now", "transaction_timestamp", "statement_timestamp", "current_timestamp", "localtimestamp",
    "current_date", "current_time", "localtime", "timezone", "current_user", "session_user", "user",
    "current_role", "current_schema", "current_database", "current_catalog", "current_setting",
    "inet_client_addr", "pg_backend_pid", "version", "to_timestamp", "to_date", "to_char", "to_number",
    "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval", "date_trunc",
    "date_part", "extract", "age", "lower", "upper", "initcap", "trim", "btrim", "ltrim", "rtrim",
    "length", "substr", "substring", "replace", "concat", "concat_ws", "format", "lpad", "rpad", "repeat",
    "md5", "abs", "round", "floor", "ceil", "ceiling", "trunc", "greatest", "least", "coalesce", "nullif",
    "to_json", "to_jsonb", "json_build_object", "jsonb_build_object", "json_build_array",
    "jsonb_build_array", "array_fill", "uuid_nil", "uuid_ns_dns", "uuid_ns_url", "uuid_ns_oid",
    "uuid_ns_x500", "uuid_generate_v3", "uuid_generate_v5", "int4", "int8", "text", "numeric",
})
# fmt: on
_SERIAL_TYPES = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}


def _function_name(call: pg_ast.FuncCall) -> tuple[str | None, str]:
    parts = [p.sval or "" for p in call.funcname or () if isinstance(p, pg_ast.String)]
    return (parts[-2] if len(parts) > 1 else None), (parts[-1] if parts else "")


def volatile_calls(expression: Any) -> tuple[list[str], list[str]]:
    """(known volatile, unknown) function calls in a default expression, as written."""
    volatile: list[str] = []
    unknown: list[str] = []
    for node in walk_nodes(expression):
        if not isinstance(node, pg_ast.FuncCall):
            continue
        schema, name = _function_name(node)
        if schema in (None, "pg_catalog") and name.lower() in NON_VOLATILE_FUNCTIONS:
            continue
        # Extension functions (uuid-ossp, pgcrypto) live in whatever schema the extension went to.
        target = volatile if name.lower() in VOLATILE_FUNCTIONS else unknown
        label = f"{schema}.{name}()" if schema else f"{name}()"
        if label not in target:
            target.append(label)
    return volatile, unknown


def _is_null(expression: Any) -> bool:
    while isinstance(expression, pg_ast.TypeCast):
        expression = expression.arg
    return isinstance(expression, pg_ast.A_Const) and bool(expression.isnull)


def _why_rewrite(column: pg_ast.ColumnDef, pg_version: int) -> str | None:
    """Why adding ``column`` rewrites the table, or None when it does not."""
    type_names = [n.sval or "" for n in (column.typeName.names if column.typeName else ()) or ()
                  if isinstance(n, pg_ast.String)]  # fmt: skip
    if type_names and type_names[-1].lower() in _SERIAL_TYPES:
        return f"{type_names[-1]}: its nextval() default is computed for every row"
    for constraint in column.constraints or ():
        if not isinstance(constraint, pg_ast.Constraint):
            continue
        if constraint.contype == ConstrType.CONSTR_IDENTITY:
            return "identity: its value is computed for every row"
        if constraint.contype != ConstrType.CONSTR_DEFAULT or _is_null(constraint.raw_expr):
            continue
        default = deparse(constraint.raw_expr)
        volatile, unknown = volatile_calls(constraint.raw_expr)
        if volatile:
            return f"volatile default {default}, computed for every row"
        if unknown:
            return (
                f"default {default}: {', '.join(unknown)} is not a known STABLE or IMMUTABLE function, "
                "and PostgreSQL treats functions as VOLATILE unless declared otherwise"
            )
        if pg_version < 11:
            return (
                f"default {default}: the target PostgreSQL {pg_version} is older than 11, which writes "
                "any non-null default into every row"
            )
    return None


def _rewriting_columns(recorded: RecordedOp, pg_version: int) -> list[tuple[TableKey, str, str]]:
    found: list[tuple[TableKey, str, str]] = []
    for key, cmd in alter_table_commands(recorded):
        column = cmd.def_
        if cmd.subtype != AlterTableType.AT_AddColumn or not isinstance(column, pg_ast.ColumnDef):
            continue
        why = _why_rewrite(column, pg_version)
        if why is not None:
            found.append((key, column.colname or "?", why))
    return found


class AddColumnVolatileDefault(Rule):
    id = "add-column-volatile-default"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = (
        "adding a column with a volatile default (random(), gen_random_uuid(), nextval(): serial and "
        "identity columns) rewrites the whole table under an ACCESS EXCLUSIVE lock"
    )
    safe_alternative = (
        "add the column without a default (or with a constant or STABLE one such as now() on PostgreSQL "
        "11+), then SET DEFAULT for new rows and backfill existing rows in batches"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        def message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
            # A table created earlier in the same function is empty: nothing to rewrite.
            columns = [
                (t, c, why) for t, c, why in _rewriting_columns(recorded, context.pg_version)
                if t not in created_before
            ]  # fmt: skip
            if not columns:
                return None
            described = ", ".join(f"{table_label(t)}.{c} ({why})" for t, c, why in columns)
            return f"adds column {described}, rewriting the table under an ACCESS EXCLUSIVE lock"

        return self.findings_per_operation(revision, message)
