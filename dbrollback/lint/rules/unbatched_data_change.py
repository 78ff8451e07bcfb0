"""unbatched-data-change: UPDATE/DELETE without WHERE rewrites a whole table in one transaction."""

from __future__ import annotations

from pglast import ast as pg_ast

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    table_key,
    table_label,
)


def _message(recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
    changes: list[str] = []
    for statement in recorded.sql_statements:
        if not isinstance(statement, (pg_ast.UpdateStmt, pg_ast.DeleteStmt)):
            continue
        if statement.whereClause is not None or statement.relation is None:
            continue
        relation = statement.relation
        key = table_key(relation.schemaname, relation.relname or "")
        if key not in created_before:
            verb = "updates" if isinstance(statement, pg_ast.UpdateStmt) else "deletes"
            changes.append(f"{verb} every row of {table_label(key)}")
    return f"{'; '.join(changes)} (no WHERE) in one statement" if changes else None


class UnbatchedDataChange(Rule):
    id = "unbatched-data-change"
    default_severity = "error"
    axes = ("data-loss", "lock-rewrite")
    problem = "UPDATE/DELETE without WHERE changes every row at once, locking them until the migration ends"
    safe_alternative = (
        "take a dbrollback snapshot, then change the rows in keyed batches (WHERE id BETWEEN ...) "
        "outside the schema migration's transaction: expand.backfill(table, set=..., where=...) inside "
        "`with op.get_context().autocommit_block():` does the batching"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        # A table created in this revision holds no production rows yet.
        return self.findings_per_operation(revision, _message, include_upgrade_tables=True)
