"""irreversible-data-change: the upgrade changes rows and the downgrade does not change them back."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    RowChange,
    TableKey,
    added_columns,
    created_tables,
    dropped_tables,
    row_changes,
    table_label,
)
from dbrollback.lint.rules.downgrade_not_inverse import function_is_unreadable

_VERBS = {"update": "updates rows of", "delete": "deletes rows from", "insert": "inserts rows into",
          "merge": "merges rows into"}  # fmt: skip


class IrreversibleDataChange(Rule):
    id = "irreversible-data-change"
    default_severity = "error"
    axes = ("irreversible", "data-loss")
    problem = (
        "the upgrade changes rows (UPDATE, DELETE, INSERT, bulk_insert) and the downgrade does not change "
        "them back, so rolling back keeps the upgrade's data"
    )
    safe_alternative = (
        "write the reverse data change in the downgrade (keep the old values in a backup column or table "
        "if they cannot be recomputed), or run the upgrade through `dbrollback upgrade` so the snapshot it "
        "takes first restores the rows"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        upgrade, downgrade = revision.upgrade, revision.downgrade
        if not upgrade.present or upgrade.opaque or downgrade.opaque:
            return []  # what an opaque function changes or reverses is not guessed
        if function_is_unreadable(downgrade.ops):
            return []
        new_tables = created_tables(upgrade.ops)
        new_columns = added_columns(upgrade.ops)
        gone = {table for recorded in downgrade.ops for table in dropped_tables(recorded)}
        reversed_tables = {row.table for recorded in downgrade.ops for row in row_changes(recorded)}

        def concerns_old_data(row: RowChange) -> bool:
            # Only data that existed before the upgrade and still exists after the downgrade: not in
            # tables the upgrade created or the downgrade drops, not only in columns the upgrade added.
            if row.table in new_tables or row.table in gone or row.table in reversed_tables:
                return False
            return not (row.kind == "update" and row.columns and all(
                (row.table, column) in new_columns for column in row.columns
            ))  # fmt: skip

        findings: list[Finding] = []
        for recorded in upgrade.ops:
            changes: dict[tuple[str, TableKey], None] = {}
            for row in row_changes(recorded):
                if concerns_old_data(row):
                    changes[(row.kind, row.table)] = None
            if not changes:
                continue
            what = "; ".join(f"{_VERBS[kind]} {table_label(table)}" for kind, table in changes)
            tables = ", ".join(dict.fromkeys(table_label(table) for _kind, table in changes))
            message = (
                f"{what}, and the downgrade has no UPDATE/INSERT/DELETE on {tables}: rolling back keeps "
                "the changed rows; only a dbrollback snapshot taken before the upgrade restores them"
            )
            findings.append(self.data_loss_finding(revision, recorded, message))
        return findings
