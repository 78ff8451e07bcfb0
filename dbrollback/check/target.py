"""Where `check` runs: never against real data.

By default, a new database ``dbrb_check_<pid>_<hex>`` on the embedded server (started if it is not
running; a running one is reused), dropped afterwards, also on failure. When a revision leaves the
database in a state the next revisions cannot start from, the check asks for a fresh one.

A check killed outright (SIGKILL, power loss) cannot drop its database. The process id in the name
is what lets a later check on the same embedded server (which is local: its processes are this
machine's) recognise such leftovers: a ``dbrb_check_<pid>_<hex>`` database whose process is gone
and that nobody is connected to is dropped when the next check starts. One whose process still
lives — a check running in another terminal — is never touched.

With a configured database URL, that database is used as it is, but only if it has no user tables;
otherwise the check refuses (exit 3) and changes nothing. It is left at the last revision checked,
with the generated rows; a fresh one cannot be made there.
"""

from __future__ import annotations

import contextlib
import os
import re
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

_OWNED_NAME = re.compile(re.escape(CHECK_DATABASE_PREFIX) + r"([0-9]+)_[0-9a-f]+")
_UNUSED_CHECK_DATABASES_SQL = """
SELECT d.datname FROM pg_catalog.pg_database d
WHERE d.datname LIKE %s
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)
ORDER BY 1
"""

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
        name = check_database_name()
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


def check_database_name(pid: int | None = None) -> str:
    return f"{CHECK_DATABASE_PREFIX}{os.getpid() if pid is None else pid}_{secrets.token_hex(5)}"


def _process_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists here; any doubt counts as alive."""
    if os.name != "posix" or pid <= 0:
        return False  # Windows' os.kill terminates; pid 0 would mean our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        return False  # PermissionError: it exists, under another user
    return False


def reclaim_stale_databases(admin: Database, notify: Notify) -> list[str]:
    """Drop the throwaway databases of checks that died without dropping them; returns their names.

    Only names of the ``dbrb_check_<pid>_<hex>`` form, whose process no longer exists and that have
    no connection. A connection made between the look-up and the DROP makes the DROP fail (it is not
    forced), and the database stays.
    """
    dropped: list[str] = []
    with connect(admin, "check") as conn:
        pattern = CHECK_DATABASE_PREFIX.replace("_", r"\_") + "%"
        names = [row[0] for row in conn.execute(_UNUSED_CHECK_DATABASES_SQL, (pattern,)).fetchall()]
        for name in names:
            owner = _OWNED_NAME.fullmatch(name)
            if owner is None or not _process_gone(int(owner.group(1))):
                continue
            try:
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error:
                continue
            dropped.append(name)
    if dropped:
        notify(f"Dropped {len(dropped)} throwaway database(s) left by checks that did not finish: "
               + ", ".join(dropped))  # fmt: skip
    return dropped


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
        reclaim_stale_databases(admin, notify)
        workspace = Workspace(admin, None, notify)
    try:
        yield workspace
    finally:
        workspace.close()
