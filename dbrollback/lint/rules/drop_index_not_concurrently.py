"""drop-index-not-concurrently: a plain DROP INDEX blocks all access to the table while it waits and runs."""

from __future__ import annotations

from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    created_tables,
    opened_expansion,
    table_key,
)


class _Created:
    """Indexes and tables some operations create. An index dropped again is either new (created
    earlier in the same function: nobody uses it) or the upgrade's own (the downgrade undoing it:
    issue #4 reports that as downgrade-drops-new-data at most, never as a lock problem)."""

    def __init__(self, ops: list[RecordedOp]) -> None:
        self.tables: set[TableKey] = created_tables(ops)
        self.indexes: set[str] = set()
        self._table_ops = [r.op for r in ops if isinstance(r.op, alembic_ops.CreateTableOp)]
        self._table_indexes: set[str] | None = None
        for recorded in ops:
            if isinstance(recorded.op, alembic_ops.CreateIndexOp) and recorded.op.index_name:
                self.indexes.add(str(recorded.op.index_name))
            opened = opened_expansion(recorded)  # expand.create_index
            if opened is not None and opened.index is not None:
                self.indexes.add(opened.index)
            for statement in recorded.sql_statements:
                if isinstance(statement, pg_ast.IndexStmt) and statement.idxname:
                    self.indexes.add(statement.idxname)

    def has_index(self, name: str) -> bool:
        if name in self.indexes:
            return True
        if self._table_indexes is None:
            # Indexes create_table makes (index=True, sa.Index): building the Table costs about a
            # millisecond, so only when an explicit name did not match.
            self._table_indexes = set()
            for op in self._table_ops:
                try:
                    table = op.to_table()
                except Exception:
                    continue
                self._table_indexes |= {str(i.name) for i in table.indexes if i.name is not None}
        return name in self._table_indexes


def _dropped_indexes(recorded: RecordedOp) -> list[tuple[TableKey | None, str, str]]:
    """(table if named, index name, label) of each index this operation drops without CONCURRENTLY."""
    dropped: list[tuple[TableKey | None, str, str]] = []
    op = recorded.op
    if isinstance(op, alembic_ops.DropIndexOp) and not op.kw.get("postgresql_concurrently"):
        table = table_key(op.schema, op.table_name) if op.table_name else None
        dropped.append((table, str(op.index_name), str(op.index_name)))
    for statement in recorded.sql_statements:
        if (
            isinstance(statement, pg_ast.DropStmt)
            and statement.removeType == ObjectType.OBJECT_INDEX
            and not statement.concurrent
        ):
            for obj in statement.objects or ():
                parts = [n.sval or "" for n in obj if isinstance(n, pg_ast.String)]
                if parts:
                    dropped.append((None, parts[-1], ".".join(parts)))
    return dropped


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
            if self.needs_whole_upgrade(revision, direction):
                continue
            ops = revision.function(direction).ops
            upgrade_created = _Created(revision.upgrade.ops) if direction == "downgrade" else None
            for index, recorded in enumerate(ops):
                dropped = _dropped_indexes(recorded)
                if not dropped:
                    continue
                created = [_Created(ops[:index])] + ([upgrade_created] if upgrade_created else [])
                names = [
                    label
                    for table, name, label in dropped
                    if not any(
                        (table is not None and table in c.tables) or c.has_index(name) for c in created
                    )
                ]
                if names:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"drops index {', '.join(names)} without CONCURRENTLY, blocking the table",
                        recorded.column,
                    ))  # fmt: skip
        return findings
