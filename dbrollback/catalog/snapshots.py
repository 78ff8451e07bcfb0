"""The catalog's list of snapshots: a convenience copy of what the store holds.

The store is the truth (a restore works from the store alone); these rows let `status` and
`rollback` find a run's snapshots without listing a bucket, and record when one was pruned.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from dbrollback.snapshot.manifest import SnapshotManifest


def record_snapshot(conn: psycopg.Connection, manifest: SnapshotManifest, location: str) -> None:
    conn.execute(
        """INSERT INTO dbrollback.snapshots
               (id, created_at, run_id, revision, label, location, tables, rows, bytes, expires_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (id) DO NOTHING""",
        (
            manifest.id,
            manifest.created_at,
            manifest.run_id,
            manifest.revision,
            manifest.label,
            location,
            [f"{t.schema_name}.{t.table_name}" for t in manifest.tables],
            sum(t.row_count for t in manifest.tables),
            sum(f.bytes for t in manifest.tables for f in t.files),
            manifest.expires_at,
        ),
    )


def mark_deleted(conn: psycopg.Connection, snapshot_id: str) -> None:
    conn.execute(
        "UPDATE dbrollback.snapshots SET deleted_at = clock_timestamp() WHERE id = %s AND deleted_at IS NULL",
        (snapshot_id,),
    )


def runs_started_after(conn: psycopg.Connection, since: datetime) -> dict[int, datetime]:
    """Runs started after `since` (the start of the rollback window): id -> started_at."""
    rows = conn.execute(
        "SELECT id, started_at FROM dbrollback.runs "
        "WHERE started_at > %s AND command IN ('upgrade', 'downgrade')",
        (since,),
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}
