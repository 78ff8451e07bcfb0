"""enum-value-added: ALTER TYPE ... ADD VALUE cannot be undone (PostgreSQL cannot remove an enum value)."""

from __future__ import annotations

from pglast import ast as pg_ast

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedOp, RecordedRevision


def _type_name(names: tuple[pg_ast.Node, ...] | None) -> str:
    parts = [n.sval or "" for n in names or () if isinstance(n, pg_ast.String)]
    # Compare public.x and x as the same type, like table_key does for tables.
    if len(parts) == 2 and parts[0] == "public":
        parts = parts[1:]
    return ".".join(parts)


def _created_types(ops: list[RecordedOp]) -> set[str]:
    return {
        _type_name(statement.typeName)
        for recorded in ops
        for statement in recorded.sql_statements
        if isinstance(statement, pg_ast.CreateEnumStmt)
    }


class EnumValueAdded(Rule):
    id = "enum-value-added"
    default_severity = "error"
    axes = ("irreversible",)
    problem = "ALTER TYPE ... ADD VALUE cannot be undone: PostgreSQL has no way to remove an enum value"
    safe_alternative = (
        "use a lookup table or a text column with a CHECK constraint, or declare the revision "
        'irreversible with dbrollback_irreversible = "reason"'
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            ops = revision.function(direction).ops
            for index, recorded in enumerate(ops):
                # A type created earlier in the same function is dropped whole by the inverse.
                earlier = _created_types(ops[:index])
                added: list[str] = []
                for statement in recorded.sql_statements:
                    # oldVal set means RENAME VALUE, which is reversible.
                    if not isinstance(statement, pg_ast.AlterEnumStmt):
                        continue
                    if statement.newVal and not statement.oldVal:
                        name = _type_name(statement.typeName)
                        if name not in earlier:
                            added.append(f"{statement.newVal!r} to enum type {name}")
                if added:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"adds value {'; '.join(added)}, which no downgrade can remove",
                        recorded.column,
                    ))  # fmt: skip
        return findings
