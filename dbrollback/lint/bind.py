"""What ``op.get_bind()`` returns while the lint recorder runs a revision: a connection stand-in.

Revisions often ask the bind only for its dialect (``if op.get_bind().dialect.name ==
"postgresql":``); that must not stop the recording. Anything sent through it makes the function
opaque (its callback says so), and any use of what the database would have returned stops the
function, so code that depends on data is never recorded as if it had run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["DatabaseNeeded", "RecordingBind"]


class DatabaseNeeded(Exception):
    """The revision reads what the database returned; the recorder has no database."""


class _DatabaseResult:
    """What ``execute()`` & co. return to the revision under the recorder: using it in any way
    (rows, scalar, truth value, iteration) stops the function, so no branch taken on data that does
    not exist is ever recorded as if it ran."""

    def _needed(self, *args: Any, **kwargs: Any) -> Any:
        raise DatabaseNeeded("the revision uses a result read from the database through op.get_bind()")

    __getattr__ = __bool__ = __iter__ = __len__ = __getitem__ = __eq__ = __ne__ = _needed
    __lt__ = __le__ = __gt__ = __ge__ = __int__ = __float__ = __str__ = __contains__ = _needed
    __hash__ = None  # type: ignore[assignment]


class _Transaction:
    """``with bind.begin():`` / ``with bind.engine.begin() as connection:`` under the recorder."""

    def __init__(self, bind: RecordingBind) -> None:
        self._bind = bind

    def __enter__(self) -> RecordingBind:
        return self._bind

    def __exit__(self, *exc: object) -> None:
        return None

    def commit(self) -> None:
        return None

    def rollback(self) -> None:
        return None


_BIND_DIALECT = postgresql.dialect()


class _RecordingEngine:
    def __init__(self, bind: RecordingBind) -> None:
        self._bind = bind
        self.dialect = _BIND_DIALECT
        self.name = self.dialect.name

    def connect(self) -> RecordingBind:
        self._bind._used()
        return self._bind

    def begin(self) -> _Transaction:
        return self._bind.begin()


class RecordingBind:
    """What ``op.get_bind()`` returns under the recorder: a stand-in connection.

    Reading ``dialect`` (``if op.get_bind().dialect.name == "postgresql":``) is free and recording
    goes on. Sending anything through it — ``execute()``, ``exec_driver_sql()``, ``scalar()``,
    ``begin()``, or SQLAlchemy's ``Enum(...).create(bind)`` / ``Table.create(bind)`` /
    ``metadata.create_all(bind)``, which run DDL through ``_run_ddl_visitor`` — marks the function as
    having used the bind (opaque: what it did is not known). Nothing reaches a database; recording
    continues until the revision uses a result (see :class:`_DatabaseResult`)."""

    def __init__(self, on_use: Callable[[], None]) -> None:
        self._on_use = on_use
        self.dialect = _BIND_DIALECT
        self.engine = _RecordingEngine(self)

    def _used(self) -> None:
        self._on_use()

    def _sent(self, *args: Any, **kwargs: Any) -> _DatabaseResult:
        self._used()
        return _DatabaseResult()

    execute = exec_driver_sql = scalar = scalars = _sent

    def _run_ddl_visitor(self, *args: Any, **kwargs: Any) -> None:
        self._used()

    def begin(self) -> _Transaction:
        self._used()
        return _Transaction(self)

    begin_nested = begin

    def __enter__(self) -> RecordingBind:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def connection(self) -> RecordingBind:
        self._used()
        return self

    def execution_options(self, **options: Any) -> RecordingBind:
        return self

    def in_transaction(self) -> bool:
        return True

    def commit(self) -> None:
        self._used()

    def rollback(self) -> None:
        self._used()

    def __getattr__(self, name: str) -> Any:
        # Anything else (connection internals): the revision talks to the database.
        self._used()
        raise DatabaseNeeded(f"op.get_bind().{name} needs the database")


def _inspect_bind(bind: RecordingBind) -> Any:
    """``sa.inspect(op.get_bind())`` and ``Table(..., autoload_with=op.get_bind())`` read the catalog."""
    bind._used()
    raise DatabaseNeeded("the revision inspects the database through op.get_bind()")


sa.inspection._inspects(RecordingBind)(_inspect_bind)
