"""set-not-null: SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock."""

from __future__ import annotations

from typing import Any

import pglast
from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType, NullTestType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    created_tables,
    sql_alter_table_commands,
    table_key,
    table_label,
)

Column = tuple[TableKey, str]


def _not_null_column(expression: Any) -> str | None:
    """The column of a bare ``c IS NOT NULL`` expression, else None."""
    if (
        isinstance(expression, pg_ast.NullTest)
        and expression.nulltesttype == NullTestType.IS_NOT_NULL
        and isinstance(expression.arg, pg_ast.ColumnRef)
    ):
        fields = [f.sval for f in expression.arg.fields or () if isinstance(f, pg_ast.String)]
        return fields[-1] if fields else None
    return None


def _condition_column(condition: Any) -> str | None:
    text = condition if isinstance(condition, str) else str(condition)
    try:
        statement = pglast.parse_sql(f"SELECT {text}")[0].stmt
    except Exception:
        return None
    targets: tuple[Any, ...] = tuple(getattr(statement, "targetList", None) or ())
    return _not_null_column(targets[0].val) if len(targets) == 1 else None


def _proven_not_null(ops: list[RecordedOp]) -> set[Column]:
    """Columns with a validated ``CHECK (c IS NOT NULL)`` after ``ops`` (kept simple: by table and name)."""
    # (table, constraint name) -> column, for checks added NOT VALID and not validated yet.
    pending: dict[tuple[TableKey, str | None], str] = {}
    proven: set[Column] = set()
    for recorded in ops:
        op = recorded.op
        if isinstance(op, alembic_ops.CreateCheckConstraintOp):
            column = _condition_column(op.condition)
            key = table_key(op.schema, op.table_name)
            if column is not None:
                if op.kw.get("postgresql_not_valid"):
                    pending[(key, op.constraint_name and str(op.constraint_name))] = column
                else:
                    proven.add((key, column))
        for key, cmd in sql_alter_table_commands(recorded):
            constraint = cmd.def_
            adds = cmd.subtype == AlterTableType.AT_AddConstraint
            if adds and isinstance(constraint, pg_ast.Constraint):
                column = _not_null_column(constraint.raw_expr)
                if constraint.contype != ConstrType.CONSTR_CHECK or column is None:
                    continue
                if constraint.skip_validation:
                    pending[(key, constraint.conname)] = column
                else:
                    proven.add((key, column))
            elif cmd.subtype == AlterTableType.AT_ValidateConstraint and (key, cmd.name) in pending:
                proven.add((key, pending.pop((key, cmd.name))))
    return proven


def _set_not_null(recorded: RecordedOp) -> list[Column]:
    found: list[Column] = []
    op = recorded.op
    if isinstance(op, alembic_ops.AlterColumnOp) and op.modify_nullable is False:
        found.append((table_key(op.schema, op.table_name), op.column_name))
    for effect in recorded.effects:
        if effect.kind == "set_not_null" and effect.table is not None:
            key = table_key(effect.table.schema, effect.table.name)
            found.extend((key, column) for column in effect.columns)
    return found


class SetNotNull(Rule):
    id = "set-not-null"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = "SET NOT NULL scans every row under an ACCESS EXCLUSIVE lock, blocking reads and writes"
    safe_alternative = (
        "add CHECK (c IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it, then SET NOT NULL "
        "(PostgreSQL 12+ skips the scan) and drop the check"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for index, recorded in enumerate(ops):
                # A table created earlier in the same function is empty: nothing to scan.
                earlier = created_tables(ops[:index])
                # Only PostgreSQL 12+ uses a valid CHECK constraint to skip the scan.
                proven = _proven_not_null(ops[:index]) if context.pg_version >= 12 else set()
                columns = [
                    (t, c) for t, c in _set_not_null(recorded) if t not in earlier and (t, c) not in proven
                ]
                if columns:
                    names = ", ".join(f"{table_label(t)}.{c}" for t, c in columns)
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"sets {names} NOT NULL, scanning the whole table under an exclusive lock",
                        recorded.column,
                    ))  # fmt: skip
        return findings
