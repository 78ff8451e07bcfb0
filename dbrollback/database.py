"""Which database a command talks to, and opening connections to it with clear errors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from dbrollback import __version__
from dbrollback.embedded import EmbeddedServer
from dbrollback.errors import ConnectionFailed
from dbrollback.settings import Settings
from dbrollback.urls import display_url, libpq_url, parse_database_url, redact, sqlalchemy_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

Notify = Callable[[str], None]


@dataclass(frozen=True)
class Database:
    url: URL
    embedded: bool

    @property
    def libpq_url(self) -> str:
        return libpq_url(self.url)

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url(self.url)

    @property
    def display(self) -> str:
        return display_url(self.url)


def resolve_database(settings: Settings, notify: Notify | None = None) -> Database:
    """The configured database, or the embedded server (started if needed)."""
    if settings.database_url:
        return Database(parse_database_url(settings.database_url), embedded=False)
    server = EmbeddedServer(settings.embedded_pgdata)
    was_running = server.status().running
    status = server.start()
    if notify:
        verb = "using" if was_running else "started"
        notify(f"No database URL configured: {verb} the embedded PostgreSQL at {server.pgdata}")
    return Database(parse_database_url(status.url()), embedded=True)


@contextlib.contextmanager
def connect(database: Database, purpose: str = "control") -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection; connection problems become ConnectionFailed (exit 2)."""
    try:
        conn = psycopg.connect(
            database.libpq_url,
            autocommit=True,
            connect_timeout=10,
            application_name=f"dbrollback {__version__} {purpose}",
        )
    except psycopg.Error as exc:
        raise ConnectionFailed(
            f"Cannot connect to {database.display}: {redact(str(exc)).strip()}",
            url=database.display,
        ) from None
    with conn:
        yield conn
