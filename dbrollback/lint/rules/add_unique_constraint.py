"""add-unique-constraint: ADD CONSTRAINT … UNIQUE builds its index while the table is locked.

``ALTER TABLE … ADD CONSTRAINT … UNIQUE (…)`` (``op.create_unique_constraint``, ``unique=True`` on
``op.add_column``, or ``UNIQUE`` inline in ``ADD COLUMN``) builds a new unique index under an ACCESS
EXCLUSIVE lock: reads and writes wait for the whole build. ``UNIQUE USING INDEX`` adopts an index
already built with ``CREATE UNIQUE INDEX CONCURRENTLY`` and holds the lock only for a moment.
"""

from __future__ import annotations

from typing import ClassVar

from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ConstrType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    alter_table_commands,
    table_label,
)


def index_building_constraints(recorded: RecordedOp, kind: ConstrType) -> list[tuple[TableKey, str]]:
    """(table, label) of each ``kind`` (UNIQUE / PRIMARY KEY) constraint this operation adds that builds
    its own index, i.e. not ``USING INDEX``."""
    found: list[tuple[TableKey, str]] = []
    for key, cmd in alter_table_commands(recorded):
        definition = cmd.def_
        if cmd.subtype == AlterTableType.AT_AddConstraint and isinstance(definition, pg_ast.Constraint):
            if definition.contype == kind and not definition.indexname:
                keys = definition.keys or ()
                columns = ", ".join(k.sval or "" for k in keys if isinstance(k, pg_ast.String))
                name = f"{definition.conname} " if definition.conname else ""
                found.append((key, f"{name}({columns})"))
        elif cmd.subtype == AlterTableType.AT_AddColumn and isinstance(definition, pg_ast.ColumnDef):
            for constraint in definition.constraints or ():
                if isinstance(constraint, pg_ast.Constraint) and constraint.contype == kind:
                    found.append((key, f"({definition.colname})"))
    return found


class IndexBuildingConstraintRule(Rule):
    """Adding a constraint of :attr:`constraint_kind` (UNIQUE, PRIMARY KEY) that builds its own index."""

    constraint_kind: ClassVar[ConstrType]
    constraint_noun: ClassVar[str]

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return self.findings_per_operation(revision, self._message)

    def _message(self, recorded: RecordedOp, created_before: set[TableKey]) -> str | None:
        # A table created earlier in the same function is empty: its index builds instantly.
        constraints = [
            f"{table_label(t)} {label}"
            for t, label in index_building_constraints(recorded, self.constraint_kind)
            if t not in created_before
        ]
        if not constraints:
            return None
        return (
            f"adds {self.constraint_noun} {', '.join(constraints)}, building its index under an ACCESS "
            "EXCLUSIVE lock"
        )


class AddUniqueConstraint(IndexBuildingConstraintRule):
    id = "add-unique-constraint"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = (
        "adding a UNIQUE constraint builds its index under an ACCESS EXCLUSIVE lock, blocking reads "
        "and writes until the whole table is indexed"
    )
    safe_alternative = (
        "build the index with expand.create_index(name, table, columns, unique=True) or CREATE UNIQUE "
        "INDEX CONCURRENTLY (inside `with op.get_context().autocommit_block():`), then "
        "ALTER TABLE … ADD CONSTRAINT … UNIQUE USING INDEX, which only holds the lock for a moment"
    )
    constraint_kind = ConstrType.CONSTR_UNIQUE
    constraint_noun = "unique constraint"
