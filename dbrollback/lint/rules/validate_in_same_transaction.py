"""validate-in-same-transaction: VALIDATE CONSTRAINT in the transaction that added the constraint NOT VALID.

NOT VALID exists so that the ADD takes its lock only for a moment and the scan happens later under
the weaker SHARE UPDATE EXCLUSIVE lock of ``VALIDATE CONSTRAINT``. Locks are held until the
transaction ends, so validating in the same transaction keeps the ADD's lock (ACCESS EXCLUSIVE for a
CHECK, SHARE ROW EXCLUSIVE on both tables for a FOREIGN KEY) through the whole scan.

dbrollback's runner runs each revision in its own transaction, so "the same transaction" is the same
``upgrade()`` / ``downgrade()`` — except across ``autocommit_block()``: Alembic commits before the
block, each statement inside it commits on its own (several statements in one ``op.execute()``
string still share one implicit transaction), and a new transaction starts after it.
"""

from __future__ import annotations

from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedRevision,
    TableKey,
    alter_table_commands,
    table_key,
    table_label,
    with_tables_created_before,
)


def _lock(table: TableKey, constraint: pg_ast.Constraint) -> str:
    if constraint.contype == ConstrType.CONSTR_FOREIGN and constraint.pktable is not None:
        referenced = table_key(constraint.pktable.schemaname, constraint.pktable.relname or "")
        return f"SHARE ROW EXCLUSIVE locks on {table_label(table)} and {table_label(referenced)}"
    return f"ACCESS EXCLUSIVE lock on {table_label(table)}"


class ValidateInSameTransaction(Rule):
    id = "validate-in-same-transaction"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = (
        "VALIDATE CONSTRAINT in the transaction that added the constraint NOT VALID scans the table "
        "while still holding the ADD's lock, so NOT VALID gains nothing"
    )
    safe_alternative = (
        "validate in a later revision, or run the VALIDATE CONSTRAINT inside "
        "`with op.get_context().autocommit_block():` so the ADD has committed and released its lock "
        "(expand.add_foreign_key does this for a foreign key)"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            # (table, constraint) added NOT VALID in the current transaction -> (line, lock it holds).
            pending: dict[tuple[TableKey, str], tuple[int, str]] = {}
            for recorded, created_before in with_tables_created_before(revision.function(direction).ops):
                if recorded.in_autocommit_block:
                    pending.clear()  # the block began by committing, or the previous statement did
                validated: list[str] = []
                for key, cmd in alter_table_commands(recorded):
                    definition = cmd.def_
                    if (
                        cmd.subtype == AlterTableType.AT_AddConstraint
                        and isinstance(definition, pg_ast.Constraint)
                        and definition.skip_validation
                        and definition.conname
                    ):
                        pending[(key, definition.conname)] = (recorded.line, _lock(key, definition))
                    elif cmd.subtype == AlterTableType.AT_ValidateConstraint and cmd.name:
                        added = pending.pop((key, cmd.name), None)
                        # A table created earlier in the same function is empty: its scan is instant.
                        if added is not None and key not in created_before:
                            line, lock = added
                            validated.append(
                                f"{cmd.name} on {table_label(key)} in the transaction that added it "
                                f"NOT VALID (line {line}), so the scan runs under the {lock} taken there"
                            )
                if recorded.in_autocommit_block:
                    pending.clear()
                if validated:
                    findings.append(self.finding(
                        revision, recorded.line, direction,
                        f"validates constraint {'; '.join(validated)}", recorded.column,
                    ))  # fmt: skip
        return findings
