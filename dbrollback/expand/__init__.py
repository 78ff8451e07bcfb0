"""Zero-downtime schema changes for Alembic revisions: expand now, contract later.

Use these in a revision file instead of the raw Alembic operation::

    from dbrollback import expand

    def upgrade():
        expand.rename_column("customers", "name", "full_name")

    def downgrade():
        expand.abort()

Each call is an Alembic operation (so ``dbrollback lint`` sees it and knows it is safe), runs in
the revision's transaction, and records an open expansion in the catalog. ``dbrollback upgrade``
then backfills the new shape in small batches after the revision commits; ``dbrollback contract``
drops the old shape once the new code is deployed, ``dbrollback abort`` (or the revision's
downgrade) drops the new one. See docs/expand-contract.md.
"""

from __future__ import annotations

import sys
from typing import Any

from alembic.operations import MigrateOperation, Operations

from dbrollback.errors import ConfigError

__all__ = [
    "ExpandOperation",
    "abort",
    "add_foreign_key",
    "add_not_null_column",
    "add_synced_column",
    "backfill",
    "change_column_type",
    "create_index",
    "rename_column",
    "split_column",
]


class ExpandOperation(MigrateOperation):
    """One expand helper call, as an Alembic operation object (recorded by lint like op.* calls)."""

    def __init__(
        self, kind: str, table: str, schema: str | None, arguments: dict[str, Any], revision: str | None
    ) -> None:
        self.kind = kind
        self.table_name = table
        self.schema = schema
        self.arguments = arguments
        self.revision = revision

    def __repr__(self) -> str:
        return f"ExpandOperation({self.kind!r}, {self.table_name!r}, {self.arguments!r})"


def _calling_revision() -> str | None:
    """The ``revision`` id of the revision module whose upgrade()/downgrade() called us."""
    frame = sys._getframe(2)
    while frame is not None:
        found = frame.f_globals
        if isinstance(found.get("revision"), str) and "down_revision" in found:
            return str(found["revision"])
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _invoke(kind: str, table: str, schema: str | None, **arguments: Any) -> Any:
    from alembic import op

    return op.invoke(ExpandOperation(kind, table, schema, arguments, _calling_revision()))


def add_synced_column(
    table: str,
    new_column: str,
    type: str,
    *,
    up: str,
    old_column: str,
    down: str | None = None,
    default: str | None = None,
    schema: str | None = None,
) -> None:
    """Add ``new_column`` computed by ``up`` (SQL over the table's columns) and kept in sync by a
    trigger. With ``down`` (SQL over the new column giving ``old_column``) writes to the new column
    flow back to ``old_column`` too; without it, writing the new column alone is refused while the
    expansion is open. Contract drops ``old_column`` and sets ``default`` on the new one."""
    _invoke(
        "synced_column",
        table,
        schema,
        old=[old_column],
        new=[{"name": new_column, "type": type, "up": up}],
        down={old_column: down} if (old_column and down) else {},
        new_default=default,
    )


def rename_column(table: str, old: str, new: str, *, schema: str | None = None) -> None:
    """Rename ``old`` to ``new`` without breaking the code still using ``old``: both columns exist and
    are kept equal until contract drops ``old``."""
    _invoke(
        "rename_column",
        table,
        schema,
        old=[old],
        new=[{"name": new, "type": None, "up": None}],
        down={},
        new_default=None,
    )


def change_column_type(
    table: str,
    column: str,
    new_type: str,
    *,
    up: str,
    down: str,
    new_column: str | None = None,
    schema: str | None = None,
) -> None:
    """Give ``column`` a new type as a new column (``new_column``, default ``<column>_new``) kept in
    sync: ``up`` converts old to new, ``down`` new to old (SQL over the other column)."""
    _invoke(
        "change_column_type",
        table,
        schema,
        old=[column],
        new=[{"name": new_column or f"{column}_new", "type": new_type, "up": up}],
        down={column: down},
        new_default=None,
    )


def split_column(
    table: str,
    column: str,
    into: dict[str, tuple[str, str]],
    *,
    down: str | None = None,
    schema: str | None = None,
) -> None:
    """Split ``column`` into new columns: ``into={"first_name": ("text", "split_part(name, ' ', 1)"),
    ...}`` (type and SQL over the old column); ``down`` rebuilds the old column from the new ones."""
    if not into:
        raise ConfigError("split_column needs at least one new column in `into`.")
    _invoke(
        "split_column",
        table,
        schema,
        old=[column],
        new=[{"name": name, "type": type_, "up": up} for name, (type_, up) in into.items()],
        down={column: down} if down else {},
        new_default=None,
    )


def add_not_null_column(
    table: str, column: str, type: str, *, backfill: str, schema: str | None = None
) -> None:
    """Add ``column`` nullable, fill it (trigger for new writes, batched backfill for existing rows
    with ``backfill``, SQL over the row) and make it NOT NULL at contract (CHECK NOT VALID,
    VALIDATE, SET NOT NULL)."""
    _invoke("not_null_column", table, schema, column=column, type=type, backfill=backfill)


def add_foreign_key(
    constraint_name: str,
    source_table: str,
    referent_table: str,
    local_cols: list[str],
    remote_cols: list[str],
    *,
    source_schema: str | None = None,
    referent_schema: str | None = None,
    ondelete: str | None = None,
    onupdate: str | None = None,
) -> None:
    """Add a foreign key NOT VALID (no scan under a write-blocking lock); it is validated after the
    revision commits, without blocking writes."""
    _invoke(
        "foreign_key",
        source_table,
        source_schema,
        name=constraint_name,
        referent=referent_table,
        referent_schema=referent_schema,
        local_cols=list(local_cols),
        remote_cols=list(remote_cols),
        ondelete=ondelete,
        onupdate=onupdate,
    )


def create_index(
    index_name: str,
    table: str,
    columns: list[str],
    *,
    unique: bool = False,
    where: str | None = None,
    using: str | None = None,
    schema: str | None = None,
) -> None:
    """CREATE INDEX CONCURRENTLY, outside the revision's transaction (an autocommit block), after
    dropping an INVALID index of the same name left by a failed attempt."""
    _invoke(
        "index",
        table,
        schema,
        name=index_name,
        columns=list(columns),
        unique=unique,
        where=where,
        using=using,
    )


def abort() -> None:
    """In a downgrade(): drop what this revision's expand calls added (its open expansions)."""
    from alembic import op

    op.invoke(ExpandOperation("abort", "", None, {}, _calling_revision()))


def backfill(
    table: str, *, set: str, where: str | None = None, schema: str | None = None, **options: Any
) -> None:
    """Run a batched backfill now; only inside ``with op.get_context().autocommit_block():``.
    ``options`` are dbrollback.backfill.engine.BackfillOptions fields."""
    _invoke("backfill", table, schema, set=set, where=where, options=options)


@Operations.implementation_for(ExpandOperation)
def _apply(operations: Operations, operation: ExpandOperation) -> None:
    from dbrollback.expand.apply import apply_operation

    apply_operation(operations, operation)
