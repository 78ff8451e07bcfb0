"""truncate-table: TRUNCATE deletes every row of the table."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    table_key,
    table_label,
)


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    tables: list[TableKey] = []
    for effect in recorded.effects:
        if effect.kind == "truncate" and effect.table is not None:
            key = table_key(effect.table.schema, effect.table.name)
            if key not in created_before and key not in tables:
                tables.append(key)
    if not tables:
        return None
    return f"truncates {', '.join(table_label(t) for t in tables)}, deleting every row"


class TruncateTable(Rule):
    id = "truncate-table"
    default_severity = "error"
    axes = ("data-loss", "lock-rewrite")
    problem = "TRUNCATE deletes every row of the table and takes an ACCESS EXCLUSIVE lock"
    safe_alternative = (
        "take a dbrollback snapshot of the table first, or delete the rows in batches in a data migration"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, _message, include_upgrade_tables=True)
