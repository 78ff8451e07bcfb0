"""rename-table: running code that uses the old table name breaks."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    table_key,
    table_label,
    with_tables_created_before,
)


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
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for recorded, created_before in with_tables_created_before(ops):
                # A table created earlier in the same function has no running readers yet.
                earlier = created_before
                renames: list[str] = []
                op = recorded.op
                if isinstance(op, alembic_ops.RenameTableOp):
                    key = table_key(op.schema, op.table_name)
                    if key not in earlier:
                        renames.append(f"{table_label(key)} to {op.new_table_name}")
                for effect in recorded.effects:
                    if effect.kind == "rename_table" and effect.table is not None:
                        key = table_key(effect.table.schema, effect.table.name)
                        if key not in earlier:
                            renames.append(effect.reason.removeprefix("renames table "))
                if renames:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"renames table {'; '.join(renames)}", recorded.column,
                    ))  # fmt: skip
        return findings
