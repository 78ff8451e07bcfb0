"""The append-only audit log: every command that reads or changes user data."""

from __future__ import annotations

import socket
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dbrollback.catalog.journal import command_line, os_user


def record(conn: psycopg.Connection, command: str, actor: str, *, run_id: int | None = None,
           details: dict[str, Any] | None = None) -> None:  # fmt: skip
    payload = {"command_line": command_line(), **(details or {})}
    conn.execute(
        """INSERT INTO dbrollback.audit (command, actor, os_user, host, run_id, details)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (command, actor, os_user(), socket.gethostname(), run_id, Jsonb(payload)),
    )
