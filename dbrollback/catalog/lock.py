"""The per-database advisory lock that serialises every command which changes data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from dbrollback.errors import LockHeld

# Two-key advisory locks: 0x6462726C is "dbrl"; the second key names the purpose.
_LOCK_SPACE = 0x6462726C
RUN_LOCK = (_LOCK_SPACE, 1)
CATALOG_LOCK = (_LOCK_SPACE, 2)


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    application_name: str | None
    backend_start: datetime | None
    run_id: int | None = None
    actor: str | None = None
    host: str | None = None
    client_pid: int | None = None
    since: datetime | None = None

    def describe(self) -> str:
        if self.run_id is not None:
            return (
                f"run {self.run_id} by {self.actor} on {self.host} (pid {self.client_pid}), "
                f"running since {self.since:%Y-%m-%d %H:%M:%S %Z}"
            )
        return f"server backend pid {self.pid} ({self.application_name or 'unknown client'})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "actor": self.actor,
            "host": self.host,
            "pid": self.client_pid,
            "backend_pid": self.pid,
            "since": self.since.isoformat() if self.since else None,
            "application_name": self.application_name,
        }


def try_lock(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RUN_LOCK).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", RUN_LOCK)


def find_holder(conn: psycopg.Connection) -> LockHolder | None:
    row = conn.execute(
        """
        SELECT a.pid, a.application_name, a.backend_start
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
        """,
        (RUN_LOCK[0] & 0xFFFFFFFF, RUN_LOCK[1]),
    ).fetchone()
    if row is None:
        return None
    holder = LockHolder(pid=row[0], application_name=row[1], backend_start=row[2])
    if conn.execute("SELECT to_regclass('dbrollback.runs')").fetchone() == (None,):
        return holder
    run = conn.execute(
        """SELECT id, actor, host, pid, started_at FROM dbrollback.runs
           WHERE status = 'running' AND backend_pid = %s ORDER BY id DESC LIMIT 1""",
        (holder.pid,),
    ).fetchone()
    if run is None:
        return holder
    return LockHolder(holder.pid, holder.application_name, holder.backend_start, *run)


def acquire(conn: psycopg.Connection, wait: timedelta, poll: float = 0.2) -> None:
    """Take the run lock, waiting up to ``wait``; raise LockHeld naming the holder."""
    deadline = time.monotonic() + wait.total_seconds()
    while not try_lock(conn):
        if time.monotonic() >= deadline:
            holder = find_holder(conn)
            who = holder.describe() if holder else "another session (it has just released it)"
            raise LockHeld(
                f"Another dbrollback command holds this database's lock: {who}. "
                f"Waited {wait.total_seconds():g}s (setting lock_wait).",
                holder=holder.to_dict() if holder else None,
            )
        time.sleep(poll)
