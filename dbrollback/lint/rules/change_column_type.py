"""change-column-type: changing a column's type usually rewrites the table under an exclusive lock."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.operations import ops as alembic_ops
from sqlalchemy.sql.sqltypes import to_instance

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    added_columns,
    created_tables,
    table_key,
    table_label,
)


def _varchar(type_: sa.types.TypeEngine[Any]) -> bool:
    # Enum and CHAR subclass String but are not varchar (char -> text is not binary-coercible).
    return isinstance(type_, sa.String) and not isinstance(type_, (sa.Text, sa.Enum, sa.CHAR, sa.NCHAR))


def binary_coercible(existing: Any, new: Any) -> bool:
    """True for changes PostgreSQL makes without a rewrite: varchar -> text, varchar widening."""
    if existing is None or new is None:
        return False
    old_type, new_type = to_instance(existing), to_instance(new)
    if not _varchar(old_type) or getattr(old_type, "collation", None) != getattr(new_type, "collation", None):
        return False
    if isinstance(new_type, sa.Text) and not isinstance(new_type, sa.Enum):
        return True
    if _varchar(new_type):
        old_length, new_length = old_type.length, new_type.length
        return new_length is None or (old_length is not None and new_length >= old_length)
    return False


def _type_changes(recorded: RecordedOp) -> list[tuple[TableKey, str, str]]:
    found: list[tuple[TableKey, str, str]] = []
    op = recorded.op
    changed = isinstance(op, alembic_ops.AlterColumnOp) and op.modify_type is not None
    if isinstance(op, alembic_ops.AlterColumnOp) and changed:
        if binary_coercible(op.existing_type, op.modify_type):
            return found
        new = to_instance(op.modify_type)
        try:
            label = str(new.compile(dialect=sa.dialects.postgresql.dialect()))
        except Exception:
            label = type(new).__name__
        found.append((table_key(op.schema, op.table_name), op.column_name, f" to {label}"))
    for effect in recorded.effects:
        # Raw SQL does not say the old type: any change counts.
        if effect.kind == "alter_column_type" and effect.table is not None:
            key = table_key(effect.table.schema, effect.table.name)
            found.extend((key, column, "") for column in effect.columns)
    return found


class ChangeColumnType(Rule):
    id = "change-column-type"
    default_severity = "error"
    axes = ("lock-rewrite", "breaks-running-code")
    problem = "changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE lock"
    safe_alternative = (
        "use expand.change_column_type(table, column, new_type, up=..., down=...), which adds a new column "
        "of the new type kept in sync and backfilled in batches, the old one dropped by `dbrollback "
        "contract` once the code is switched over (varchar -> text and varchar widening are free: pass "
        "existing_type so the lint can tell)"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for index, recorded in enumerate(ops):
                # Tables and columns created earlier in the same function are empty: no rewrite cost.
                earlier_tables = created_tables(ops[:index])
                earlier_columns = added_columns(ops[:index])
                changes = [
                    f"{table_label(t)}.{c}{to}"
                    for t, c, to in _type_changes(recorded)
                    if t not in earlier_tables and (t, c) not in earlier_columns
                ]
                if changes:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"changes the type of {', '.join(changes)}, rewriting the table", recorded.column,
                    ))  # fmt: skip
        return findings
