"""drop-schema: DROP SCHEMA ... CASCADE destroys every table in the schema with its data."""

from __future__ import annotations

from pglast import ast as pg_ast
from pglast.enums import DropBehavior, ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedOp, RecordedRevision


def _created_schemas(ops: list[RecordedOp]) -> set[str]:
    return {
        statement.schemaname
        for recorded in ops
        for statement in recorded.sql_statements
        if isinstance(statement, pg_ast.CreateSchemaStmt) and statement.schemaname
    }


class DropSchema(Rule):
    id = "drop-schema"
    default_severity = "error"
    axes = ("data-loss", "breaks-running-code")
    problem = "DROP SCHEMA ... CASCADE deletes every table, view and function in the schema with their data"
    safe_alternative = (
        "drop the schema's objects one by one in separate reviewed revisions after a dbrollback snapshot, "
        "then drop the empty schema without CASCADE"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            if self.needs_whole_upgrade(revision, direction):
                continue  # whether the upgrade created the schema is not known
            ops = revision.function(direction).ops
            new = _created_schemas(revision.upgrade.ops) if direction == "downgrade" else set()
            for index, recorded in enumerate(ops):
                earlier = _created_schemas(ops[:index]) | new
                schemas: list[str] = []
                for statement in recorded.sql_statements:
                    # Without CASCADE PostgreSQL refuses to drop a non-empty schema: no data can be lost.
                    if (
                        isinstance(statement, pg_ast.DropStmt)
                        and statement.removeType == ObjectType.OBJECT_SCHEMA
                        and statement.behavior == DropBehavior.DROP_CASCADE
                    ):
                        for name in statement.objects or ():
                            if isinstance(name, pg_ast.String) and name.sval and name.sval not in earlier:
                                schemas.append(name.sval)
                if schemas:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"drops schema {', '.join(schemas)} with CASCADE, deleting every table in it",
                        recorded.column,
                    ))  # fmt: skip
        return findings
