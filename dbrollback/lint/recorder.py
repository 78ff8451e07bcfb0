"""Record what an Alembic revision file does, without a database.

:func:`record_revision` imports a revision file and runs its ``upgrade()`` and ``downgrade()`` under
an *offline* Alembic context whose ``Operations.invoke`` is wrapped by a recorder: every Alembic
operation object (``alembic.operations.ops.*``) is collected together with the line of the ``op.``
call in the revision file. Nothing reaches a database: the offline context does not even render the
SQL (its ``_exec`` discards it). Revisions that raise under the recorder or send anything through
``op.get_bind()`` are marked opaque: their effect cannot be known from the recording and is never
guessed. Whatever revision code prints goes to stderr: stdout carries ``lint --format json/sarif``.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import io
import itertools
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import pglast
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.operations import ops as alembic_ops
from alembic.runtime.migration import MigrationContext
from pglast import ast as pg_ast
from pglast.enums import ObjectType
from sqlalchemy.dialects import postgresql

from dbrollback.analysis.classify import StatementEffect, classify_sql
from dbrollback.analysis.pg_tree import deparse, walk_nodes
from dbrollback.expand import ExpandOperation
from dbrollback.lint.bind import RecordingBind

__all__ = ["FunctionRecording", "RecordedOp", "RecordedRevision", "record_revision"]

Direction = Literal["upgrade", "downgrade"]

# The alembic.op proxy is module-global: only one recording may run at a time in a process.
_LOCK = threading.Lock()
_COUNTER = itertools.count()


@dataclass
class RecordedOp:
    """One Alembic operation issued by ``upgrade()`` or ``downgrade()``."""

    op: alembic_ops.MigrateOperation
    direction: Direction
    line: int
    column: int
    in_autocommit_block: bool
    # The SQL text of op.execute() (sa.text compiled with literal binds when possible), else None.
    sql: str | None = None

    @cached_property
    def sql_statements(self) -> list[pg_ast.Node]:
        """The parsed statements of :attr:`sql` (empty if there is none or it does not parse)."""
        if not self.sql:
            return []
        try:
            return [raw.stmt for raw in pglast.parse_sql(self.sql) if raw.stmt is not None]
        except Exception:
            return []

    @cached_property
    def effects(self) -> list[StatementEffect]:
        """What the raw SQL of an ``op.execute()`` does (see :func:`classify_sql`)."""
        return classify_sql(self.sql) if self.sql else []

    @cached_property
    def statements(self) -> list[pg_ast.Node]:
        """The parsed SQL this operation sends: :attr:`sql_statements` for ``op.execute()``, the DDL
        Alembic renders offline for the kinds in :data:`RENDERED_OPS`, else nothing."""
        if isinstance(self.op, alembic_ops.ExecuteSQLOp):
            return self.sql_statements
        if not isinstance(self.op, RENDERED_OPS):
            return []
        try:
            return [raw.stmt for raw in pglast.parse_sql(render_offline(self.op)) if raw.stmt is not None]
        except Exception:
            return []


@dataclass
class FunctionRecording:
    """What one of ``upgrade()`` / ``downgrade()`` did under the recorder."""

    present: bool
    line: int | None = None
    # pass / docstring / `...` only, or `raise NotImplementedError` (comments are not in the AST).
    empty: bool = False
    raises_not_implemented: bool = False
    ops: list[RecordedOp] = field(default_factory=list)
    used_bind: bool = False
    error: str | None = None
    error_line: int | None = None

    @property
    def opaque(self) -> str | None:
        """Why the recording does not show everything the function does, or None."""
        if self.used_bind:
            return "uses op.get_bind() to reach the database directly"
        if self.error is not None:
            return f"raised under the recorder: {self.error}"
        return None

    @property
    def fully_seen(self) -> bool:
        """True if the recording shows everything the function does: not opaque, and every SQL
        string of ``op.execute`` readable (a DO block or unknown function may do anything). Facts
        that need the *absence* of something ("the upgrade did not add this column") hold only then."""
        if self.opaque is not None:
            return False
        return not any(effect.opaque for recorded in self.ops for effect in recorded.effects)


@dataclass
class RecordedRevision:
    path: Path
    source: str
    revision: str | None = None
    down_revision: str | tuple[str, ...] | None = None
    branch_labels: tuple[str, ...] = ()
    irreversible: str | None = None  # module-level `dbrollback_irreversible = "reason"`
    revision_line: int | None = None
    upgrade: FunctionRecording = field(default_factory=lambda: FunctionRecording(False))
    downgrade: FunctionRecording = field(default_factory=lambda: FunctionRecording(False))
    syntax_error: str | None = None
    syntax_error_line: int | None = None

    @property
    def is_revision(self) -> bool:
        return self.syntax_error is None and self.revision is not None

    def function(self, direction: Direction) -> FunctionRecording:
        return self.upgrade if direction == "upgrade" else self.downgrade

    @property
    def ops(self) -> list[RecordedOp]:
        return self.upgrade.ops + self.downgrade.ops


def record_revision(path: Path, source: str | None = None) -> RecordedRevision:
    """Import the revision file at ``path`` and record its upgrade and downgrade operations.

    ``source``: the file's text when the caller has already read it."""
    path = Path(path).resolve()
    if source is None:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot read the file: {exc}"
            return RecordedRevision(path, "", syntax_error=problem, syntax_error_line=1)
    recorded = RecordedRevision(path, source)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        recorded.syntax_error = f"{exc.msg}"
        recorded.syntax_error_line = exc.lineno or 1
        return recorded
    _read_ast(tree, recorded)
    calls = _op_calls(tree)

    # Revision code that prints must not corrupt `lint --format json/sarif` on stdout.
    with _LOCK, redirect_stdout(sys.stderr):
        try:
            module = _import(path, tree)
        except (Exception, SystemExit) as exc:
            recorded.syntax_error = f"the file does not import: {type(exc).__name__}: {exc}"
            recorded.syntax_error_line = _line_in_file(exc, path) or 1
            return recorded
        revision = getattr(module, "revision", None)
        recorded.revision = revision if isinstance(revision, str) else None
        down = getattr(module, "down_revision", None)
        recorded.down_revision = tuple(down) if isinstance(down, (list, tuple)) else down
        labels = getattr(module, "branch_labels", None)
        labels = (labels,) if isinstance(labels, str) else labels
        if isinstance(labels, (list, tuple)):
            recorded.branch_labels = tuple(label for label in labels if isinstance(label, str))
        irreversible = getattr(module, "dbrollback_irreversible", None)
        recorded.irreversible = irreversible.strip() or None if isinstance(irreversible, str) else None
        for direction in ("upgrade", "downgrade"):
            function = recorded.function(direction)
            fn = getattr(module, direction, None)
            if not function.present or not callable(fn):
                continue
            if function.empty:
                # Nothing to run; `raise NotImplementedError` is a missing downgrade, not opaque.
                continue
            _run(fn, function, direction, path, calls)
    return recorded


# --- AST ---------------------------------------------------------------------------------------------


def _read_ast(tree: ast.Module, recorded: RecordedRevision) -> None:
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "revision" for t in targets):
            recorded.revision_line = node.lineno
        functions = (ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, functions) and node.name in ("upgrade", "downgrade"):
            empty, not_implemented = _empty_body(node.body)
            recording = FunctionRecording(True, node.lineno, empty, not_implemented)
            if node.name == "upgrade":
                recorded.upgrade = recording
            else:
                recorded.downgrade = recording


def _empty_body(body: list[ast.stmt]) -> tuple[bool, bool]:
    """(empty, raises NotImplementedError) for a function body."""
    not_implemented = False
    for statement in body:
        if isinstance(statement, ast.Pass):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # docstring or `...`
        if isinstance(statement, ast.Raise) and _is_not_implemented(statement.exc):
            not_implemented = True
            continue
        return False, False
    return True, not_implemented


def _is_not_implemented(exc: ast.expr | None) -> bool:
    if isinstance(exc, ast.Call):
        exc = exc.func
    return isinstance(exc, ast.Name) and exc.id in ("NotImplementedError", "NotImplemented")


def _op_calls(tree: ast.Module) -> list[tuple[int, int, int]]:
    """(first line, last line, column) of every call in the file, innermost last when sorted."""
    calls: list[tuple[int, int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            calls.append((node.lineno, node.end_lineno or node.lineno, node.col_offset + 1))
    return calls


def _locate(lineno: int, calls: list[tuple[int, int, int]]) -> tuple[int, int]:
    """The first line and column of the outermost call spanning ``lineno`` (multi-line calls)."""
    spanning = [c for c in calls if c[0] <= lineno <= c[1]]
    if not spanning:
        return lineno, 1
    # Outermost = longest span; an `op.` call is normally a statement of its own.
    first, _last, column = min(spanning, key=lambda c: (c[0], -c[1]))
    return first, column


# --- import and run ----------------------------------------------------------------------------------


def _import(path: Path, tree: ast.Module) -> Any:
    name = f"_dbrollback_lint_revision_{next(_COUNTER)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Not registered in sys.modules: linting must not leave revision modules behind. Compiled from the
    # tree already parsed rather than through the loader: no second read or parse, and no
    # __pycache__ written into the user's versions directory. dont_inherit: this module's
    # __future__ flags stay here.
    exec(compile(tree, str(path), "exec", dont_inherit=True), module.__dict__)
    return module


def _line_in_file(exc: BaseException, path: Path) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == path:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if Path(frame.f_code.co_filename) == path:
            line = lineno
    return line


def _caller_line(path: Path) -> int | None:
    frame = sys._getframe(1)
    filename = str(path)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _sql_text(sqltext: Any) -> str | None:
    if isinstance(sqltext, str):
        return sqltext
    if isinstance(sqltext, sa.sql.ClauseElement):
        try:
            return str(sqltext.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        except Exception:
            # Values without a literal renderer (e.g. Core update().values() on sa.column() of NullType):
            # `$n` placeholders, unlike psycopg's `%(name)s`, are SQL that pglast parses.
            return str(sqltext.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar")))
    return None


_CONTEXT: list[MigrationContext] = []


def _offline_context() -> MigrationContext:
    """The one offline PostgreSQL context every recording shares (callers hold _LOCK).

    Configuring a context for each function took a fifth of lint's time, and rendering the SQL of
    each operation, which nothing reads, a sixth (benchmarks/lint_speed.py --profile): ``_exec``
    discards it. Under ``as_sql`` it returned None anyway, so what an ``op.`` call returns to the
    revision (e.g. create_table's Table) is unchanged."""
    if not _CONTEXT:
        context = MigrationContext.configure(
            dialect_name="postgresql", opts={"as_sql": True, "output_buffer": io.StringIO()}
        )
        context.impl._exec = lambda *args, **kwargs: None  # type: ignore[method-assign]
        _CONTEXT.append(context)
    return _CONTEXT[0]


def _run(fn: Callable[[], Any], function: FunctionRecording, direction: Direction, path: Path,
         calls: list[tuple[int, int, int]]) -> None:  # fmt: skip
    context = _offline_context()
    autocommit = [0]

    def wrap_invoke(real: Any) -> Any:
        def invoke(operation: Any) -> Any:
            lineno = _caller_line(path)
            line, column = _locate(lineno, calls) if lineno is not None else (1, 1)
            sql = _sql_text(operation.sqltext) if isinstance(operation, alembic_ops.ExecuteSQLOp) else None
            function.ops.append(RecordedOp(operation, direction, line, column, autocommit[0] > 0, sql))
            if isinstance(operation, ExpandOperation):
                # Its implementation needs a live connection (it reads the table and writes the
                # catalog); the recording is all lint needs, and helpers return nothing.
                return None
            try:
                # Offline (as_sql): renders into the buffer, never executes; keeps return values
                # (e.g. create_table's Table) so later code in the revision keeps working.
                return real(operation)
            except Exception:
                return None

        return invoke

    operations = Operations(context)
    real_batch = operations.batch_alter_table

    @contextmanager
    def batch_alter_table(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_batch(*args, **kwargs) as batch:
            batch.invoke = wrap_invoke(batch.invoke)  # type: ignore[method-assign]
            yield batch

    @contextmanager
    def autocommit_block() -> Iterator[None]:
        autocommit[0] += 1
        try:
            yield
        finally:
            autocommit[0] -= 1

    bind = RecordingBind(lambda: setattr(function, "used_bind", True))

    def get_bind() -> Any:
        return bind

    # Instance attributes shadow the methods; _install_proxy copies them onto alembic.op.
    operations.invoke = wrap_invoke(operations.invoke)  # type: ignore[method-assign]
    operations.batch_alter_table = batch_alter_table  # type: ignore[method-assign]
    operations.get_bind = get_bind  # type: ignore[method-assign]
    context.autocommit_block = autocommit_block  # type: ignore[method-assign]
    operations._install_proxy()
    try:
        fn()
    except Exception as exc:
        function.error = f"{type(exc).__name__}: {exc}"
        function.error_line = _line_in_file(exc, path)
    finally:
        operations._remove_proxy()


# --- facts the rules share ---------------------------------------------------------------------------

TableKey = tuple[str | None, str]


def table_key(schema: str | None, name: str) -> TableKey:
    """Tables compare equal whether written with ``public.`` or unqualified."""
    return (None if schema in (None, "", "public") else schema, name)


def created_tables(ops: list[RecordedOp]) -> set[TableKey]:
    """Tables these operations create (op.create_table, or CREATE TABLE in op.execute)."""
    tables: set[TableKey] = set()
    for recorded in ops:
        if isinstance(recorded.op, alembic_ops.CreateTableOp):
            tables.add(table_key(recorded.op.schema, recorded.op.table_name))
        for effect in recorded.effects:
            if effect.kind == "create_table" and effect.table is not None:
                tables.add(table_key(effect.table.schema, effect.table.name))
    return tables


def with_tables_created_before(ops: list[RecordedOp]) -> Iterator[tuple[RecordedOp, set[TableKey]]]:
    """Each operation with the tables created by the operations before it (in one pass)."""
    created: set[TableKey] = set()
    for recorded in ops:
        yield recorded, set(created)
        created |= created_tables([recorded])


def added_columns(ops: list[RecordedOp]) -> set[tuple[TableKey, str]]:
    """Columns these operations add (op.add_column, ADD COLUMN in op.execute, or the new columns
    of dbrollback.expand helpers)."""
    columns: set[tuple[TableKey, str]] = set()
    for recorded in ops:
        opened = opened_expansion(recorded)
        if opened is not None:
            columns.update((opened.table, column) for column in opened.columns)
        if isinstance(recorded.op, alembic_ops.AddColumnOp):
            key = table_key(recorded.op.schema, recorded.op.table_name)
            columns.add((key, recorded.op.column.name))
        for effect in recorded.effects:
            if effect.kind == "add_column" and effect.table is not None:
                key = table_key(effect.table.schema, effect.table.name)
                columns.update((key, column) for column in effect.columns)
    return columns


def dropped_tables(recorded: RecordedOp) -> list[TableKey]:
    """Tables one operation drops (op.drop_table, or DROP TABLE in op.execute)."""
    if isinstance(recorded.op, alembic_ops.DropTableOp):
        return [table_key(recorded.op.schema, recorded.op.table_name)]
    return [
        table_key(effect.table.schema, effect.table.name)
        for effect in recorded.effects
        if effect.kind == "drop_table" and effect.table is not None
    ]


def dropped_columns(recorded: RecordedOp) -> list[tuple[TableKey, str]]:
    """Columns one operation drops (op.drop_column, or DROP COLUMN in op.execute)."""
    if isinstance(recorded.op, alembic_ops.DropColumnOp):
        return [(table_key(recorded.op.schema, recorded.op.table_name), recorded.op.column_name)]
    return [
        (table_key(effect.table.schema, effect.table.name), column)
        for effect in recorded.effects
        if effect.kind == "drop_column" and effect.table is not None
        for column in effect.columns
    ]


def table_label(key: TableKey) -> str:
    return f"{key[0]}.{key[1]}" if key[0] else key[1]


# --- dbrollback.expand helpers -----------------------------------------------------------------------

# ExpandOperation.kind -> the helper a revision calls, for messages.
EXPAND_HELPERS = {
    "synced_column": "expand.add_synced_column",
    "rename_column": "expand.rename_column",
    "change_column_type": "expand.change_column_type",
    "split_column": "expand.split_column",
    "not_null_column": "expand.add_not_null_column",
    "foreign_key": "expand.add_foreign_key",
    "index": "expand.create_index",
    "abort": "expand.abort",
    "backfill": "expand.backfill",
}


@dataclass(frozen=True)
class OpenedExpansion:
    """What one expand helper call adds to the schema: exactly what ``expand.abort()`` in the
    downgrade drops again (with the helper's sync trigger, which lint does not model). The old shape
    is left alone until ``dbrollback contract``, so no helper drops, renames or retypes anything."""

    kind: str
    table: TableKey
    columns: tuple[str, ...] = ()  # new columns
    index: str | None = None
    constraint: str | None = None
    on_columns: tuple[str, ...] = ()  # the columns the index or foreign key is on

    @property
    def helper(self) -> str:
        return EXPAND_HELPERS.get(self.kind, f"expand ({self.kind})")

    @property
    def abort_loses_writes(self) -> bool:
        """Whether values written to the new shape are lost when abort drops it. The synced kinds
        copy every write back to the old column(s) (or refuse writes that cannot be copied back); an
        add_not_null_column column holds values nothing else has."""
        return self.kind == "not_null_column"


def expand_kind(recorded: RecordedOp) -> str | None:
    """The ``kind`` of a dbrollback.expand helper call, or None for other operations."""
    return recorded.op.kind if isinstance(recorded.op, ExpandOperation) else None


def opened_expansion(recorded: RecordedOp) -> OpenedExpansion | None:
    """What an expand helper call adds; None for other operations, ``expand.abort()`` and
    ``expand.backfill()`` (which open no expansion)."""
    op = recorded.op
    if not isinstance(op, ExpandOperation) or op.kind in ("abort", "backfill"):
        return None
    table = table_key(op.schema, op.table_name)
    args = op.arguments
    if op.kind == "not_null_column":
        return OpenedExpansion(op.kind, table, (str(args["column"]),))
    if op.kind == "index":
        return OpenedExpansion(op.kind, table, index=str(args["name"]),
                               on_columns=tuple(str(c) for c in args.get("columns") or ()))  # fmt: skip
    if op.kind == "foreign_key":
        return OpenedExpansion(op.kind, table, constraint=str(args["name"]),
                               on_columns=tuple(str(c) for c in args.get("local_cols") or ()))  # fmt: skip
    return OpenedExpansion(op.kind, table, tuple(str(item["name"]) for item in args.get("new") or ()))


def opened_expansions(ops: list[RecordedOp]) -> list[tuple[RecordedOp, OpenedExpansion]]:
    """The expand helper calls among ``ops`` that open an expansion, with what each adds."""
    found = []
    for recorded in ops:
        opened = opened_expansion(recorded)
        if opened is not None:
            found.append((recorded, opened))
    return found


def expand_abort(ops: list[RecordedOp]) -> RecordedOp | None:
    """The first ``expand.abort()`` among ``ops``: in a downgrade it drops everything the upgrade's
    expand helpers added (abort works by revision id, so it is the inverse of all of them)."""
    return next((recorded for recorded in ops if expand_kind(recorded) == "abort"), None)


# Operations whose exact DDL the lock rules read: NOT VALID, USING INDEX, serial / identity columns,
# inline and separate constraints of add_column. Only these are rendered (about 0.15 ms each).
RENDERED_OPS: tuple[type[alembic_ops.MigrateOperation], ...] = (
    alembic_ops.AddColumnOp,
    alembic_ops.CreateForeignKeyOp,
    alembic_ops.CreateCheckConstraintOp,
    alembic_ops.CreateUniqueConstraintOp,
    alembic_ops.CreatePrimaryKeyOp,
)

_RENDERER = threading.local()


def render_offline(operation: alembic_ops.MigrateOperation) -> str:
    """The SQL Alembic would send for ``operation`` on PostgreSQL (offline: nothing is executed)."""
    if isinstance(operation, alembic_ops.AddColumnOp) and operation.column.table is not None:
        # The recording attached the column to a table. Alembic would render a copy, and
        # Column._copy drops foreign keys already bound to a table: render a copy that keeps them.
        column = operation.column._copy()
        for foreign_key in operation.column.foreign_keys:
            if foreign_key.constraint is not None:
                column.append_foreign_key(foreign_key._copy())
        operation = copy.copy(operation)
        operation.column = column
    renderer: tuple[io.StringIO, Operations] | None = getattr(_RENDERER, "value", None)
    if renderer is None:
        # One context per thread: configuring one costs as much as rendering an operation.
        buffer = io.StringIO()
        context = MigrationContext.configure(
            dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
        )
        renderer = _RENDERER.value = (buffer, Operations(context))
    buffer, operations = renderer
    buffer.seek(0)
    buffer.truncate()
    operations.invoke(operation)
    return buffer.getvalue()


def alter_table_commands(recorded: RecordedOp) -> Iterator[tuple[TableKey, pg_ast.AlterTableCmd]]:
    """Each ``ALTER TABLE`` subcommand of :attr:`RecordedOp.statements`, with its table."""
    return _alter_commands(recorded.statements, ObjectType.OBJECT_TABLE)


def sql_alter_table_commands(recorded: RecordedOp) -> Iterator[tuple[TableKey, pg_ast.AlterTableCmd]]:
    """Each subcommand of the ``ALTER TABLE`` statements in the SQL of ``op.execute()``
    (:attr:`RecordedOp.sql_statements`), with the relation it names. PostgreSQL parses ALTER INDEX /
    VIEW / SEQUENCE / TYPE into the same statement; those are not told apart here."""
    return _alter_commands(recorded.sql_statements, None)


def _alter_commands(
    statements: list[pg_ast.Node], object_type: ObjectType | None
) -> Iterator[tuple[TableKey, pg_ast.AlterTableCmd]]:
    for statement in statements:
        if not isinstance(statement, pg_ast.AlterTableStmt) or statement.relation is None:
            continue
        if object_type is not None and statement.objtype != object_type:
            continue
        key = table_key(statement.relation.schemaname, statement.relation.relname or "")
        for cmd in statement.cmds or ():
            if isinstance(cmd, pg_ast.AlterTableCmd):
                yield key, cmd


# --- column types and row changes (downgrade-aware rules) --------------------------------------------


@dataclass(frozen=True)
class PgType:
    """A column type spelled one way whether it came from SQLAlchemy or from SQL text: PostgreSQL's
    parser resolves the aliases (``INTEGER``/``int``/``int4`` are all ``int4``)."""

    name: str
    modifiers: tuple[str, ...] = ()
    array_dimensions: int = 0
    collation: str | None = None

    def __str__(self) -> str:
        text = self.name + (f"({','.join(self.modifiers)})" if self.modifiers else "")
        text += "[]" * self.array_dimensions
        return f'{text} COLLATE "{self.collation}"' if self.collation else text


def pg_type(type_: Any, collation: str | None = None) -> PgType | None:
    """The :class:`PgType` of a SQLAlchemy type (class or instance) or a pglast ``TypeName``;
    None when it cannot be compiled for PostgreSQL (e.g. an Enum without a name)."""
    if isinstance(type_, pg_ast.TypeName):
        return _pg_type_of_node(type_, collation)
    try:
        return _pg_type_of_text(str(sa.types.to_instance(type_).compile(dialect=_PG_DIALECT)))
    except Exception:
        return None


_PG_DIALECT = postgresql.dialect()


@lru_cache(maxsize=1024)
def _pg_type_of_text(text: str) -> PgType | None:
    # Cached: the rules ask for the same few type spellings many times per revision.
    try:
        statement: Any = pglast.parse_sql(f"SELECT NULL::{text}")[0].stmt
        value = statement.targetList[0].val
    except Exception:
        return None
    collation = None
    if isinstance(value, pg_ast.CollateClause):
        collation = _dotted(value.collname)
        value = value.arg
    if not isinstance(value, pg_ast.TypeCast) or value.typeName is None:
        return None
    return _pg_type_of_node(value.typeName, collation)


def _pg_type_of_node(node: pg_ast.TypeName, collation: str | None) -> PgType:
    names = [part.sval or "" for part in node.names or () if isinstance(part, pg_ast.String)]
    if len(names) > 1 and names[0] in ("pg_catalog", "public"):
        names = names[1:]
    modifiers = tuple(_type_modifier(m) for m in node.typmods or ())
    return PgType(".".join(names), modifiers, len(node.arrayBounds or ()), collation)


def _dotted(names: Any) -> str:
    return ".".join(part.sval or "" for part in names or () if isinstance(part, pg_ast.String))


def _type_modifier(node: Any) -> str:
    value = getattr(node, "val", None)
    if isinstance(value, pg_ast.Integer):
        return str(value.ival)
    if isinstance(value, (pg_ast.Float, pg_ast.String)):
        return str(getattr(value, "fval", None) or getattr(value, "sval", ""))
    return deparse(node)


@dataclass(frozen=True)
class TypeChange:
    """A column type change: ``old`` is the ``existing_type`` the revision states (raw SQL never
    states it), ``using`` the USING expression as SQL text."""

    table: TableKey
    column: str
    new: PgType | None
    old: PgType | None
    using: str | None


def type_changes(recorded: RecordedOp) -> list[TypeChange]:
    """Type changes of one operation (op.alter_column(type_=...), or ALTER COLUMN ... TYPE in SQL)."""
    from pglast.enums import AlterTableType

    op = recorded.op
    if isinstance(op, alembic_ops.AlterColumnOp) and op.modify_type is not None:
        old = pg_type(op.existing_type) if op.existing_type is not None else None
        using = op.kw.get("postgresql_using")
        change = TypeChange(
            table_key(op.schema, op.table_name), op.column_name, pg_type(op.modify_type), old,
            str(using) if using is not None else None,
        )  # fmt: skip
        return [change]
    changes: list[TypeChange] = []
    for key, cmd in sql_alter_table_commands(recorded):
        definition = cmd.def_
        if cmd.subtype != AlterTableType.AT_AlterColumnType or not isinstance(definition, pg_ast.ColumnDef):
            continue
        collation = _dotted(definition.collClause.collname) if definition.collClause else None
        new = pg_type(definition.typeName, collation) if definition.typeName is not None else None
        using = deparse(definition.raw_default) if definition.raw_default is not None else None
        changes.append(TypeChange(key, cmd.name or "", new, None, using))
    return changes


_ROW_CHANGES: dict[type[pg_ast.Node], str] = {
    pg_ast.UpdateStmt: "update",
    pg_ast.DeleteStmt: "delete",
    pg_ast.InsertStmt: "insert",
    pg_ast.MergeStmt: "merge",
}


@dataclass(frozen=True)
class RowChange:
    """Rows one statement writes: ``kind`` is update | delete | insert | merge; ``columns`` the
    columns an UPDATE sets or an INSERT lists (empty: all, or not known)."""

    kind: str
    table: TableKey
    columns: tuple[str, ...]


def row_changes(recorded: RecordedOp) -> list[RowChange]:
    """UPDATE / DELETE / INSERT / MERGE of one operation, including data-modifying WITH clauses:
    raw SQL, SQLAlchemy Core statements given to op.execute (compiled by the recorder),
    op.bulk_insert, and expand.backfill (an UPDATE in batches: batching spares the locks, but the
    old values are overwritten all the same)."""
    op = recorded.op
    if isinstance(op, ExpandOperation) and op.kind == "backfill":
        return [RowChange("update", table_key(op.schema, op.table_name), _backfill_columns(op.arguments))]
    if isinstance(op, alembic_ops.BulkInsertOp):
        table = op.table
        columns = tuple(str(column.name) for column in getattr(table, "columns", ()))
        return [RowChange("insert", table_key(getattr(table, "schema", None), str(table.name)), columns)]
    changes: list[RowChange] = []
    for statement in recorded.sql_statements:
        for node in walk_nodes(statement):
            kind = _ROW_CHANGES.get(type(node))
            relation = getattr(node, "relation", None)
            if kind is None or not isinstance(relation, pg_ast.RangeVar):
                continue
            targets = getattr(node, {"update": "targetList", "insert": "cols"}.get(kind, ""), None)
            columns = tuple(t.name for t in targets or () if isinstance(t, pg_ast.ResTarget) and t.name)
            changes.append(RowChange(kind, table_key(relation.schemaname, relation.relname or ""), columns))
    return changes


def _backfill_columns(arguments: dict[str, Any]) -> tuple[str, ...]:
    """The columns ``expand.backfill(set=...)`` writes (empty: not known, as for an UPDATE)."""
    try:
        statement = pglast.parse_sql(f"UPDATE _t SET {arguments.get('set') or ''}")[0].stmt
    except Exception:
        return ()
    targets = getattr(statement, "targetList", None) or ()
    return tuple(t.name for t in targets if isinstance(t, pg_ast.ResTarget) and t.name)
