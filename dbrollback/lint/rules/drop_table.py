"""drop-table: dropping a table destroys its data."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    created_tables,
    dropped_tables,
    table_label,
    with_tables_created_before,
)


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
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            # The downgrade dropping a table the upgrade created is downgrade-drops-new-data.
            new = created_tables(revision.upgrade.ops) if direction == "downgrade" else set()
            for recorded, created_before in with_tables_created_before(ops):
                earlier = created_before
                tables = [t for t in dropped_tables(recorded) if t not in new and t not in earlier]
                if tables:
                    names = ", ".join(table_label(t) for t in tables)
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"drops table {names} and all its rows", recorded.column,
                    ))  # fmt: skip
        return findings
