"""Library API for snapshots, restore and verify; the CLI's snapshot/restore/verify commands call these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

from dbrollback.catalog import audit
from dbrollback.catalog.schema import ensure_catalog
from dbrollback.catalog.snapshots import mark_deleted, record_snapshot, run_ids_inside_window
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.errors import SnapshotError
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.settings import Settings
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.manifest import SnapshotManifest
from dbrollback.snapshot.names import QualifiedName, resolve_live_tables, user_tables
from dbrollback.snapshot.store import SnapshotStore, open_store


def _quiet(_: str) -> None:
    pass


def configured_store(settings: Settings) -> SnapshotStore:
    return open_store(settings.store)


@dataclass
class SnapshotSummary:
    """One line of `snapshot list`."""

    id: str
    created_at: datetime
    run_id: int | None
    revision: str | None
    label: str | None
    tables: list[str]
    rows: int
    bytes: int
    expires_at: datetime | None
    location: str

    @classmethod
    def of(cls, manifest: SnapshotManifest, location: str) -> SnapshotSummary:
        return cls(
            id=manifest.id,
            created_at=manifest.created_at,
            run_id=manifest.run_id,
            revision=manifest.revision,
            label=manifest.label,
            tables=[f"{t.schema_name}.{t.table_name}" for t in manifest.tables],
            rows=sum(t.row_count for t in manifest.tables),
            bytes=sum(f.bytes for t in manifest.tables for f in t.files),
            expires_at=manifest.expires_at,
            location=location,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "run_id": self.run_id,
            "revision": self.revision,
            "label": self.label,
            "tables": self.tables,
            "rows": self.rows,
            "bytes": self.bytes,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "location": self.location,
        }


def estimated_bytes(conn: psycopg.Connection, tables: list[QualifiedName]) -> int:
    """Roughly what COPY will send: the tables' heap and TOAST sizes."""
    total = 0
    for schema, table in tables:
        row = conn.execute(
            "SELECT pg_table_size(to_regclass(quote_ident(%s) || '.' || quote_ident(%s)))", (schema, table)
        ).fetchone()
        total += int(row[0] or 0) if row else 0
    return total


def take_snapshot(settings: Settings, database: Database, conn: psycopg.Connection, store: SnapshotStore,
                  tables: list[QualifiedName], *, run_id: int | None = None, revision: str | None = None,
                  label: str | None = None,
                  progress: ProgressReporter = SILENT) -> SnapshotManifest:  # fmt: skip
    """Capture `tables`, publish to the store, list in the catalog. `conn` is the control connection."""
    total = estimated_bytes(conn, tables)
    task = progress.task(f"snapshot {len(tables)} table(s)", total or None, "bytes")
    try:
        manifest = capture_tables(
            database.libpq_url,
            store,
            tables,
            run_id=run_id,
            revision=revision,
            label=label,
            expires_at=datetime.now(timezone.utc) + settings.rollback_window,
            lock_timeout=f"{int(settings.lock_timeout.total_seconds() * 1000)}ms",
            jobs=settings.jobs,
            on_bytes=task.advance,
        )
    finally:
        task.finish()
    record_snapshot(conn, manifest, store.snapshot_location(manifest.id))
    return manifest


def snapshot_create(settings: Settings, tables: list[str] | None = None, label: str | None = None, *,
                    progress: ProgressReporter = SILENT,
                    notify: Notify = _quiet) -> tuple[SnapshotManifest, str]:  # fmt: skip
    """Snapshot the named tables (default: every user table) now; returns the manifest and location."""
    store = configured_store(settings)
    store.probe()
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        chosen = resolve_live_tables(conn, tables) if tables else user_tables(conn)
        if not chosen:
            raise SnapshotError("There are no tables to snapshot in this database")
        ensure_catalog(conn)
        manifest = take_snapshot(settings, database, conn, store, chosen, label=label, progress=progress)
        audit.record(conn, "snapshot create", settings.actor,
                     details={"snapshot": manifest.id, "tables": SnapshotSummary.of(manifest, "").tables,
                              "label": label})  # fmt: skip
    return manifest, store.snapshot_location(manifest.id)


def snapshot_list(settings: Settings) -> list[SnapshotSummary]:
    store = configured_store(settings)
    return [SnapshotSummary.of(m, store.snapshot_location(m.id)) for m in store.list()]


def snapshot_show(settings: Settings, snapshot_id: str) -> tuple[SnapshotManifest, str]:
    store = configured_store(settings)
    return store.load(snapshot_id), store.snapshot_location(snapshot_id)


@dataclass
class FileCheck:
    snapshot_id: str
    files: int
    bytes: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.snapshot_id, "ok": self.ok, "files": self.files, "bytes": self.bytes,
                "problems": self.problems}  # fmt: skip


def snapshot_verify(settings: Settings, snapshot_id: str) -> FileCheck:
    """Re-read every file of the snapshot and compare size and sha256 with the manifest."""
    store = configured_store(settings)
    manifest = store.load(snapshot_id)
    files = [f for t in manifest.tables for f in t.files]
    return FileCheck(snapshot_id, len(files), sum(f.bytes for f in files), store.verify(snapshot_id))


@dataclass
class PruneResult:
    dry_run: bool
    pruned: list[SnapshotSummary] = field(default_factory=list)
    kept: list[tuple[SnapshotSummary, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "pruned": [s.to_dict() for s in self.pruned],
            "kept": [{**s.to_dict(), "reason": reason} for s, reason in self.kept],
        }


def snapshot_prune(settings: Settings, *, dry_run: bool = False, now: datetime | None = None,
                   notify: Notify = _quiet) -> PruneResult:  # fmt: skip
    """Delete snapshots past the rollback window, except those a run inside the window still needs."""
    store = configured_store(settings)
    now = now or datetime.now(timezone.utc)
    result = PruneResult(dry_run=dry_run)
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        ensure_catalog(conn)
        recent_runs = run_ids_inside_window(conn, settings.rollback_window.total_seconds())
        for manifest in store.list():
            summary = SnapshotSummary.of(manifest, store.snapshot_location(manifest.id))
            expires = manifest.expires_at or manifest.created_at + settings.rollback_window
            reason = _keep_reason(manifest, expires, now, settings, recent_runs)
            if reason:
                result.kept.append((summary, reason))
                continue
            result.pruned.append(summary)
            if not dry_run:
                store.delete(manifest.id)
                mark_deleted(conn, manifest.id)
        if not dry_run and result.pruned:
            audit.record(conn, "snapshot prune", settings.actor,
                         details={"pruned": [s.id for s in result.pruned]})  # fmt: skip
    return result


def _keep_reason(manifest: SnapshotManifest, expires: datetime, now: datetime, settings: Settings,
                 recent_runs: set[int]) -> str:  # fmt: skip
    if expires > now:
        return f"inside the rollback window until {expires.isoformat(timespec='seconds')}"
    if manifest.created_at + settings.rollback_window > now:
        return "inside the current rollback window (the window was lengthened since it was taken)"
    if manifest.run_id is not None and manifest.run_id in recent_runs:
        return f"run {manifest.run_id} is still inside the rollback window and needs it"
    return ""
