"""add-primary-key: ADD PRIMARY KEY builds its index (and checks for NULLs) while the table is locked.

``ALTER TABLE … ADD PRIMARY KEY (…)`` (``op.create_primary_key``, or ``PRIMARY KEY`` inline in
``ADD COLUMN``) builds a unique index under an ACCESS EXCLUSIVE lock, and makes its columns NOT
NULL, which scans the table unless they already are. ``PRIMARY KEY USING INDEX`` adopts an index
built with ``CREATE UNIQUE INDEX CONCURRENTLY`` instead.
"""

from __future__ import annotations

from pglast.enums import ConstrType

from dbrollback.lint.rules.add_unique_constraint import IndexBuildingConstraintRule


class AddPrimaryKey(IndexBuildingConstraintRule):
    id = "add-primary-key"
    default_severity = "error"
    axes = ("lock-rewrite",)
    problem = (
        "adding a PRIMARY KEY builds its index, and scans for NULLs unless the columns are NOT NULL, "
        "under an ACCESS EXCLUSIVE lock that blocks reads and writes"
    )
    safe_alternative = (
        "make the columns NOT NULL first (CHECK … NOT VALID, VALIDATE, SET NOT NULL), CREATE UNIQUE INDEX "
        "CONCURRENTLY inside `with op.get_context().autocommit_block():`, then ALTER TABLE … ADD CONSTRAINT "
        "… PRIMARY KEY USING INDEX"
    )
    constraint_kind = ConstrType.CONSTR_PRIMARY
    constraint_noun = "primary key"
