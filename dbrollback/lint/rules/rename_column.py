"""rename-column: running code that uses the old name breaks."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    table_key,
    table_label,
)


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    renames: list[str] = []
    op = recorded.op
    if isinstance(op, alembic_ops.AlterColumnOp) and op.modify_name:
        key = table_key(op.schema, op.table_name)
        if key not in created_before:
            renames.append(f"{table_label(key)}.{op.column_name} to {op.modify_name}")
    for effect in recorded.effects:
        if effect.kind == "rename_column" and effect.table is not None:
            key = table_key(effect.table.schema, effect.table.name)
            if key not in created_before:
                renames.append(effect.reason.removeprefix("renames column "))
    return f"renames column {'; '.join(renames)}" if renames else None


class RenameColumn(Rule):
    id = "rename-column"
    default_severity = "warning"
    axes = ("breaks-running-code",)
    problem = "renaming a column breaks every running query that uses the old name"
    safe_alternative = (
        "use expand.rename_column(table, old, new): both columns exist and stay equal until "
        "`dbrollback contract` drops the old one (by hand: add the new column, write to both and backfill, "
        "move the readers, then drop the old column later)"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, _message)
