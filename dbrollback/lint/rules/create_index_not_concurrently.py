"""create-index-not-concurrently: a plain CREATE INDEX blocks writes to the table while it builds."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
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
    # A table created earlier in the same revision is empty and unused: no lock matters.
    tables: list[TableKey] = []
    op = recorded.op
    if isinstance(op, alembic_ops.CreateIndexOp) and not op.kw.get("postgresql_concurrently"):
        tables.append(table_key(op.schema, op.table_name))
    for statement in recorded.sql_statements:
        relation = getattr(statement, "relation", None)
        if isinstance(statement, pg_ast.IndexStmt) and not statement.concurrent and relation:
            tables.append(table_key(relation.schemaname, relation.relname or ""))
    tables = [t for t in tables if t not in created_before]
    if not tables:
        return None
    names = ", ".join(table_label(t) for t in tables)
    return f"creates an index on {names} without CONCURRENTLY, blocking writes while it builds"


class CreateIndexNotConcurrently(Rule):
    id = "create-index-not-concurrently"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = "CREATE INDEX without CONCURRENTLY blocks all writes to the table until the index is built"
    safe_alternative = (
        "use expand.create_index(name, table, columns), or create it with postgresql_concurrently=True "
        "inside `with op.get_context().autocommit_block():`"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, _message)
