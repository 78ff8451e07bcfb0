"""drop-column: dropping a column destroys its data."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    added_columns,
    created_tables,
    dropped_columns,
    table_label,
)


class DropColumn(Rule):
    id = "drop-column"
    default_severity = "error"
    axes = ("data-loss", "breaks-running-code")
    problem = "dropping a column deletes its values in every row; running code that reads it fails"
    safe_alternative = (
        "stop reading and writing the column in a previous release, take a dbrollback snapshot, then drop "
        "it; a column replaced with an expand helper is dropped by `dbrollback contract`, not a revision"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            # Dropping what the upgrade added is downgrade-drops-new-data's: needs the whole upgrade.
            if self.needs_whole_upgrade(revision, direction):
                continue
            ops = revision.function(direction).ops
            new_tables = created_tables(revision.upgrade.ops) if direction == "downgrade" else set()
            new_columns = added_columns(revision.upgrade.ops) if direction == "downgrade" else set()
            for index, recorded in enumerate(ops):
                earlier_tables = created_tables(ops[:index]) | new_tables
                earlier_columns = added_columns(ops[:index]) | new_columns
                columns = [
                    (table, column)
                    for table, column in dropped_columns(recorded)
                    if table not in earlier_tables and (table, column) not in earlier_columns
                ]
                if columns:
                    names = ", ".join(f"{table_label(t)}.{c}" for t, c in columns)
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"drops column {names} and its values", recorded.column,
                    ))  # fmt: skip
        return findings
