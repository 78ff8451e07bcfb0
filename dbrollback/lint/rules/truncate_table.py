"""truncate-table: TRUNCATE deletes every row of the table."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    TableKey,
    created_tables,
    table_key,
    table_label,
    with_tables_created_before,
)


class TruncateTable(Rule):
    id = "truncate-table"
    default_severity = "error"
    axes = ("data-loss", "lock-rewrite")
    problem = "TRUNCATE deletes every row of the table and takes an ACCESS EXCLUSIVE lock"
    safe_alternative = (
        "take a dbrollback snapshot of the table first, or delete the rows in batches in a data migration"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            new = created_tables(revision.upgrade.ops) if direction == "downgrade" else set()
            for recorded, created_before in with_tables_created_before(ops):
                earlier = created_before | new
                tables: list[TableKey] = []
                for effect in recorded.effects:
                    if effect.kind == "truncate" and effect.table is not None:
                        key = table_key(effect.table.schema, effect.table.name)
                        if key not in earlier and key not in tables:
                            tables.append(key)
                if tables:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"truncates {', '.join(table_label(t) for t in tables)}, deleting every row",
                        recorded.column,
                    ))  # fmt: skip
        return findings
