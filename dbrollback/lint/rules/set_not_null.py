"""set-not-null: SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock.

From PostgreSQL 12 a validated ``CHECK (c IS NOT NULL)`` lets it skip the scan; that check may come
from the same revision or an earlier one (the usual safe sequence spreads ADD … NOT VALID,
VALIDATE and SET NOT NULL over several revisions), so the rule looks back through the revision's
ancestors — only when a SET NOT NULL is not already explained by its own revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pglast
from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.ast import Constraint
from pglast.enums import AlterTableType, ConstrType, NullTestType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.history import AncestorFact
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    dropped_tables,
    sql_alter_table_commands,
    table_key,
    table_label,
    with_tables_created_before,
)

Column = tuple[TableKey, str]
# (table, constraint name, column) of a CHECK (column IS NOT NULL).
NotNullCheck = tuple[TableKey, str | None, str]


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


@dataclass(frozen=True)
class NotNullChecks:
    """The ``CHECK (c IS NOT NULL)`` constraints known to exist: validated, and added NOT VALID and
    not validated yet. Kept simple: by table and constraint name; dropping the constraint or its
    table removes it."""

    validated: frozenset[NotNullCheck] = frozenset()
    pending: frozenset[NotNullCheck] = frozenset()

    @property
    def proven(self) -> set[Column]:
        return {(table, column) for table, _name, column in self.validated}

    def after(self, ops: list[RecordedOp]) -> NotNullChecks:
        validated, pending = set(self.validated), set(self.pending)

        def drop(table: TableKey, name: str | None) -> None:
            for checks in (validated, pending):
                checks -= {c for c in checks if c[0] == table and (name is None or c[1] == name)}

        for recorded in ops:
            op = recorded.op
            if isinstance(op, alembic_ops.CreateCheckConstraintOp):
                column = _condition_column(op.condition)
                if column is not None:
                    name = str(op.constraint_name) if op.constraint_name else None
                    check = (table_key(op.schema, op.table_name), name, column)
                    (pending if op.kw.get("postgresql_not_valid") else validated).add(check)
            elif isinstance(op, alembic_ops.DropConstraintOp) and op.constraint_name:
                drop(table_key(op.schema, op.table_name), str(op.constraint_name))
            for table in dropped_tables(recorded):
                drop(table, None)
            for key, cmd in sql_alter_table_commands(recorded):
                constraint = cmd.def_
                if cmd.subtype == AlterTableType.AT_AddConstraint and isinstance(constraint, Constraint):
                    column = _not_null_column(constraint.raw_expr)
                    if constraint.contype == ConstrType.CONSTR_CHECK and column is not None:
                        check = (key, constraint.conname, column)
                        (pending if constraint.skip_validation else validated).add(check)
                elif cmd.subtype == AlterTableType.AT_ValidateConstraint:
                    now_valid = {c for c in pending if c[0] == key and c[1] == cmd.name}
                    pending -= now_valid
                    validated |= now_valid
                elif cmd.subtype == AlterTableType.AT_DropConstraint and cmd.name:
                    drop(key, cmd.name)
        if validated == self.validated and pending == self.pending:
            return self
        return NotNullChecks(frozenset(validated), frozenset(pending))


def _merge(states: list[NotNullChecks]) -> NotNullChecks:
    if len(states) == 1:
        return states[0]
    return NotNullChecks(
        frozenset().union(*(s.validated for s in states)), frozenset().union(*(s.pending for s in states))
    )


def _may_change(state: NotNullChecks, source: str) -> bool:
    """Whether a revision with this text can change ``state``: adding a check needs "check";
    validating or dropping one needs "constraint", dropping its table "drop" — only worth a look
    when some check exists."""
    lowered = source.lower()
    if "check" in lowered:
        return True
    return bool(state.validated or state.pending) and ("constraint" in lowered or "drop" in lowered)


NOT_NULL_CHECKS: AncestorFact[NotNullChecks] = AncestorFact(
    key="not-null-checks",
    empty=NotNullChecks(),
    relevant=_may_change,
    apply=lambda state, recorded: state.after(recorded.upgrade.ops),
    merge=_merge,
)


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
        "(PostgreSQL 12+ skips the scan) and drop the check; for a new column, "
        "expand.add_not_null_column does all of it"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        inherited: NotNullChecks | None = None  # asked from the history only when needed

        def at_start(direction: str) -> NotNullChecks:
            nonlocal inherited
            if inherited is None:
                inherited = NotNullChecks()
                if context.history is not None and revision.revision is not None:
                    inherited = context.history.state_before(revision.revision, NOT_NULL_CHECKS)
            # The downgrade starts where the upgrade ended.
            return inherited.after(revision.upgrade.ops) if direction == "downgrade" else inherited

        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            local = NotNullChecks()
            for index, (recorded, created_before) in enumerate(with_tables_created_before(ops)):
                # A table created earlier in the same function is empty: nothing to scan.
                columns = [(t, c) for t, c in _set_not_null(recorded) if t not in created_before]
                # Only PostgreSQL 12+ uses a valid CHECK constraint to skip the scan.
                if columns and context.pg_version >= 12:
                    columns = [col for col in columns if col not in local.proven]
                    if columns:
                        proven = at_start(direction).after(ops[:index]).proven
                        columns = [col for col in columns if col not in proven]
                local = local.after([recorded])
                if columns:
                    names = ", ".join(f"{table_label(t)}.{c}" for t, c in columns)
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"sets {names} NOT NULL, scanning the whole table under an exclusive lock",
                        recorded.column,
                    ))  # fmt: skip
        return findings
