"""concurrently-in-transaction: CONCURRENTLY cannot run inside a transaction block."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedOp, RecordedRevision


def _concurrent_statements(recorded: RecordedOp) -> list[str]:
    found: list[str] = []
    op = recorded.op
    if isinstance(op, alembic_ops.CreateIndexOp) and op.kw.get("postgresql_concurrently"):
        found.append(f"CREATE INDEX CONCURRENTLY {op.index_name or ''}".rstrip())
    if isinstance(op, alembic_ops.DropIndexOp) and op.kw.get("postgresql_concurrently"):
        found.append(f"DROP INDEX CONCURRENTLY {op.index_name}")
    for statement in recorded.sql_statements:
        if isinstance(statement, pg_ast.IndexStmt) and statement.concurrent:
            found.append(f"CREATE INDEX CONCURRENTLY {statement.idxname or ''}".rstrip())
        elif (
            isinstance(statement, pg_ast.DropStmt)
            and statement.concurrent
            and statement.removeType == ObjectType.OBJECT_INDEX
        ):
            found.append("DROP INDEX CONCURRENTLY")
        elif isinstance(statement, pg_ast.ReindexStmt) and any(
            isinstance(p, pg_ast.DefElem) and p.defname == "concurrently" for p in statement.params or ()
        ):
            found.append("REINDEX CONCURRENTLY")
    return found


class ConcurrentlyInTransaction(Rule):
    id = "concurrently-in-transaction"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = "CONCURRENTLY fails inside the migration's transaction (it cannot run in a transaction block)"
    safe_alternative = "wrap the operation in `with op.get_context().autocommit_block():`"

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for recorded in revision.ops:
            if recorded.in_autocommit_block:
                continue
            statements = _concurrent_statements(recorded)
            if statements:
                findings.append(self.finding(
                    revision, recorded.line, recorded.direction,
                    f"{'; '.join(statements)} runs inside the migration transaction and will fail",
                    recorded.column,
                ))  # fmt: skip
        return findings
