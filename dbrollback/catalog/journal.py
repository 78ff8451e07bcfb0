"""Runs and their steps: what dbrollback did, recorded as it happens."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from dbrollback import __version__
from dbrollback.catalog.lock import try_lock, unlock
from dbrollback.catalog.schema import catalog_exists
from dbrollback.invocation import command_line
from dbrollback.urls import redact

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass
class StepRecord:
    seq: int
    revision: str
    phase: str
    status: str
    started_at: datetime
    finished_at: datetime
    attempt: int
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "revision": self.revision,
            "phase": self.phase,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "attempt": self.attempt,
            "error": self.error,
        }


@dataclass
class RunRecord:
    id: int
    command: str
    direction: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    actor: str
    os_user: str | None
    host: str | None
    pid: int | None
    tool_version: str
    command_line: str | None
    target: str | None
    from_revisions: list[str]
    planned_revisions: list[str]
    to_revisions: list[str] | None
    failed_revision: str | None
    error: str | None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def applied_revisions(self) -> list[str]:
        return [s.revision for s in self.steps if s.status == "succeeded"]

    @property
    def not_applied_revisions(self) -> list[str]:
        done = set(self.applied_revisions)
        return [r for r in self.planned_revisions if r not in done]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "direction": self.direction,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "actor": self.actor,
            "os_user": self.os_user,
            "host": self.host,
            "pid": self.pid,
            "tool_version": self.tool_version,
            "command_line": self.command_line,
            "target": self.target,
            "from_revisions": self.from_revisions,
            "planned_revisions": self.planned_revisions,
            "to_revisions": self.to_revisions,
            "applied_revisions": self.applied_revisions,
            "not_applied_revisions": self.not_applied_revisions,
            "failed_revision": self.failed_revision,
            "error": self.error,
            "steps": [s.to_dict() for s in self.steps],
        }


class Journal:
    """Writes through an autocommit control connection, except step rows, which are written
    on the migration's own connection inside the revision's transaction so that a revision
    and its journal entry commit together or not at all."""

    def __init__(self, conn: psycopg.Connection, actor: str) -> None:
        self.conn = conn
        self.actor = actor
        self.host = socket.gethostname()
        self.os_user = os_user()

    def start_run(self, command: str, direction: str | None, target: str | None,
                  from_revisions: list[str], planned: list[str]) -> int:  # fmt: skip
        row = self.conn.execute(
            """
            INSERT INTO dbrollback.runs (command, direction, status, actor, os_user, host, pid,
                backend_pid, tool_version, command_line, target, from_revisions, planned_revisions)
            VALUES (%s, %s, 'running', %s, %s, %s, %s, pg_backend_pid(), %s, %s, %s, %s, %s)
            RETURNING id
            """,
            (command, direction, self.actor, self.os_user, self.host, os.getpid(), __version__,
             command_line(), target, from_revisions, planned),
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    def finish_run(self, run_id: int, status: str, to_revisions: list[str] | None,
                   failed_revision: str | None = None, error: str | None = None) -> None:  # fmt: skip
        self.conn.execute(
            """UPDATE dbrollback.runs SET status = %s, finished_at = clock_timestamp(),
                   to_revisions = %s, failed_revision = %s, error = %s
               WHERE id = %s""",
            (status, to_revisions, failed_revision, redact(error) if error else None, run_id),
        )

    def record_failed_step(self, run_id: int, revision: str, phase: str, started_at: datetime,
                           attempt: int, error: str) -> None:  # fmt: skip
        self.conn.execute(
            """INSERT INTO dbrollback.run_steps
                   (run_id, seq, revision, phase, started_at, status, attempt, error)
               VALUES (%s, (SELECT coalesce(max(seq), 0) + 1 FROM dbrollback.run_steps
                            WHERE run_id = %s), %s, %s, %s, 'failed', %s, %s)""",
            (run_id, run_id, revision, phase, started_at, attempt, redact(error)),
        )


def record_applied_step(connection: Connection, run_id: int, revision: str, phase: str,
                        started_at: datetime, attempt: int) -> None:  # fmt: skip
    """Called inside the revision's transaction (see Journal)."""
    from sqlalchemy import text

    connection.execute(
        text(
            """INSERT INTO dbrollback.run_steps
                   (run_id, seq, revision, phase, started_at, status, attempt)
               VALUES (:run_id, (SELECT coalesce(max(seq), 0) + 1 FROM dbrollback.run_steps
                                 WHERE run_id = :run_id), :revision, :phase, :started_at,
                       'succeeded', :attempt)"""
        ),
        {"run_id": run_id, "revision": revision, "phase": phase, "started_at": started_at,
         "attempt": attempt},
    )  # fmt: skip


def mark_interrupted_runs(conn: psycopg.Connection, *, lock_held_by_us: bool) -> list[int]:
    """Runs still marked 'running' whose process is gone become 'interrupted'.

    A running run holds the advisory lock for its whole life, so while we hold the lock no such
    run can be alive. Without it, we take it just for this update (and skip if it is busy).
    """
    if not catalog_exists(conn):
        return []
    if not lock_held_by_us:
        if not try_lock(conn):
            return []
        try:
            return _mark_running_as_interrupted(conn)
        finally:
            unlock(conn)
    return _mark_running_as_interrupted(conn)


def _mark_running_as_interrupted(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute(
        """UPDATE dbrollback.runs SET status = 'interrupted', finished_at = clock_timestamp(),
               error = coalesce(error, 'the process ended before the run finished; '
                                       'finished_at is when that was detected')
           WHERE status = 'running' RETURNING id"""
    ).fetchall()
    return [r[0] for r in rows]


def list_runs(conn: psycopg.Connection, limit: int | None = 20, *,
              status: str | None = None) -> list[RunRecord]:  # fmt: skip
    if not catalog_exists(conn):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT id, command, direction, status, started_at, finished_at, actor, os_user,
                      host, pid, tool_version, command_line, target, from_revisions,
                      planned_revisions, to_revisions, failed_revision, error
               FROM dbrollback.runs WHERE (%(status)s::text IS NULL OR status = %(status)s)
               ORDER BY id DESC LIMIT %(limit)s""",
            {"status": status, "limit": limit},
        )
        runs = [RunRecord(**row) for row in cur.fetchall()]
        if not runs:
            return runs
        cur.execute(
            """SELECT run_id, seq, revision, phase, status, started_at, finished_at, attempt, error
               FROM dbrollback.run_steps WHERE run_id = ANY(%s) ORDER BY run_id, seq""",
            ([r.id for r in runs],),
        )
        by_id = {r.id: r for r in runs}
        for row in cur.fetchall():
            by_id[row.pop("run_id")].steps.append(StepRecord(**row))
    return runs


def rolled_back_runs(conn: psycopg.Connection) -> dict[int, int]:
    """Upgrade runs a committed rollback reverted: reverted run id -> rollback run id."""
    if not catalog_exists(conn):
        return {}
    found = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'dbrollback' "
        "AND table_name = 'runs' AND column_name = 'reverts_run_id'"
    ).fetchone()
    if found is None:  # a catalog older than version 5 has no rollbacks
        return {}
    rows = conn.execute(
        "SELECT reverts_run_id, id FROM dbrollback.runs WHERE reverts_run_id IS NOT NULL"
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def mark_reverted(conn: psycopg.Connection, rollback_run_id: int, reverted_run_id: int) -> None:
    """Called inside the rollback's transaction, so the mark commits with the rollback."""
    conn.execute(
        "UPDATE dbrollback.runs SET reverts_run_id = %s WHERE id = %s", (reverted_run_id, rollback_run_id)
    )
