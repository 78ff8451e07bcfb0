"""WAL positions before each revision, for whole-cluster point-in-time recovery (docs/pitr.md).

Before a revision runs we record ``pg_current_wal_lsn()`` and the time, and ask the server for a
named restore point (``pg_create_restore_point``) so pgBackRest (``--type=name``), Barman or a
plain ``recovery_target_name`` can stop replay just before that revision. Creating restore
points needs superuser or an explicit GRANT and wal_level replica or higher; without them the LSN
and time are still recorded (``recovery_target_lsn`` / ``recovery_target_time`` work too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg


@dataclass
class RestorePoint:
    run_id: int
    revision: str
    wal_lsn: str
    name: str | None
    created: bool
    note: str | None


def restore_point_name(run_id: int, revision: str) -> str:
    # Restore point names are limited to 63 bytes; keep them plain ASCII so every tool accepts them.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", revision)
    return f"dbrollback_run{run_id}_before_{safe}"[:63]


def record_restore_point(conn: psycopg.Connection, run_id: int, revision: str) -> RestorePoint:
    """Create (where allowed) and journal a restore point; `conn` is in autocommit mode."""
    name = restore_point_name(run_id, revision)
    created, note = True, None
    try:
        with conn.transaction():
            row = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState,
            psycopg.errors.FeatureNotSupported) as exc:  # fmt: skip
        created, note = False, (exc.diag.message_primary or str(exc)).strip()
        row = None
    if row is None:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    lsn = str(row[0])
    conn.execute(
        """INSERT INTO dbrollback.restore_points (run_id, revision, wal_lsn, name, created, note)
           VALUES (%s, %s, %s::pg_lsn, %s, %s, %s) ON CONFLICT (run_id, revision) DO NOTHING""",
        (run_id, revision, lsn, name if created else None, created, note),
    )
    return RestorePoint(run_id, revision, lsn, name if created else None, created, note)


def list_restore_points(conn: psycopg.Connection, run_id: int | None = None) -> list[RestorePoint]:
    rows = conn.execute(
        """SELECT run_id, revision, wal_lsn::text, name, created, note FROM dbrollback.restore_points
           WHERE %s::bigint IS NULL OR run_id = %s ORDER BY at""",
        (run_id, run_id),
    ).fetchall()
    return [RestorePoint(int(r[0]), r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]
