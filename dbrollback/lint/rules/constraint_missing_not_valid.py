"""constraint-missing-not-valid: adding a FOREIGN KEY or CHECK validates every row while locking the table.

Without NOT VALID, ``ADD CONSTRAINT … FOREIGN KEY`` scans the table holding SHARE ROW EXCLUSIVE on
it and on the referenced table (their writes wait), and ``ADD CONSTRAINT … CHECK`` scans it under
ACCESS EXCLUSIVE (reads wait too). Constraints written inline in ``ADD COLUMN`` — including the
foreign key of ``op.add_column(…, sa.Column(…, sa.ForeignKey(…)))`` — cannot be NOT VALID at all.
``NOT VALID`` skips the scan; a later ``VALIDATE CONSTRAINT`` scans under SHARE UPDATE EXCLUSIVE,
which lets reads and writes go on.
"""

from __future__ import annotations

from typing import TypeGuard

from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    alter_table_commands,
    table_key,
    table_label,
)

_VALIDATED_KINDS = (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK)


def _validates(constraint: object) -> TypeGuard[pg_ast.Constraint]:
    """A FOREIGN KEY / CHECK that PostgreSQL checks against the existing rows when it is added."""
    return (
        isinstance(constraint, pg_ast.Constraint)
        and constraint.contype in _VALIDATED_KINDS
        and not constraint.skip_validation
        # PostgreSQL 18: NOT ENFORCED constraints are never checked.
        and getattr(constraint, "is_enforced", True) is not False
    )


def _describe(table: TableKey, constraint: pg_ast.Constraint) -> str:
    name = f" {constraint.conname}" if constraint.conname else ""
    if constraint.contype == ConstrType.CONSTR_FOREIGN:
        referenced = constraint.pktable
        target = "?"
        if referenced is not None:
            target = table_label(table_key(referenced.schemaname, referenced.relname or ""))
        return (
            f"foreign key{name} on {table_label(table)} referencing {target}: validating it scans "
            f"{table_label(table)} holding SHARE ROW EXCLUSIVE locks on both tables, blocking their writes"
        )
    return (
        f"check constraint{name} on {table_label(table)}: validating it scans the table under an "
        "ACCESS EXCLUSIVE lock, blocking reads and writes"
    )


def validating_constraints(recorded: RecordedOp) -> list[tuple[TableKey, pg_ast.Constraint]]:
    """FOREIGN KEY / CHECK constraints this operation adds with validation of existing rows."""
    found: list[tuple[TableKey, pg_ast.Constraint]] = []
    for key, cmd in alter_table_commands(recorded):
        definition = cmd.def_
        if cmd.subtype == AlterTableType.AT_AddConstraint and _validates(definition):
            found.append((key, definition))
        elif cmd.subtype == AlterTableType.AT_AddColumn and isinstance(definition, pg_ast.ColumnDef):
            found.extend((key, c) for c in definition.constraints or () if _validates(c))
    return found


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    # A table created earlier in the same function is empty: validating it scans nothing.
    constraints = [(t, c) for t, c in validating_constraints(recorded) if t not in created_before]
    if not constraints:
        return None
    return "adds " + "; ".join(_describe(t, c) for t, c in constraints)


class ConstraintMissingNotValid(Rule):
    id = "constraint-missing-not-valid"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = (
        "adding a FOREIGN KEY or CHECK constraint without NOT VALID scans the whole table while "
        "blocking its writes (CHECK: reads too; FOREIGN KEY: writes to the referenced table too)"
    )
    safe_alternative = (
        "for a foreign key use expand.add_foreign_key(...), which validates it after the revision commits; "
        "else add it NOT VALID (postgresql_not_valid=True, or NOT VALID in SQL), then VALIDATE CONSTRAINT "
        "in a later revision or inside `with op.get_context().autocommit_block():`"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, _message)
