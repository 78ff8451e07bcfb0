"""drop-index-not-concurrently: a plain DROP INDEX blocks all access to the table while it waits and runs."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedOp, RecordedRevision, created_tables, table_key


def _created_indexes(ops: list[RecordedOp]) -> set[str]:
    names: set[str] = set()
    for recorded in ops:
        if isinstance(recorded.op, alembic_ops.CreateIndexOp) and recorded.op.index_name:
            names.add(str(recorded.op.index_name))
        for statement in recorded.sql_statements:
            if isinstance(statement, pg_ast.IndexStmt) and statement.idxname:
                names.add(statement.idxname)
    return names


class DropIndexNotConcurrently(Rule):
    id = "drop-index-not-concurrently"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock, blocking reads and writes"
    safe_alternative = (
        "drop it with postgresql_concurrently=True inside `with op.get_context().autocommit_block():`"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for index, recorded in enumerate(ops):
                # An index or table created earlier in the same function is not in use yet.
                earlier_tables = created_tables(ops[:index])
                earlier_indexes = _created_indexes(ops[:index])
                names: list[str] = []
                op = recorded.op
                if isinstance(op, alembic_ops.DropIndexOp) and not op.kw.get("postgresql_concurrently"):
                    on_new_table = op.table_name is not None and (
                        table_key(op.schema, op.table_name) in earlier_tables
                    )
                    if not on_new_table and str(op.index_name) not in earlier_indexes:
                        names.append(str(op.index_name))
                for statement in recorded.sql_statements:
                    if (
                        isinstance(statement, pg_ast.DropStmt)
                        and statement.removeType == ObjectType.OBJECT_INDEX
                        and not statement.concurrent
                    ):
                        for obj in statement.objects or ():
                            parts = [n.sval or "" for n in obj if isinstance(n, pg_ast.String)]
                            if parts and parts[-1] not in earlier_indexes:
                                names.append(".".join(parts))
                if names:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"drops index {', '.join(names)} without CONCURRENTLY, blocking the table",
                        recorded.column,
                    ))  # fmt: skip
        return findings
