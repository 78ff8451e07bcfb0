"""downgrade-drops-new-data: the downgrade drops a table or column the upgrade created."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    added_columns,
    created_tables,
    dropped_columns,
    dropped_tables,
    expand_kind,
    opened_expansions,
    table_label,
)


class DowngradeDropsNewData(Rule):
    id = "downgrade-drops-new-data"
    default_severity = "info"
    axes = ("data-loss",)
    problem = "the downgrade drops what the upgrade created; data written there after the upgrade is lost"
    safe_alternative = "roll back through dbrollback, which snapshots the new table/column before dropping it"

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        new_tables = created_tables(revision.upgrade.ops)
        new_columns = added_columns(revision.upgrade.ops)
        findings: list[Finding] = []
        for recorded in revision.downgrade.ops:
            names = [table_label(t) for t in dropped_tables(recorded) if t in new_tables]
            names += [
                f"{table_label(t)}.{c}"
                for t, c in dropped_columns(recorded)
                if (t, c) in new_columns or t in new_tables
            ]
            if expand_kind(recorded) == "abort":
                # Columns the synced helpers add have every write copied back to the old column(s);
                # an add_not_null_column column is the only copy of what was written to it.
                names += [
                    f"{table_label(opened.table)}.{column}"
                    for _op, opened in opened_expansions(revision.upgrade.ops)
                    if opened.abort_loses_writes
                    for column in opened.columns
                ]
            if names:
                findings.append(self.finding(
                    revision, recorded.line, "downgrade",
                    f"drops {', '.join(names)}, created by the upgrade; data written there since is lost",
                    recorded.column,
                ))  # fmt: skip
        return findings
