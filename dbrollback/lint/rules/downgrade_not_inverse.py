"""downgrade-not-inverse: the downgrade does not undo the upgrade's schema operations.

Both functions are reduced to the same schema events (Alembic operations and the SQL of
``op.execute``); every event of the upgrade expects its inverse among the downgrade's events, unless
the downgrade drops the table or column the event concerns (which undoes it with it).

dbrollback.expand helpers add columns, indexes and foreign keys; their one inverse is
``expand.abort()`` in the downgrade, which drops all of them (and their sync triggers). A downgrade
without it is ``expand-without-abort``'s finding, not this rule's: dropping the new column by hand
would leave the trigger behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops as alembic_ops
from pglast import ast as pg_ast
from pglast.enums import AlterTableType, ObjectType

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    PgType,
    RecordedOp,
    RecordedRevision,
    TableKey,
    expand_abort,
    opened_expansion,
    opened_expansions,
    pg_type,
    table_key,
    table_label,
    type_changes,
)

Column = tuple[TableKey, str]


@dataclass(frozen=True)
class SchemaEvent:
    """One schema change of one operation. ``table`` is the table concerned (for renames of a table
    the old name, ``new_name`` the new one); ``name`` a column, index or constraint name."""

    kind: str
    table: TableKey | None
    name: str | None = None
    new_name: str | None = None
    columns: tuple[str, ...] = ()
    new_type: PgType | None = None
    old_type: PgType | None = None
    nullable: bool | None = None
    # Constraint and index names that come with a created table or added column.
    includes: frozenset[str] = field(default_factory=frozenset)


def function_is_unreadable(ops: list[RecordedOp]) -> bool:
    """True if some SQL of ``op.execute`` cannot be read (DO blocks, unknown functions, no parse)."""
    return any(effect.opaque for recorded in ops for effect in recorded.effects)


def downgrade_comparable(revision: RecordedRevision) -> bool:
    """Whether the downgrade can be read against the upgrade: both functions are there, the downgrade
    does something (otherwise it is missing-downgrade's case), and the recording shows everything
    both do (what unreadable code undoes or writes back is never guessed)."""
    upgrade, downgrade = revision.upgrade, revision.downgrade
    if not upgrade.present or not downgrade.present or downgrade.empty:
        return False
    return not (upgrade.opaque or downgrade.opaque or function_is_unreadable(downgrade.ops))


def _names(value: Any) -> str | None:
    return None if value is None else str(value)


def _string_columns(columns: Any) -> tuple[str, ...]:
    """Column names, or () when some element is an expression (its columns are not known)."""
    names = tuple(c for c in columns or () if isinstance(c, str))
    return names if len(names) == len(columns or ()) else ()


def _table_includes(op: alembic_ops.CreateTableOp) -> frozenset[str]:
    """Names given explicitly to the constraints and indexes op.create_table creates with the table."""
    names: set[str] = set()
    for item in op.columns:
        if isinstance(item, sa.Column):
            names |= {str(fk.name) for fk in item.foreign_keys if fk.name is not None}
        elif isinstance(item, (sa.Constraint, sa.Index)) and item.name is not None:
            names.add(str(item.name))
    return frozenset(names)


def _all_table_includes(op: alembic_ops.CreateTableOp) -> set[str]:
    """Also the names naming conventions give (e.g. ix_<table>_<column> for index=True): building
    the Table costs about a millisecond, so only asked for when an explicit name did not match."""
    try:
        table = op.to_table()
    except Exception:
        return set()
    names = {str(c.name) for c in table.constraints if c.name is not None}
    return names | {str(i.name) for i in table.indexes if i.name is not None}


def _alembic_events(op: Any) -> Iterator[SchemaEvent]:
    if isinstance(op, alembic_ops.CreateTableOp):
        key = table_key(op.schema, op.table_name)
        yield SchemaEvent("create_table", key, includes=_table_includes(op))
    elif isinstance(op, alembic_ops.DropTableOp):
        yield SchemaEvent("drop_table", table_key(op.schema, op.table_name))
    elif isinstance(op, alembic_ops.AddColumnOp):
        column = op.column
        includes = frozenset(str(fk.name) for fk in column.foreign_keys if fk.name is not None)
        yield SchemaEvent("add_column", table_key(op.schema, op.table_name), column.name, includes=includes)
    elif isinstance(op, alembic_ops.DropColumnOp):
        yield SchemaEvent("drop_column", table_key(op.schema, op.table_name), op.column_name)
    elif isinstance(op, alembic_ops.CreateIndexOp):
        table = table_key(op.schema, op.table_name)
        yield SchemaEvent("create_index", table, _names(op.index_name), columns=_string_columns(op.columns))
    elif isinstance(op, alembic_ops.DropIndexOp):
        on = table_key(op.schema, op.table_name) if op.table_name else None
        yield SchemaEvent("drop_index", on, _names(op.index_name))
    elif isinstance(op, alembic_ops.CreateForeignKeyOp):
        table = table_key(op.kw.get("source_schema"), op.source_table)
        columns = tuple(op.local_cols)
        yield SchemaEvent("create_constraint", table, _names(op.constraint_name), columns=columns)
    elif isinstance(op, (alembic_ops.CreateUniqueConstraintOp, alembic_ops.CreatePrimaryKeyOp)):
        table = table_key(op.schema, op.table_name)
        yield SchemaEvent("create_constraint", table, _names(op.constraint_name), columns=tuple(op.columns))
    elif isinstance(op, alembic_ops.CreateCheckConstraintOp):
        table = table_key(op.schema, op.table_name)
        yield SchemaEvent("create_constraint", table, _names(op.constraint_name))
    elif isinstance(op, alembic_ops.DropConstraintOp):
        table = table_key(op.schema, op.table_name)
        yield SchemaEvent("drop_constraint", table, _names(op.constraint_name))
    elif isinstance(op, alembic_ops.RenameTableOp):
        yield SchemaEvent("rename_table", table_key(op.schema, op.table_name), new_name=op.new_table_name)
    elif isinstance(op, alembic_ops.AlterColumnOp):
        yield from _alter_column_events(op)


def _alter_column_events(op: alembic_ops.AlterColumnOp) -> Iterator[SchemaEvent]:
    table = table_key(op.schema, op.table_name)
    if op.modify_type is not None:
        old = pg_type(op.existing_type) if op.existing_type is not None else None
        yield SchemaEvent("alter_type", table, op.column_name, new_type=pg_type(op.modify_type), old_type=old)
    if op.modify_nullable is not None and op.modify_nullable != op.existing_nullable:
        yield SchemaEvent("nullable", table, op.column_name, nullable=op.modify_nullable)
    if op.modify_server_default is not False:
        yield SchemaEvent("default", table, op.column_name)
    if op.modify_name is not None:
        yield SchemaEvent("rename_column", table, op.column_name, new_name=op.modify_name)


def _relation(node: Any) -> TableKey | None:
    if not isinstance(node, pg_ast.RangeVar):
        return None
    return table_key(node.schemaname, node.relname or "")


def _name_parts(obj: Any) -> list[str]:
    if isinstance(obj, pg_ast.String):
        return [obj.sval or ""]
    if isinstance(obj, pg_ast.TypeName):
        obj = obj.names
    return [part.sval or "" for part in obj or () if isinstance(part, pg_ast.String)]


def _sql_events(statement: Any) -> Iterator[SchemaEvent]:
    if isinstance(statement, pg_ast.CreateStmt):
        table = _relation(statement.relation)
        names = frozenset(
            element.conname
            for element in statement.tableElts or ()
            if isinstance(element, pg_ast.Constraint) and element.conname
        )
        yield SchemaEvent("create_table", table, includes=names)
    elif isinstance(statement, pg_ast.IndexStmt):
        columns = [p.name for p in statement.indexParams or () if isinstance(p, pg_ast.IndexElem)]
        known = tuple(c for c in columns if c) if all(columns) else ()
        table = _relation(statement.relation)
        yield SchemaEvent("create_index", table, statement.idxname, columns=known)
    elif isinstance(statement, pg_ast.DropStmt):
        for obj in statement.objects or ():
            parts = _name_parts(obj)
            if not parts:
                continue
            key = table_key(parts[-2] if len(parts) > 1 else None, parts[-1])
            if statement.removeType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE):
                yield SchemaEvent("drop_table", key)
            elif statement.removeType == ObjectType.OBJECT_INDEX:
                yield SchemaEvent("drop_index", None, parts[-1])
    elif isinstance(statement, pg_ast.RenameStmt) and statement.newname:
        table = _relation(statement.relation)
        if statement.renameType == ObjectType.OBJECT_TABLE:
            yield SchemaEvent("rename_table", table, new_name=statement.newname)
        elif statement.renameType == ObjectType.OBJECT_COLUMN and statement.subname:
            yield SchemaEvent("rename_column", table, statement.subname, new_name=statement.newname)
    elif isinstance(statement, pg_ast.AlterTableStmt) and statement.objtype == ObjectType.OBJECT_TABLE:
        table = _relation(statement.relation)
        for cmd in statement.cmds or ():
            if isinstance(cmd, pg_ast.AlterTableCmd):
                yield from _alter_table_events(table, cmd)


def _alter_table_events(table: TableKey | None, cmd: pg_ast.AlterTableCmd) -> Iterator[SchemaEvent]:
    subtype, definition = cmd.subtype, cmd.def_
    if subtype == AlterTableType.AT_AddColumn and isinstance(definition, pg_ast.ColumnDef):
        names = frozenset(
            c.conname for c in definition.constraints or () if isinstance(c, pg_ast.Constraint) and c.conname
        )
        yield SchemaEvent("add_column", table, definition.colname, includes=names)
    elif subtype == AlterTableType.AT_DropColumn:
        yield SchemaEvent("drop_column", table, cmd.name)
    elif subtype == AlterTableType.AT_AddConstraint and isinstance(definition, pg_ast.Constraint):
        keys = definition.fk_attrs or definition.keys
        columns = tuple(k.sval or "" for k in keys or () if isinstance(k, pg_ast.String))
        yield SchemaEvent("create_constraint", table, definition.conname, columns=columns)
    elif subtype == AlterTableType.AT_DropConstraint:
        yield SchemaEvent("drop_constraint", table, cmd.name)
    elif subtype in (AlterTableType.AT_SetNotNull, AlterTableType.AT_DropNotNull):
        nullable = subtype == AlterTableType.AT_DropNotNull
        yield SchemaEvent("nullable", table, cmd.name, nullable=nullable)
    elif subtype == AlterTableType.AT_ColumnDefault:
        yield SchemaEvent("default", table, cmd.name)


def _expand_events(recorded: RecordedOp) -> Iterator[SchemaEvent]:
    opened = opened_expansion(recorded)
    if opened is None:
        return
    for column in opened.columns:
        yield SchemaEvent("add_column", opened.table, column)
    if opened.index is not None:
        yield SchemaEvent("create_index", opened.table, opened.index, columns=opened.on_columns)
    if opened.constraint is not None:
        yield SchemaEvent("create_constraint", opened.table, opened.constraint, columns=opened.on_columns)


def schema_events(recorded: RecordedOp) -> list[SchemaEvent]:
    """The schema changes of one operation, in the order PostgreSQL applies them."""
    events = list(_alembic_events(recorded.op))
    events.extend(_expand_events(recorded))
    for statement in recorded.sql_statements:
        events.extend(_sql_events(statement))
    # Raw ALTER COLUMN ... TYPE: the recorder's helper already reads the new type.
    events.extend(
        SchemaEvent("alter_type", change.table, change.column, new_type=change.new)
        for change in type_changes(recorded)
        if not isinstance(recorded.op, alembic_ops.AlterColumnOp)
    )
    return [e for e in events if e.table is not None or e.kind == "drop_index"]


@dataclass
class _Undo:
    """What the downgrade does, as sets to look the upgrade's inverses up in."""

    dropped_tables: set[TableKey] = field(default_factory=set)
    dropped_columns: set[Column] = field(default_factory=set)
    # By name only: drop_index() need not repeat the schema the index was created in.
    dropped_indexes: set[str] = field(default_factory=set)
    dropped_constraints: set[tuple[TableKey | None, str]] = field(default_factory=set)
    tables_losing_constraints: set[TableKey | None] = field(default_factory=set)
    created_tables: set[TableKey] = field(default_factory=set)
    added_columns: set[Column] = field(default_factory=set)
    created_indexes: set[str] = field(default_factory=set)
    created_constraints: set[str] = field(default_factory=set)
    renamed_tables: set[tuple[TableKey | None, str]] = field(default_factory=set)
    renamed_columns: set[tuple[TableKey | None, str | None, str]] = field(default_factory=set)
    types: dict[Column, list[PgType | None]] = field(default_factory=dict)
    nullables: dict[Column, set[bool]] = field(default_factory=dict)
    defaults: set[Column] = field(default_factory=set)
    table_ops: list[alembic_ops.CreateTableOp] = field(default_factory=list)
    _conventional_names: set[str] | None = None

    @classmethod
    def of(cls, ops: list[RecordedOp]) -> _Undo:
        undo = cls()
        for recorded in ops:
            if isinstance(recorded.op, alembic_ops.CreateTableOp):
                undo.table_ops.append(recorded.op)
            for event in schema_events(recorded):
                undo.add(event)
        return undo

    def recreates(self, name: str | None, names: set[str]) -> bool:
        """Whether the downgrade creates an index or constraint called ``name``."""
        if name in names:
            return True
        if self._conventional_names is None:
            self._conventional_names = {n for op in self.table_ops for n in _all_table_includes(op)}
        return name in self._conventional_names

    def add(self, event: SchemaEvent) -> None:
        table, name = event.table, event.name or ""
        column = (table, name) if table is not None else None
        if event.kind == "drop_table" and table is not None:
            self.dropped_tables.add(table)
        elif event.kind == "drop_column" and column is not None:
            self.dropped_columns.add(column)
        elif event.kind == "drop_index":
            self.dropped_indexes.add(name)
        elif event.kind == "drop_constraint":
            self.dropped_constraints.add((table, name))
            self.tables_losing_constraints.add(table)
        elif event.kind == "create_table" and table is not None:
            self.created_tables.add(table)
            self.created_constraints |= event.includes
            self.created_indexes |= event.includes
        elif event.kind == "add_column" and column is not None:
            self.added_columns.add(column)
            self.created_constraints |= event.includes
        elif event.kind == "create_index":
            self.created_indexes.add(name)
        elif event.kind == "create_constraint":
            self.created_constraints.add(name)
        elif event.kind == "rename_table" and event.new_name:
            self.renamed_tables.add((table, event.new_name))
        elif event.kind == "rename_column" and event.new_name:
            self.renamed_columns.add((table, event.name, event.new_name))
        elif event.kind == "alter_type" and column is not None:
            self.types.setdefault(column, []).append(event.new_type)
        elif event.kind == "nullable" and column is not None and event.nullable is not None:
            self.nullables.setdefault(column, set()).add(event.nullable)
        elif event.kind == "default" and column is not None:
            self.defaults.add(column)

    def removes(self, table: TableKey | None, columns: tuple[str, ...] = ()) -> bool:
        """True if the downgrade drops ``table``, or one of ``columns`` of it (which takes the
        indexes and constraints on that column with it)."""
        if table is None:
            return False
        return table in self.dropped_tables or any((table, c) in self.dropped_columns for c in columns)


@dataclass
class _Expectation:
    recorded: RecordedOp
    event: SchemaEvent


def _expectations(ops: list[RecordedOp]) -> list[_Expectation]:
    """The upgrade's net schema changes: something created and dropped again within the upgrade
    needs no inverse, and neither do changes to tables or columns the upgrade itself created."""
    expected: list[_Expectation] = []
    new_tables: set[TableKey] = set()
    new_columns: set[Column] = set()
    new_indexes: set[str] = set()
    new_constraints: set[str] = set()

    def is_new(table: TableKey | None, column: str | None = None) -> bool:
        return table in new_tables or (table, column) in new_columns

    def forget(match: Any) -> None:
        expected[:] = [e for e in expected if not match(e.event)]

    for recorded in ops:
        for event in schema_events(recorded):
            table, name = event.table, event.name
            if event.kind == "create_table" and table is not None:
                new_tables.add(table)
                expected.append(_Expectation(recorded, event))
            elif event.kind == "add_column":
                if not is_new(table):
                    expected.append(_Expectation(recorded, event))
                new_columns.add((table, name or ""))  # type: ignore[arg-type]
            elif event.kind in ("create_index", "create_constraint"):
                (new_indexes if event.kind == "create_index" else new_constraints).add(name or "")
                if not is_new(table):
                    expected.append(_Expectation(recorded, event))
            elif event.kind == "drop_table" and table is not None:
                forget(lambda e, t=table: e.table == t)
                if table not in new_tables:
                    expected.append(_Expectation(recorded, event))
                new_tables.discard(table)
            elif event.kind == "drop_column":
                forget(lambda e, t=table, c=name: e.table == t and (e.name == c or c in e.columns))
                if not is_new(table, name):
                    expected.append(_Expectation(recorded, event))
                new_columns.discard((table, name or ""))
            elif event.kind == "drop_index":
                if name in new_indexes:
                    forget(lambda e, n=name: e.kind == "create_index" and e.name == n)
                elif not is_new(table):
                    expected.append(_Expectation(recorded, event))
            elif event.kind == "drop_constraint":
                if name in new_constraints:
                    forget(lambda e, n=name: e.kind == "create_constraint" and e.name == n)
                elif not is_new(table):
                    expected.append(_Expectation(recorded, event))
            elif event.kind == "rename_column" and event.new_name:
                if is_new(table, name):
                    # The downgrade must now drop the column under its new name.
                    new_columns.add((table, event.new_name))  # type: ignore[arg-type]
                    for e in expected:
                        if e.event.kind == "add_column" and e.event.table == table and e.event.name == name:
                            e.event = replace(e.event, name=event.new_name)
                else:
                    expected.append(_Expectation(recorded, event))
            elif event.kind == "rename_table" and event.new_name and table is not None:
                renamed = (table[0], event.new_name)
                if table in new_tables:
                    new_tables.add(renamed)
                    for e in expected:
                        if e.event.table == table:
                            e.event = replace(e.event, table=renamed)
                else:
                    expected.append(_Expectation(recorded, event))
            elif event.kind in ("alter_type", "nullable", "default") and not is_new(table, name):
                expected.append(_Expectation(recorded, event))
    return expected


def _column_names(undo: _Undo, table: TableKey | None, column: str | None) -> set[str | None]:
    """``column`` and the names a rename in the downgrade gives it (its alter may come before or after)."""
    names = {column}
    for renamed_table, old, new in undo.renamed_columns:
        if renamed_table == table and column in (old, new):
            names |= {old, new}
    return names


def _missing(event: SchemaEvent, undo: _Undo) -> str | None:
    """What the downgrade fails to undo of ``event``, or None when it undoes it."""
    table, name = event.table, event.name
    label = table_label(table) if table is not None else "?"
    column = f"{label}.{name}"
    if event.kind == "create_table":
        return None if table in undo.dropped_tables else f"does not drop table {label} created here"
    if event.kind == "drop_table":
        return None if table in undo.created_tables else f"does not recreate table {label} dropped here"
    if event.kind == "drop_column":
        if (table, name) in undo.added_columns or table in undo.created_tables:
            return None
        return f"does not re-add column {column} dropped here"
    if event.kind == "drop_index":
        if undo.recreates(name, undo.created_indexes):
            return None
        return f"does not recreate index {name} dropped here"
    if event.kind == "drop_constraint":
        if undo.recreates(name, undo.created_constraints):
            return None
        return f"does not recreate constraint {name} dropped here"
    if event.kind == "rename_table" and table is not None:
        if (table_key(table[0], event.new_name or ""), table[1]) in undo.renamed_tables:
            return None
        return f"does not rename table {event.new_name} back to {label}"
    # Everything below lives in a table or column: dropping that undoes it.
    if undo.removes(table, (name,) if name else ()):
        return None
    if event.kind == "add_column":
        return f"does not drop column {column} added here"
    if event.kind == "create_index":
        if undo.removes(table, event.columns) or name in undo.dropped_indexes:
            return None
        return f"does not drop index {name} created here"
    if event.kind == "create_constraint":
        if undo.removes(table, event.columns) or (table, name) in undo.dropped_constraints:
            return None
        if name is None and table in undo.tables_losing_constraints:
            return None
        return f"does not drop constraint {name or '(unnamed)'} on {label} created here"
    if event.kind == "rename_column":
        if (table, event.new_name, name) in undo.renamed_columns:
            return None
        if undo.removes(table, (event.new_name or "",)):
            return None
        return f"does not rename column {label}.{event.new_name} back to {name}"
    names = _column_names(undo, table, name)
    if any(undo.removes(table, (n,)) for n in names if n):
        return None
    if event.kind == "alter_type":
        restored = [t for n in names for t in undo.types.get((table, n), [])]  # type: ignore[arg-type]
        if not restored:
            if event.old_type is None:
                return (
                    f"does not change the type of {column} back (the upgrade gives no existing_type, "
                    "and the downgrade names no type for the column)"
                )
            return f"does not change the type of {column} back to {event.old_type}"
        if event.old_type is None or any(t is None or t == event.old_type for t in restored):
            return None
        return f"changes {column} to {restored[-1]}, not back to {event.old_type}"
    if event.kind == "nullable":
        wanted = not event.nullable
        if any(wanted in undo.nullables.get((table, n), set()) for n in names):  # type: ignore[arg-type]
            return None
        return f"does not make {column} {'nullable' if wanted else 'NOT NULL'} again"
    if event.kind == "default":
        if any((table, n) in undo.defaults for n in names):
            return None
        return f"does not restore the server default of {column}"
    return None


class DowngradeNotInverse(Rule):
    id = "downgrade-not-inverse"
    default_severity = "error"
    axes = ("irreversible",)
    problem = "the downgrade does not undo the upgrade's schema changes; rolling back leaves another schema"
    safe_alternative = (
        "make the downgrade undo every operation of the upgrade: drop what it creates, recreate what it "
        "drops, rename back, and restore types (pass existing_type=) nullability and defaults"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        if revision.irreversible or not downgrade_comparable(revision):
            return []
        undo = _Undo.of(revision.downgrade.ops)
        if expand_abort(revision.downgrade.ops) is not None:
            # abort drops what the upgrade's expand helpers added, and with a column what is on it.
            for _recorded, opened in opened_expansions(revision.upgrade.ops):
                undo.dropped_columns |= {(opened.table, column) for column in opened.columns}
                if opened.index is not None:
                    undo.dropped_indexes.add(opened.index)
                if opened.constraint is not None:
                    undo.dropped_constraints.add((opened.table, opened.constraint))
        missing: dict[int, tuple[RecordedOp, list[str]]] = {}
        for expectation in _expectations(revision.upgrade.ops):
            if opened_expansion(expectation.recorded) is not None:
                continue  # undone by expand.abort() or reported as expand-without-abort
            what = _missing(expectation.event, undo)
            if what is not None:
                entry = missing.setdefault(id(expectation.recorded), (expectation.recorded, []))
                if what not in entry[1]:
                    entry[1].append(what)
        return [
            self.finding(
                revision, recorded.line, "downgrade", f"the downgrade {'; '.join(whats)}", recorded.column
            )
            for recorded, whats in missing.values()
        ]
