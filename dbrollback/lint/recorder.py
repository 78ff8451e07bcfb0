"""Record what an Alembic revision file does, without a database.

:func:`record_revision` imports a revision file and runs its ``upgrade()`` and ``downgrade()`` under
an *offline* Alembic context whose ``Operations.invoke`` is wrapped by a recorder: every Alembic
operation object (``alembic.operations.ops.*``) is collected together with the line of the ``op.``
call in the revision file. Nothing reaches a database; the offline context only renders SQL into a
throw-away buffer. Revisions that raise under the recorder or use ``op.get_bind()`` are marked
opaque: their effect cannot be known from the recording and is never guessed.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import itertools
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import pglast
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.operations import ops as alembic_ops
from alembic.runtime.migration import MigrationContext
from pglast import ast as pg_ast
from sqlalchemy.dialects import postgresql

from dbrollback.analysis.classify import StatementEffect, classify_sql

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


@dataclass
class RecordedRevision:
    path: Path
    source: str
    revision: str | None = None
    down_revision: str | tuple[str, ...] | None = None
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


def record_revision(path: Path) -> RecordedRevision:
    """Import the revision file at ``path`` and record its upgrade and downgrade operations."""
    path = Path(path).resolve()
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return RecordedRevision(path, "", syntax_error=f"cannot read the file: {exc}", syntax_error_line=1)
    recorded = RecordedRevision(path, source)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        recorded.syntax_error = f"{exc.msg}"
        recorded.syntax_error_line = exc.lineno or 1
        return recorded
    _read_ast(tree, recorded)
    calls = _op_calls(tree)

    with _LOCK:
        try:
            module = _import(path)
        except (Exception, SystemExit) as exc:
            recorded.syntax_error = f"the file does not import: {type(exc).__name__}: {exc}"
            recorded.syntax_error_line = _line_in_file(exc, path) or 1
            return recorded
        revision = getattr(module, "revision", None)
        recorded.revision = revision if isinstance(revision, str) else None
        down = getattr(module, "down_revision", None)
        recorded.down_revision = tuple(down) if isinstance(down, (list, tuple)) else down
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


def _import(path: Path) -> Any:
    name = f"_dbrollback_lint_revision_{next(_COUNTER)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Not registered in sys.modules: linting must not leave revision modules behind.
    spec.loader.exec_module(module)
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
        dialect = postgresql.dialect()
        try:
            return str(sqltext.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        except Exception:
            return str(sqltext.compile(dialect=dialect))
    return None


def _run(fn: Callable[[], Any], function: FunctionRecording, direction: Direction, path: Path,
         calls: list[tuple[int, int, int]]) -> None:  # fmt: skip
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": io.StringIO()}
    )
    autocommit = [0]

    def wrap_invoke(real: Any) -> Any:
        def invoke(operation: Any) -> Any:
            lineno = _caller_line(path)
            line, column = _locate(lineno, calls) if lineno is not None else (1, 1)
            sql = _sql_text(operation.sqltext) if isinstance(operation, alembic_ops.ExecuteSQLOp) else None
            function.ops.append(RecordedOp(operation, direction, line, column, autocommit[0] > 0, sql))
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

    def get_bind() -> Any:
        function.used_bind = True
        return None

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
    """Columns these operations add (op.add_column, or ADD COLUMN in op.execute)."""
    columns: set[tuple[TableKey, str]] = set()
    for recorded in ops:
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
