"""Classify SQL statements by their effect on existing tables and data.

:func:`classify_sql` parses a SQL string with PostgreSQL's own parser (pglast) and returns one
:class:`StatementEffect` per effect: one per statement, except that an ``ALTER TABLE`` yields one
per subcommand and ``DROP TABLE a, b`` / ``TRUNCATE a, b`` yield one per table.

The classification is conservative. ``lossy`` marks anything that destroys or rewrites existing
data (a snapshot is needed before running it); ``opaque`` marks anything whose effect we cannot
know from the text (``DO`` blocks, calls of functions we do not know, ``COPY``, ``EXECUTE``,
unparseable SQL). Opaque statements are never guessed to be harmless by this module; callers decide
how to treat them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, DropBehavior, ObjectType, OnConflictAction
from pglast.parser import ParseError

from dbrollback.analysis.pg_tree import deparse, walk_nodes

__all__ = ["StatementEffect", "TableRef", "classify_sql"]


@dataclass(frozen=True)
class TableRef:
    """A table as written in the statement; ``schema`` is None when the name is unqualified."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class StatementEffect:
    """What one statement (or one ALTER TABLE subcommand) does."""

    sql: str
    kind: str
    table: TableRef | None
    columns: tuple[str, ...]
    lossy: bool
    opaque: bool = False
    reason: str = ""


# Functions whose call we consider side-effect free (or, for set_config/pg_sleep, harmless to data).
# Only matched when unqualified or qualified with pg_catalog.
# fmt: off
SAFE_FUNCTIONS: frozenset[str] = frozenset({
    "count", "sum", "min", "max", "avg", "array_agg", "string_agg", "bool_and", "bool_or", "every",
    "jsonb_agg", "json_agg", "jsonb_object_agg", "json_object_agg", "lower", "upper", "initcap", "trim",
    "btrim", "ltrim", "rtrim", "length", "char_length", "octet_length", "strpos", "position", "left",
    "right", "substr", "substring", "replace", "split_part", "concat", "concat_ws", "lpad", "rpad",
    "reverse", "repeat", "md5", "regexp_replace", "regexp_match", "regexp_matches",
    "regexp_split_to_array", "format", "translate", "to_char", "to_number", "abs", "round", "floor",
    "ceil", "ceiling", "trunc", "mod", "power", "sqrt", "coalesce", "nullif", "greatest", "least", "now",
    "date_trunc", "date_part", "extract", "to_date", "to_timestamp", "age", "make_date", "make_interval",
    "timezone", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "to_jsonb", "to_json",
    "jsonb_build_object", "json_build_object", "jsonb_build_array", "json_build_array", "jsonb_set",
    "jsonb_typeof", "array_length", "cardinality", "array_to_string", "string_to_array", "unnest",
    "array_position", "array_remove", "array_append", "generate_series", "gen_random_uuid", "set_config",
    "current_setting", "pg_sleep",
})
# fmt: on

_DML_CHILDREN = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)

# Statement types we understand and that change no existing data (schema or session only).
_HARMLESS_STATEMENTS: tuple[type[ast.Node], ...] = (
    ast.TransactionStmt,
    ast.VariableSetStmt,
    ast.VariableShowStmt,
    ast.CommentStmt,
    ast.CreateSchemaStmt,
    ast.CreateSeqStmt,
    ast.AlterSeqStmt,
    ast.ViewStmt,
    ast.CreateFunctionStmt,
    ast.CreateTrigStmt,
    ast.CreateEnumStmt,
    ast.AlterEnumStmt,
    ast.CompositeTypeStmt,
    ast.CreateDomainStmt,
    ast.CreateExtensionStmt,
    ast.DefineStmt,
    ast.GrantStmt,
    ast.GrantRoleStmt,
    ast.AlterOwnerStmt,
    ast.AlterDefaultPrivilegesStmt,
    ast.AlterObjectSchemaStmt,
    ast.CreatePolicyStmt,
    ast.AlterPolicyStmt,
    ast.LockStmt,
    ast.CreateStatsStmt,
    ast.RefreshMatViewStmt,
    ast.ReindexStmt,
    ast.VacuumStmt,
    ast.ClusterStmt,
    ast.NotifyStmt,
)

_OPAQUE_STATEMENTS: dict[type[ast.Node], str] = {
    ast.DoStmt: "runs a DO block, whose effect cannot be known without executing it",
    ast.CopyStmt: "runs COPY, which reads or writes data outside SQL",
    ast.ExecuteStmt: "runs EXECUTE of a prepared statement whose text is not known here",
    ast.CallStmt: "calls a procedure, whose effect cannot be known without executing it",
    ast.ExplainStmt: "runs EXPLAIN, which may execute the statement it explains",
}


def classify_sql(sql: str) -> list[StatementEffect]:
    """Classify every statement in ``sql`` (which may hold several, separated by semicolons)."""
    try:
        raw_statements = pglast.parse_sql(sql)
    except ParseError as error:
        return [
            StatementEffect(
                sql=sql.strip(),
                kind="other",
                table=None,
                columns=(),
                lossy=False,
                opaque=True,
                reason=f"could not parse the SQL: {error}",
            )
        ]
    effects: list[StatementEffect] = []
    for raw in raw_statements:
        # libpg_query reports byte offsets into the UTF-8 text, but pglast converts them to str
        # indexes (see pglast.parser.Displacements), so the original string is sliced directly.
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        text = sql[start:end].strip()
        if raw.stmt is not None:
            effects.extend(_classify_statement(text, raw.stmt))
    return effects


def _classify_statement(sql: str, stmt: ast.Node) -> Iterator[StatementEffect]:
    if isinstance(stmt, ast.AlterTableStmt):
        yield from _alter_table(sql, stmt)
    elif isinstance(stmt, ast.DropStmt):
        yield from _drop(sql, stmt)
    elif isinstance(stmt, ast.TruncateStmt):
        for relation in stmt.relations or ():
            table = _table(relation)
            yield StatementEffect(sql, "truncate", table, (), True, reason=f"empties table {table}")
    elif isinstance(stmt, ast.UpdateStmt):
        yield _dml(sql, stmt, "update")
    elif isinstance(stmt, ast.DeleteStmt):
        yield _dml(sql, stmt, "delete")
    elif isinstance(stmt, ast.InsertStmt):
        yield _dml(sql, stmt, "insert")
    elif isinstance(stmt, ast.MergeStmt):
        yield _dml(sql, stmt, "other")
    elif isinstance(stmt, ast.SelectStmt):
        yield _select(sql, stmt)
    elif isinstance(stmt, ast.CreateStmt):
        table = _table(stmt.relation)
        yield StatementEffect(sql, "create_table", table, (), False, reason=f"creates table {table}")
    elif isinstance(stmt, ast.CreateTableAsStmt):
        yield _create_table_as(sql, stmt)
    elif isinstance(stmt, ast.IndexStmt):
        table = _table(stmt.relation)
        columns = tuple(p.name for p in stmt.indexParams or () if isinstance(p, ast.IndexElem) and p.name)
        name = f"index {stmt.idxname}" if stmt.idxname else "an index"
        yield StatementEffect(sql, "create_index", table, columns, False, reason=f"creates {name} on {table}")
    elif isinstance(stmt, ast.RenameStmt):
        yield _rename(sql, stmt)
    elif type(stmt) in _OPAQUE_STATEMENTS:
        yield StatementEffect(
            sql, "other", None, (), False, opaque=True, reason=_OPAQUE_STATEMENTS[type(stmt)]
        )
    elif isinstance(stmt, _HARMLESS_STATEMENTS):
        yield StatementEffect(sql, "other", None, (), False, reason=f"{_describe(stmt)}; changes no data")
    else:
        yield StatementEffect(
            sql, "other", None, (), False, opaque=True, reason=f"{_statement_name(stmt)} is not understood"
        )


# --- ALTER TABLE --------------------------------------------------------------------------------------


def _alter_table(sql: str, stmt: ast.AlterTableStmt) -> Iterator[StatementEffect]:
    table = _table(stmt.relation)
    if stmt.objtype not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE):
        # ALTER INDEX / VIEW / SEQUENCE / MATERIALIZED VIEW ...: no table data changes.
        what = _object_type_name(stmt.objtype)
        yield StatementEffect(sql, "other", None, (), False, reason=f"alters {what} {table}")
        return
    for cmd in stmt.cmds or ():
        yield _alter_table_cmd(sql, table, cmd)


def _alter_table_cmd(sql: str, table: TableRef, cmd: ast.AlterTableCmd) -> StatementEffect:
    subtype = cmd.subtype
    name: str | None = cmd.name
    if subtype == AlterTableType.AT_DropColumn:
        assert name is not None
        return StatementEffect(
            sql, "drop_column", table, (name,), True, reason=f"drops column {table}.{name} and its data"
        )
    if subtype == AlterTableType.AT_AlterColumnType:
        assert name is not None
        column_def = cmd.def_
        new_type = ""
        using = ""
        if isinstance(column_def, ast.ColumnDef):
            if column_def.typeName is not None:
                new_type = f" to {deparse(column_def.typeName)}"
            if column_def.raw_default is not None:
                using = f" USING {deparse(column_def.raw_default)}"
        reason = f"changes the type of column {table}.{name}{new_type}{using}, rewriting its data"
        if using:
            reason += " (the USING expression may lose information)"
        return StatementEffect(sql, "alter_column_type", table, (name,), True, reason=reason)
    if subtype == AlterTableType.AT_AddColumn:
        column_def = cmd.def_
        column = column_def.colname if isinstance(column_def, ast.ColumnDef) else None
        return StatementEffect(
            sql,
            "add_column",
            table,
            (column,) if column else (),
            False,
            reason=f"adds column {table}.{column or '?'}",
        )
    if subtype == AlterTableType.AT_SetNotNull:
        assert name is not None
        return StatementEffect(
            sql, "set_not_null", table, (name,), False, reason=f"makes column {table}.{name} NOT NULL"
        )
    if subtype == AlterTableType.AT_DropNotNull:
        assert name is not None
        return StatementEffect(
            sql, "drop_not_null", table, (name,), False, reason=f"makes column {table}.{name} nullable"
        )
    if subtype == AlterTableType.AT_ColumnDefault:
        assert name is not None
        if cmd.def_ is None:
            return StatementEffect(
                sql,
                "drop_default",
                table,
                (name,),
                False,
                reason=f"drops the default of column {table}.{name}",
            )
        return StatementEffect(
            sql, "set_default", table, (name,), False, reason=f"sets the default of column {table}.{name}"
        )
    if subtype == AlterTableType.AT_AddConstraint:
        constraint = cmd.def_
        columns = _constraint_columns(constraint) if isinstance(constraint, ast.Constraint) else ()
        label = getattr(constraint, "conname", None)
        what = f"constraint {label}" if label else "a constraint"
        return StatementEffect(sql, "add_constraint", table, columns, False, reason=f"adds {what} to {table}")
    if subtype == AlterTableType.AT_DropConstraint:
        # Lossy in the sense that matters for rollback: once the constraint is gone, rows that
        # break it can be written, and the data as it was while the constraint held is gone.
        return StatementEffect(
            sql, "drop_constraint", table, (), True,
            reason=f"drops constraint {name} from {table} (the data that relied on it may change)",
        )  # fmt: skip
    columns = (name,) if name else ()
    subcommand = subtype.name.removeprefix("AT_") if subtype is not None else "unknown"
    return StatementEffect(sql, "other", table, columns, False, reason=f"alters table {table} ({subcommand})")


def _constraint_columns(constraint: ast.Constraint) -> tuple[str, ...]:
    if constraint.contype == ConstrType.CONSTR_FOREIGN:
        nodes = constraint.fk_attrs
    elif constraint.contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE):
        nodes = constraint.keys
    else:
        nodes = None
    return tuple(_sval(node) for node in nodes or () if isinstance(node, ast.String))


# --- DROP -----------------------------------------------------------------------------------------


def _drop(sql: str, stmt: ast.DropStmt) -> Iterator[StatementEffect]:
    remove_type = stmt.removeType
    cascade = stmt.behavior == DropBehavior.DROP_CASCADE
    for obj in stmt.objects or ():
        names = _names(obj)
        qualified = ".".join(names)
        if remove_type in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE):
            table = TableRef(names[-2] if len(names) > 1 else None, names[-1])
            reason = f"drops table {table} and its data"
            if cascade:
                reason += ", and every object that depends on it"
            yield StatementEffect(sql, "drop_table", table, (), True, reason=reason)
        elif remove_type == ObjectType.OBJECT_INDEX:
            yield StatementEffect(sql, "drop_index", None, (), False, reason=f"drops index {qualified}")
        elif remove_type == ObjectType.OBJECT_SCHEMA:
            if cascade:
                reason = f"drops schema {qualified} with every table in it and their data"
            else:
                reason = f"drops schema {qualified}, which must be empty"
            yield StatementEffect(sql, "drop_schema", None, (), cascade, reason=reason)
        else:
            what = _object_type_name(remove_type)
            if remove_type == ObjectType.OBJECT_SEQUENCE:
                lossy, reason = True, f"drops sequence {qualified} and its current value"
            elif cascade:
                lossy = True
                reason = f"drops {what} {qualified} with CASCADE, which may drop dependent columns or tables"
            else:
                lossy, reason = False, f"drops {what} {qualified}"
            yield StatementEffect(sql, "other", None, (), lossy, reason=reason)


# --- DML and queries ------------------------------------------------------------------------------


def _dml(
    sql: str, stmt: ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt, kind: str
) -> StatementEffect:
    table = _table(stmt.relation)
    unknown = _unknown_functions(stmt)
    opaque = bool(unknown)
    columns: tuple[str, ...] = ()
    if isinstance(stmt, ast.UpdateStmt):
        columns = _target_names(stmt.targetList)
        reason = f"updates {_column_list(table, columns)} of existing rows" if columns else f"updates {table}"
        lossy = True
    elif isinstance(stmt, ast.DeleteStmt):
        reason = f"deletes rows from {table}"
        lossy = True
    elif isinstance(stmt, ast.MergeStmt):
        reason = f"merges into {table}, which may update or delete existing rows"
        lossy = True
    else:
        columns = _target_names(stmt.cols)
        conflict = stmt.onConflictClause
        if conflict is not None and conflict.action == OnConflictAction.ONCONFLICT_UPDATE:
            reason = f"inserts into {table} and overwrites conflicting rows (ON CONFLICT DO UPDATE)"
            lossy = True
        else:
            reason = f"inserts rows into {table}"
            lossy = False
    if kind != "delete" and not lossy and _has_nested_dml(stmt, top=stmt):
        lossy = True
        reason += "; a WITH clause modifies data"
    if opaque:
        reason += f"; calls unknown function(s) {', '.join(unknown)}"
    return StatementEffect(sql, kind, table, columns, lossy, opaque=opaque, reason=reason)


def _select(sql: str, stmt: ast.SelectStmt) -> StatementEffect:
    unknown = _unknown_functions(stmt)
    modifies = _has_nested_dml(stmt, top=stmt)
    table: TableRef | None
    if stmt.intoClause is not None:
        table = _table(stmt.intoClause.rel)
        kind, reason = "create_table", f"creates table {table} from a query"
    else:
        tables = [_table(n) for n in stmt.fromClause or () if isinstance(n, ast.RangeVar)]
        table = tables[0] if len(tables) == 1 else None
        kind, reason = "select", "reads data"
    return _query_effect(sql, kind, table, reason, modifies, unknown)


def _create_table_as(sql: str, stmt: ast.CreateTableAsStmt) -> StatementEffect:
    assert stmt.into is not None
    table = _table(stmt.into.rel)
    unknown = _unknown_functions(stmt)
    modifies = _has_nested_dml(stmt, top=stmt)
    if stmt.objtype == ObjectType.OBJECT_MATVIEW:
        kind, reason = "other", f"creates materialized view {table}"
    else:
        kind, reason = "create_table", f"creates table {table} from a query"
    return _query_effect(sql, kind, table, reason, modifies, unknown)


def _query_effect(sql: str, kind: str, table: TableRef | None, reason: str, modifies: bool,
                  unknown: list[str]) -> StatementEffect:  # fmt: skip
    """A query-shaped statement: lossy only through data-modifying CTEs, opaque if it calls
    functions whose effect cannot be known."""
    if modifies:
        reason += "; a WITH clause modifies data"
    if unknown:
        reason += f"; calls unknown function(s) {', '.join(unknown)}, whose effect cannot be known"
    return StatementEffect(sql, kind, table, (), modifies, opaque=bool(unknown), reason=reason)


def _rename(sql: str, stmt: ast.RenameStmt) -> StatementEffect:
    rename_type = stmt.renameType
    if rename_type == ObjectType.OBJECT_TABLE and stmt.relation is not None:
        table = _table(stmt.relation)
        return StatementEffect(
            sql, "rename_table", table, (), False, reason=f"renames table {table} to {stmt.newname}"
        )
    if (
        rename_type == ObjectType.OBJECT_COLUMN
        and stmt.relationType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE)
        and stmt.relation is not None
        and stmt.subname
    ):
        table = _table(stmt.relation)
        return StatementEffect(
            sql,
            "rename_column",
            table,
            (stmt.subname,),
            False,
            reason=f"renames column {table}.{stmt.subname} to {stmt.newname}",
        )
    what = _object_type_name(rename_type)
    return StatementEffect(sql, "other", None, (), False, reason=f"renames {what} to {stmt.newname}")


# --- helpers --------------------------------------------------------------------------------------


def _table(relation: Any) -> TableRef:
    assert isinstance(relation, ast.RangeVar), relation
    return TableRef(relation.schemaname or None, relation.relname or "")


def _sval(node: ast.String) -> str:
    return node.sval or ""


def _names(obj: Any) -> list[str]:
    """The name parts of a DROP object: a String, or a sequence of Strings (schema, name)."""
    if isinstance(obj, ast.String):
        return [_sval(obj)]
    if isinstance(obj, (list, tuple)):
        return [_sval(part) for part in obj if isinstance(part, ast.String)]
    return [deparse(obj)]


def _target_names(targets: Any) -> tuple[str, ...]:
    names: list[str] = []
    for target in targets or ():
        if isinstance(target, ast.ResTarget) and target.name and target.name not in names:
            names.append(target.name)
    return tuple(names)


def _column_list(table: TableRef, columns: tuple[str, ...]) -> str:
    label = "column" if len(columns) == 1 else "columns"
    return f"{label} " + ", ".join(f"{table}.{c}" for c in columns)


def _unknown_functions(stmt: ast.Node) -> list[str]:
    unknown: list[str] = []
    for node in walk_nodes(stmt):
        if not isinstance(node, ast.FuncCall):
            continue
        parts = [_sval(p) for p in node.funcname or () if isinstance(p, ast.String)]
        if not parts:
            continue
        schema = parts[-2] if len(parts) > 1 else None
        name = parts[-1]
        if name.lower() in SAFE_FUNCTIONS and schema in (None, "pg_catalog"):
            continue
        qualified = ".".join(parts)
        if qualified not in unknown:
            unknown.append(qualified)
    return unknown


def _has_nested_dml(stmt: ast.Node, top: ast.Node) -> bool:
    return any(isinstance(node, _DML_CHILDREN) and node is not top for node in walk_nodes(stmt))


def _object_type_name(object_type: Any) -> str:
    try:
        return ObjectType(object_type).name.removeprefix("OBJECT_").lower().replace("_", " ")
    except ValueError:  # pragma: no cover
        return "object"


_DESCRIPTIONS: dict[type[ast.Node], str] = {
    ast.TransactionStmt: "transaction control",
    ast.VariableSetStmt: "sets a setting",
    ast.VariableShowStmt: "shows a setting",
    ast.CommentStmt: "sets a comment",
    ast.CreateSchemaStmt: "creates a schema",
    ast.CreateSeqStmt: "creates a sequence",
    ast.ViewStmt: "creates a view",
    ast.CreateFunctionStmt: "creates a function",
    ast.CreateTrigStmt: "creates a trigger",
    ast.CreateExtensionStmt: "creates an extension",
    ast.GrantStmt: "grants or revokes privileges",
    ast.LockStmt: "locks tables",
}


def _describe(stmt: ast.Node) -> str:
    return _DESCRIPTIONS.get(type(stmt), _statement_name(stmt))


def _statement_name(stmt: ast.Node) -> str:
    return type(stmt).__name__
