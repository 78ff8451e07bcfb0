"""create-index-not-concurrently: a plain CREATE INDEX blocks writes to the table while it builds."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    TableKey,
    table_key,
    table_label,
    with_tables_created_before,
)


class CreateIndexNotConcurrently(Rule):
    id = "create-index-not-concurrently"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = "CREATE INDEX without CONCURRENTLY blocks all writes to the table until the index is built"
    safe_alternative = (
        "create it with postgresql_concurrently=True inside `with op.get_context().autocommit_block():`"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for recorded, created_before in with_tables_created_before(ops):
                # A table created earlier in the same revision is empty and unused: no lock matters.
                earlier = created_before
                tables: list[TableKey] = []
                op = recorded.op
                if isinstance(op, alembic_ops.CreateIndexOp) and not op.kw.get("postgresql_concurrently"):
                    tables.append(table_key(op.schema, op.table_name))
                for statement in recorded.sql_statements:
                    relation = getattr(statement, "relation", None)
                    if isinstance(statement, pg_ast.IndexStmt) and not statement.concurrent and relation:
                        tables.append(table_key(relation.schemaname, relation.relname or ""))
                tables = [t for t in tables if t not in earlier]
                if tables:
                    names = ", ".join(table_label(t) for t in tables)
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"creates an index on {names} without CONCURRENTLY, blocking writes while it builds",
                        recorded.column,
                    ))  # fmt: skip
        return findings
