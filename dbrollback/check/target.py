"""Where `check` runs: never against real data.

By default, a new database ``dbrb_check_<hex>`` on the embedded server (started if it is not
running; a running one is reused), dropped afterwards, also on failure. When a revision leaves the
database in a state the next revisions cannot start from, the check asks for a fresh one.

With a configured database URL, that database is used as it is, but only if it has no user tables;
otherwise the check refuses (exit 3) and changes nothing. It is left at the last revision checked,
with the generated rows; a fresh one cannot be made there.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbrollback.check.tables import USER_NAMESPACE, display_name
from dbrollback.database import Database, connect, resolve_database
from dbrollback.errors import ConnectionFailed, RefusedForSafety
from dbrollback.settings import Settings

__all__ = ["CHECK_DATABASE_PREFIX", "Workspace", "open_workspace"]

CHECK_DATABASE_PREFIX = "dbrb_check_"
Notify = Callable[[str], None]

_USER_TABLES_SQL = f"""
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'f') AND {USER_NAMESPACE}
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Target:
    database: Database
    temporary: bool  # created by the check, dropped afterwards

    @property
    def description(self) -> str:
        name = self.database.url.database
        if self.temporary:
            return f"throwaway database {name} on the embedded PostgreSQL (dropped afterwards)"
        return f"{self.database.display} (empty; left at the last revision checked)"


class Workspace:
    def __init__(self, admin: Database | None, configured: Database | None, notify: Notify) -> None:
        self._admin = admin  # embedded server's maintenance database, when the check makes its own
        self._configured = configured
        self._notify = notify
        self._created: list[str] = []
        self.current: Target | None = None

    @property
    def can_replace(self) -> bool:
        return self._admin is not None

    def open(self) -> Target:
        if self._configured is not None:
            self.current = Target(self._configured, temporary=False)
        else:
            self.current = self._create()
        return self.current

    def replace(self) -> Target:
        """A fresh, empty database instead of the current one (only for databases the check made)."""
        assert self._admin is not None and self.current is not None
        self._drop(self.current.database.url.database or "")
        self.current = self._create()
        return self.current

    def _create(self) -> Target:
        assert self._admin is not None
        name = f"{CHECK_DATABASE_PREFIX}{secrets.token_hex(6)}"
        with connect(self._admin, "check") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        self._created.append(name)
        return Target(Database(self._admin.url.set(database=name), embedded=True), temporary=True)

    def _drop(self, name: str) -> None:
        assert self._admin is not None
        if name not in self._created:
            return
        try:
            with connect(self._admin, "check") as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            self._created.remove(name)
        except (psycopg.Error, ConnectionFailed) as exc:
            self._notify(f"Could not drop the throwaway database {name}; drop it by hand: {exc}")

    def close(self) -> None:
        for name in list(self._created):
            self._drop(name)


def _refuse_if_tables(database: Database) -> None:
    with connect(database, "check") as conn:
        tables = conn.execute(_USER_TABLES_SQL).fetchall()
    if tables:
        shown = ", ".join(display_name(s, t) for s, t in tables[:5]) + (", …" if len(tables) > 5 else "")
        raise RefusedForSafety(
            f"dbrollback check runs migrations down and up and inserts generated rows, so it only uses a "
            f"database without tables; {database.display} has {len(tables)} ({shown}). Nothing was "
            "changed. Point --database-url at an empty database, or use --embedded for a throwaway "
            "database on the embedded PostgreSQL.",
            database=database.display,
            tables=[display_name(s, t) for s, t in tables],
        )


@contextlib.contextmanager
def open_workspace(settings: Settings, *, embedded: bool, notify: Notify) -> Iterator[Workspace]:
    if settings.database_url and not embedded:
        configured = resolve_database(settings, notify)
        _refuse_if_tables(configured)
        workspace = Workspace(None, configured, notify)
    else:
        admin = resolve_database(settings.model_copy(update={"database_url": None}))
        notify(f"Checking on a throwaway database on the embedded PostgreSQL at {settings.embedded_pgdata}")
        workspace = Workspace(admin, None, notify)
    try:
        yield workspace
    finally:
        workspace.close()
