"""rename-table: running code that uses the old table name breaks."""

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
    # A table created earlier in the same function has no running readers yet.
    renames: list[str] = []
    op = recorded.op
    if isinstance(op, alembic_ops.RenameTableOp):
        key = table_key(op.schema, op.table_name)
        if key not in created_before:
            renames.append(f"{table_label(key)} to {op.new_table_name}")
    for effect in recorded.effects:
        if effect.kind == "rename_table" and effect.table is not None:
            key = table_key(effect.table.schema, effect.table.name)
            if key not in created_before:
                renames.append(effect.reason.removeprefix("renames table "))
    return f"renames table {'; '.join(renames)}" if renames else None


class RenameTable(Rule):
    id = "rename-table"
    default_severity = "warning"
    axes = ("breaks-running-code",)
    problem = "renaming a table breaks every running query that uses the old name"
    safe_alternative = (
        "create the new table (or a view with the new name), move the readers and writers, "
        "then drop the old name in a later release"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, _message)
