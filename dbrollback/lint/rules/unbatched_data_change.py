"""unbatched-data-change: UPDATE/DELETE without WHERE rewrites a whole table in one transaction."""

from __future__ import annotations

from pglast import ast as pg_ast

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    created_tables,
    table_key,
    table_label,
    with_tables_created_before,
)


class UnbatchedDataChange(Rule):
    id = "unbatched-data-change"
    default_severity = "error"
    axes = ("data-loss", "lock-rewrite")
    problem = "UPDATE/DELETE without WHERE changes every row at once, locking them until the migration ends"
    safe_alternative = (
        "take a dbrollback snapshot, then change the rows in keyed batches (WHERE id BETWEEN ...) "
        "outside the schema migration's transaction"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            new = created_tables(revision.upgrade.ops) if direction == "downgrade" else set()
            for recorded, created_before in with_tables_created_before(ops):
                # A table created in this revision holds no production rows yet.
                earlier = created_before | new
                changes: list[str] = []
                for statement in recorded.sql_statements:
                    if not isinstance(statement, (pg_ast.UpdateStmt, pg_ast.DeleteStmt)):
                        continue
                    if statement.whereClause is not None or statement.relation is None:
                        continue
                    relation = statement.relation
                    key = table_key(relation.schemaname, relation.relname or "")
                    if key not in earlier:
                        verb = "updates" if isinstance(statement, pg_ast.UpdateStmt) else "deletes"
                        changes.append(f"{verb} every row of {table_label(key)}")
                if changes:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"{'; '.join(changes)} (no WHERE) in one statement", recorded.column,
                    ))  # fmt: skip
        return findings
