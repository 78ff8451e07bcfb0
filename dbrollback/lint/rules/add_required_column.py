"""add-required-column: a NOT NULL column without a default cannot be added to a table with rows."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    sql_alter_table_commands,
    table_key,
    table_label,
)

# Constraints that give the new column a value in existing rows.
_FILLED = (ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)
_SERIAL = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}


def _required_columns(recorded: RecordedOp) -> list[tuple[TableKey, str]]:
    found: list[tuple[TableKey, str]] = []
    op = recorded.op
    if isinstance(op, alembic_ops.AddColumnOp):
        column = op.column
        filled = column.server_default is not None or column.identity is not None or column.computed
        if column.nullable is False and not filled:
            found.append((table_key(op.schema, op.table_name), column.name))
    for key, cmd in sql_alter_table_commands(recorded):
        definition = cmd.def_
        if cmd.subtype != AlterTableType.AT_AddColumn or not isinstance(definition, pg_ast.ColumnDef):
            continue
        kinds = {c.contype for c in definition.constraints or () if isinstance(c, pg_ast.Constraint)}
        type_names = definition.typeName.names if definition.typeName else ()
        serial = any(isinstance(n, pg_ast.String) and n.sval in _SERIAL for n in type_names or ())
        required = ConstrType.CONSTR_NOTNULL in kinds or ConstrType.CONSTR_PRIMARY in kinds
        if required and not serial and not kinds.intersection(_FILLED):
            found.append((key, definition.colname or "?"))
    return found


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    columns = [(t, c) for t, c in _required_columns(recorded) if t not in created_before]
    if not columns:
        return None
    names = ", ".join(f"{table_label(t)}.{c}" for t, c in columns)
    return f"adds NOT NULL column {names} without a default"


class AddRequiredColumn(Rule):
    id = "add-required-column"
    default_severity = "error"
    axes = ("lock-rewrite", "breaks-running-code")
    problem = "adding a NOT NULL column without a default fails on a table with rows, and breaks old inserts"
    safe_alternative = (
        "use expand.add_not_null_column(table, column, type, backfill=...), which adds the column "
        "nullable, fills it in batches, then adds CHECK (c IS NOT NULL) NOT VALID, validates it and "
        "sets NOT NULL at `dbrollback contract` (or add it with a server_default)"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        # A table created in this revision is empty: NOT NULL without default is fine there.
        return self.findings_per_operation(revision, _message, include_upgrade_tables=True)
