"""drop-table: dropping a table destroys its data."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    dropped_tables,
    table_label,
)


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    tables = [t for t in dropped_tables(recorded) if t not in created_before]
    if not tables:
        return None
    return f"drops table {', '.join(table_label(t) for t in tables)} and all its rows"


class DropTable(Rule):
    id = "drop-table"
    default_severity = "error"
    axes = ("data-loss", "breaks-running-code")
    problem = "dropping a table deletes every row in it; running code that still uses the table fails"
    safe_alternative = (
        "stop using the table in a previous release, take a dbrollback snapshot of it, then drop it "
        "(or rename it and drop it later)"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        # The downgrade dropping a table the upgrade created is downgrade-drops-new-data.
        return self.findings_per_operation(revision, _message, include_upgrade_tables=True)
