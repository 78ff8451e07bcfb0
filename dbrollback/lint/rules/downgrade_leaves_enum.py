"""downgrade-leaves-enum: the upgrade creates an enum type and the downgrade leaves it behind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    RecordedOp,
    RecordedRevision,
    TableKey,
    dropped_columns,
    dropped_tables,
    sql_alter_table_commands,
    table_key,
    type_changes,
)
from dbrollback.lint.rules.downgrade_not_inverse import downgrade_comparable

TypeKey = tuple[str | None, str]
Column = tuple[TableKey, str]


def _type_key(parts: list[str]) -> TypeKey:
    # public.mood and mood are the same type, as tables are in table_key.
    return table_key(parts[-2] if len(parts) > 1 else None, parts[-1])


def _names(nodes: Any) -> list[str]:
    if isinstance(nodes, pg_ast.TypeName):
        nodes = nodes.names
    return [n.sval or "" for n in nodes or () if isinstance(n, pg_ast.String)]


def _enum(type_: Any) -> sa.Enum | None:
    """The named native enum a column type is, or holds (arrays, TypeDecorators), else None."""
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sa.ARRAY):
        type_ = type_.item_type
    if isinstance(type_, sa.Enum) and type_.native_enum and type_.name:
        return type_
    return None


def _enum_key(enum: sa.Enum) -> TypeKey:
    # The recorder ran the operation, so the column is on its table and SQLAlchemy has settled the
    # type's schema (inherited from the table or its MetaData where asked for).
    return table_key(enum.schema, str(enum.name))


def _table_enums(op: alembic_ops.CreateTableOp) -> Iterator[tuple[sa.Enum, Column]]:
    for item in op.columns:
        if not isinstance(item, sa.Column):
            continue
        enum = _enum(item.type)
        if enum is not None:
            yield enum, (table_key(op.schema, op.table_name), str(item.name))


def _uses(recorded: RecordedOp) -> Iterator[tuple[TypeKey, Column]]:
    """Columns this operation gives an enum type (whether or not it creates the type)."""
    op = recorded.op
    if isinstance(op, alembic_ops.CreateTableOp):
        yield from ((_enum_key(enum), column) for enum, column in _table_enums(op))
    elif isinstance(op, alembic_ops.AddColumnOp):
        enum = _enum(op.column.type)
        if enum is not None:
            yield _enum_key(enum), (table_key(op.schema, op.table_name), op.column.name)
    elif isinstance(op, alembic_ops.AlterColumnOp) and op.modify_type is not None:
        enum = _enum(sa.types.to_instance(op.modify_type))
        if enum is not None:
            yield _enum_key(enum), (table_key(op.schema, op.table_name), op.column_name)
    for statement in recorded.sql_statements:
        if isinstance(statement, pg_ast.CreateStmt) and statement.relation is not None:
            key = table_key(statement.relation.schemaname, statement.relation.relname or "")
            for element in statement.tableElts or ():
                if isinstance(element, pg_ast.ColumnDef) and element.typeName is not None:
                    yield _type_key(_names(element.typeName)), (key, element.colname or "")
    for key, cmd in sql_alter_table_commands(recorded):
        definition = cmd.def_
        if not isinstance(definition, pg_ast.ColumnDef) or definition.typeName is None:
            continue
        if cmd.subtype == AlterTableType.AT_AddColumn:
            yield _type_key(_names(definition.typeName)), (key, definition.colname or "")
        elif cmd.subtype == AlterTableType.AT_AlterColumnType:
            yield _type_key(_names(definition.typeName)), (key, cmd.name or "")


def _created_types(recorded: RecordedOp) -> list[TypeKey]:
    """Enum types this operation creates: CREATE TYPE ... AS ENUM, or op.create_table with a named
    native sa.Enum / postgresql.ENUM column whose create_type is not False."""
    created: list[TypeKey] = []
    op = recorded.op
    if isinstance(op, alembic_ops.CreateTableOp):
        # SQLAlchemy creates the type with the table unless it is postgresql.ENUM(create_type=False).
        created.extend(
            _enum_key(enum)
            for enum, _column in _table_enums(op)
            if getattr(enum, "create_type", True) is not False
        )
    for statement in recorded.sql_statements:
        if isinstance(statement, pg_ast.CreateEnumStmt):
            created.append(_type_key(_names(statement.typeName)))
    return list(dict.fromkeys(created))


def _dropped_types(ops: list[RecordedOp]) -> set[TypeKey]:
    """Types DROP TYPE removes (raw SQL, or op.execute(postgresql.DropEnumType(...)))."""
    return {
        _type_key(_names(obj))
        for recorded in ops
        for statement in recorded.sql_statements
        if isinstance(statement, pg_ast.DropStmt) and statement.removeType == ObjectType.OBJECT_TYPE
        for obj in statement.objects or ()
        if _names(obj)
    }


def _released_columns(ops: list[RecordedOp]) -> tuple[set[TableKey], set[Column]]:
    """Tables the downgrade drops, and columns it drops or gives another type."""
    tables = {table for recorded in ops for table in dropped_tables(recorded)}
    columns = {column for recorded in ops for column in dropped_columns(recorded)}
    columns |= {(change.table, change.column) for recorded in ops for change in type_changes(recorded)}
    return tables, columns


class DowngradeLeavesEnum(Rule):
    id = "downgrade-leaves-enum"
    default_severity = "error"
    axes = ("irreversible",)
    problem = (
        "the downgrade drops the enum's table or column but not the enum type; upgrading again fails "
        "with 'type already exists'"
    )
    safe_alternative = (
        "drop the type in the downgrade after the table or column using it: "
        'op.execute("DROP TYPE name") or op.execute(postgresql.DropEnumType(sa.Enum(name="name")))'
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        upgrade, downgrade = revision.upgrade, revision.downgrade
        if revision.irreversible or not downgrade_comparable(revision):
            return []
        dropped = _dropped_types(downgrade.ops)
        gone_tables, gone_columns = _released_columns(downgrade.ops)
        users: dict[TypeKey, set[Column]] = {}
        for recorded in upgrade.ops:
            for type_key_, column in _uses(recorded):
                users.setdefault(type_key_, set()).add(column)
        findings: list[Finding] = []
        for recorded in upgrade.ops:
            left = []
            for enum in _created_types(recorded):
                kept = [c for c in users.get(enum, ()) if c[0] not in gone_tables and c not in gone_columns]
                # A type a column still uses after the downgrade is not left behind (the column is).
                if enum not in dropped and not kept:
                    left.append(".".join(part for part in enum if part))
            if left:
                findings.append(self.finding(
                    revision, recorded.line, "downgrade",
                    f"the downgrade does not drop enum type {', '.join(left)} created here; "
                    "upgrading again after it fails with 'type already exists'",
                    recorded.column,
                ))  # fmt: skip
        return findings
