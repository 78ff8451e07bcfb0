"""Library API for snapshots, restore and verify; the CLI's snapshot/restore/verify commands call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from dbrollback.catalog import audit
from dbrollback.catalog.fingerprints import drop_fingerprints, fingerprints_of_snapshots
from dbrollback.catalog.lock import acquire, unlock
from dbrollback.catalog.schema import catalog_exists, database_identity, ensure_catalog
from dbrollback.catalog.snapshots import mark_deleted, record_snapshot, runs_started_after
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.errors import ConfigError, DbrollbackError, RefusedForSafety, SnapshotCorrupt, SnapshotError
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.settings import Settings
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.diff import TableVerification, verify_table
from dbrollback.snapshot.manifest import SnapshotManifest
from dbrollback.snapshot.names import QualifiedName, match_snapshot_tables, resolve_live_tables, user_tables
from dbrollback.snapshot.restore import (
    RestorePlan,
    TableRestoreResult,
    pick_snapshots_at,
    plan_restore,
    restore_many,
)
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
    database: str = ""

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
            database=manifest.database,
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
            "database": self.database,
        }


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database we are connected to, as snapshot manifests record it."""

    name: str
    id: str | None

    @classmethod
    def of(cls, conn: psycopg.Connection) -> DatabaseIdentity:
        return cls(conn.info.dbname, database_identity(conn))

    def owns(self, manifest: SnapshotManifest) -> bool:
        """Was `manifest` taken from this database? By identity when both know it, else by name."""
        if self.id is not None and manifest.database_id is not None:
            return self.id == manifest.database_id
        return self.name == manifest.database


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
    partials: list[str] = field(default_factory=list)  # unpublished leftovers of killed captures
    fingerprints: list[str] = field(default_factory=list)  # dbrollback._dbrb_fp_* tables of pruned snapshots

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "pruned": [s.to_dict() for s in self.pruned],
            "kept": [{**s.to_dict(), "reason": reason} for s, reason in self.kept],
            "partials": self.partials,
            "fingerprints": self.fingerprints,
        }


def snapshot_prune(settings: Settings, *, dry_run: bool = False, now: datetime | None = None,
                   notify: Notify = _quiet) -> PruneResult:  # fmt: skip
    """Delete this database's snapshots past the rollback window, except those still needed.

    Needed: for every run started inside the window, the newest snapshot of each table taken at or
    before the run started (the state to go back to), and the run's own snapshots. The post-image
    fingerprints taken with a pruned snapshot go with it (a rollback needs both).
    """
    store = configured_store(settings)
    now = now or datetime.now(timezone.utc)
    window_start = now - settings.rollback_window
    result = PruneResult(dry_run=dry_run)
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        ensure_catalog(conn)
        recent_runs = runs_started_after(conn, window_start)
        here = DatabaseIdentity.of(conn)
        own: list[SnapshotManifest] = []
        for manifest in store.list():
            if here.owns(manifest):
                own.append(manifest)
            else:  # a shared store: other databases prune their own
                summary = SnapshotSummary.of(manifest, store.snapshot_location(manifest.id))
                result.kept.append((summary, f"taken from another database ({manifest.database})"))
        needed = _needed_by_runs(own, recent_runs)
        for manifest in own:
            summary = SnapshotSummary.of(manifest, store.snapshot_location(manifest.id))
            expires = max(
                manifest.expires_at or manifest.created_at, manifest.created_at + settings.rollback_window
            )
            if expires > now:
                result.kept.append(
                    (summary, f"inside the rollback window until {expires:%Y-%m-%d %H:%M:%S %Z}")
                )
            elif manifest.id in needed:
                result.kept.append((summary, needed[manifest.id]))
            else:
                result.pruned.append(summary)
                if not dry_run:
                    store.delete(manifest.id)
                    mark_deleted(conn, manifest.id)
        # A capture killed mid-way leaves files but no manifest; a day without activity means
        # nobody is still writing them.
        result.partials = store.stale_partials(PARTIAL_GRACE)
        if not dry_run:
            for snapshot_id in result.partials:
                store.discard(snapshot_id)
        result.fingerprints = _prune_fingerprints(conn, [s.id for s in result.pruned], dry_run)
        if not dry_run and (result.pruned or result.partials or result.fingerprints):
            audit.record(conn, "snapshot prune", settings.actor,
                         details={"pruned": [s.id for s in result.pruned],
                                  "partials": result.partials,
                                  "fingerprints": result.fingerprints})  # fmt: skip
    return result


PARTIAL_GRACE = timedelta(days=1)


def _prune_fingerprints(conn: psycopg.Connection, pruned: list[str], dry_run: bool) -> list[str]:
    """Fingerprint tables of the snapshots pruned now, and of any the catalog marks pruned before
    (a prune killed before it got to their fingerprints); dropped unless ``dry_run``."""
    earlier = [r[0] for r in conn.execute("SELECT id FROM dbrollback.snapshots WHERE deleted_at IS NOT NULL")]
    ids = list(dict.fromkeys([*pruned, *earlier]))
    if dry_run:
        return sorted(f.fp_table for f in fingerprints_of_snapshots(conn, ids) if f.fp_table)
    return drop_fingerprints(conn, ids)


def _needed_by_runs(manifests: list[SnapshotManifest], runs: dict[int, datetime]) -> dict[str, str]:
    """Snapshot id -> why a run inside the rollback window still needs it."""
    needed: dict[str, str] = {}
    tables = {(t.schema_name, t.table_name) for m in manifests for t in m.tables}
    for run_id, started_at in sorted(runs.items()):
        for manifest in manifests:
            if manifest.run_id == run_id:
                needed.setdefault(
                    manifest.id, f"taken by run {run_id}, which is still inside the rollback window"
                )
        for table in sorted(tables):
            before = [m for m in manifests if m.created_at <= started_at
                      and any((t.schema_name, t.table_name) == table for t in m.tables)]  # fmt: skip
            if before:
                newest = max(before, key=lambda m: (m.created_at, m.id))
                needed.setdefault(
                    newest.id,
                    f"the newest snapshot of {table[0]}.{table[1]} before run {run_id}, which is still "
                    "inside the rollback window",
                )
    return needed


@dataclass
class VerifyReport:
    snapshot_id: str
    tables: list[TableVerification]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot_id, "ok": self.ok, "tables": [t.to_dict() for t in self.tables]}


def verify(settings: Settings, snapshot_id: str, tables: list[str] | None = None, *,
           in_schema: str | None = None, max_examples: int = 10, progress: ProgressReporter = SILENT,
           notify: Notify = _quiet) -> VerifyReport:  # fmt: skip
    """Compare live tables with a snapshot: counts and checksums, then the differing rows.

    The snapshot's files are checked against their sha256 first; a damaged snapshot raises
    SnapshotCorrupt before the database is queried. `in_schema` compares with same-named tables
    in another schema (e.g. one filled by `restore --into-schema`).
    """
    store = configured_store(settings)
    manifest = store.load(snapshot_id)
    problems = store.verify(snapshot_id)
    if problems:
        raise SnapshotCorrupt(f"Snapshot {snapshot_id} is damaged: " + "; ".join(problems),
                              id=snapshot_id, problems=problems)  # fmt: skip
    database = resolve_database(settings, notify)
    with connect(database, "verify") as conn:
        available = [(t.schema_name, t.table_name) for t in manifest.tables]
        chosen = match_snapshot_tables(conn, tables, available) if tables else available
        selected = [t for t in manifest.tables if (t.schema_name, t.table_name) in chosen]
        task = progress.task("verify", sum(t.row_count for t in selected) or None, "rows")
        try:
            results = [
                verify_table(
                    conn,
                    store,
                    manifest,
                    table,
                    live_schema=in_schema,
                    max_examples=max_examples,
                    progress=task.advance,
                )
                for table in selected
            ]
        finally:
            task.finish()
        if catalog_exists(conn):
            audit.record(conn, "verify", settings.actor,
                         details={"snapshot": snapshot_id, "ok": all(r.ok for r in results),
                                  "tables": [f"{t.schema}.{t.table}" for t in results]})  # fmt: skip
    return VerifyReport(snapshot_id, results)


@dataclass
class RestoreReport:
    plans: list[RestorePlan]
    results: list[TableRestoreResult] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "plans": [p.to_dict() for p in self.plans],
            "results": [r.to_dict() for r in self.results],
        }


Confirm = Callable[[list[RestorePlan]], bool]


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 (`2026-11-27T10:15:00Z`, `2026-11-27 10:15+01:00`); no zone = this machine's local time."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"Not a timestamp: {text!r} (use ISO 8601, e.g. 2026-11-27T10:15:00Z)") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def restore(settings: Settings, *, snapshot_id: str | None = None, to_time: datetime | None = None,
            tables: list[str] | None = None, into_schema: str | None = None, dry_run: bool = False,
            confirm: Confirm | None = None, from_other_database: bool = False, allow_cascade: bool = False,
            progress: ProgressReporter = SILENT, notify: Notify = _quiet) -> RestoreReport:  # fmt: skip
    """Put tables back to a snapshot's contents (or, with `to_time`, each table to its newest
    snapshot at or before that time), all in ONE transaction. Every file is checked against its
    sha256 first.

    `confirm` is shown the plans and must return True, or the restore is refused (exit 3).
    Rows deleted or re-keyed in a table that others reference with ON DELETE/UPDATE CASCADE, SET
    NULL or SET DEFAULT would change those tables too: refused (exit 3) unless `allow_cascade`.
    """
    if (snapshot_id is None) == (to_time is None):
        raise ConfigError("Give exactly one of --snapshot ID or --to-time TIMESTAMP")
    store = configured_store(settings)
    database = resolve_database(settings, notify)
    with connect(database, "restore") as conn:
        groups = _restore_groups(conn, store, snapshot_id, to_time, tables, from_other_database)
        targets = [(into_schema or s, t) for manifest, chosen in groups
                   for s, t in (chosen or _all_tables(manifest))]  # fmt: skip
        plans = [plan_restore(conn, store, manifest, chosen, into_schema, restored_with=targets)
                 for manifest, chosen in groups]  # fmt: skip
        report = RestoreReport(plans, dry_run=dry_run)
        if dry_run:
            return report
        if confirm is not None and not confirm(plans):
            raise RefusedForSafety("Restore not confirmed; nothing was changed")
        # restore_many re-reads every file against its sha256 before it touches the database.
        ensure_catalog(conn)
        acquire(conn, settings.lock_wait)  # no upgrade or other restore runs meanwhile
        try:
            from dbrollback.api import refuse_pending_batched_rollback

            refuse_pending_batched_rollback(conn)
            audit.record(conn, "restore", settings.actor,
                         details={"status": "started", "allow_cascade": allow_cascade,
                                  "plans": [p.to_dict() for p in plans]})  # fmt: skip
            total = sum(t.snapshot_bytes for p in plans for t in p.tables)
            task = progress.task("restore", total or None, "bytes")
            try:
                report.results = restore_many(
                    database.libpq_url, store, [(m, p) for (m, _), p in zip(groups, plans, strict=True)],
                    lock_timeout=f"{int(settings.lock_timeout.total_seconds() * 1000)}ms",
                    retries=settings.lock_retries, progress=lambda _name, n: task.advance(n),
                    allow_cascade=allow_cascade,
                )  # fmt: skip
            except DbrollbackError as exc:
                audit.record(conn, "restore", settings.actor,
                             details={"status": "failed", "error": exc.message})  # fmt: skip
                raise
            finally:
                task.finish()
            audit.record(conn, "restore", settings.actor,
                         details={"status": "succeeded",
                                  "results": [r.to_dict() for r in report.results]})  # fmt: skip
        finally:
            unlock(conn)
    return report


def _all_tables(manifest: SnapshotManifest) -> list[QualifiedName]:
    return [(t.schema_name, t.table_name) for t in manifest.tables]


RestoreGroup = tuple[SnapshotManifest, list[QualifiedName] | None]


def _restore_groups(conn: psycopg.Connection, store: SnapshotStore, snapshot_id: str | None,
                    to_time: datetime | None, tables: list[str] | None,
                    from_other_database: bool) -> list[RestoreGroup]:  # fmt: skip
    here = DatabaseIdentity.of(conn)
    if snapshot_id is not None:
        manifest = store.load(snapshot_id)
        if not here.owns(manifest) and not from_other_database:
            raise RefusedForSafety(
                f"Snapshot {snapshot_id} was taken from another database ({manifest.database!r}"
                + (f", id {manifest.database_id}" if manifest.database_id else "")
                + f"), not this one ({here.name!r}). Pass --from-other-database to restore it here anyway.",
                snapshot_database=manifest.database,
                database=here.name,
            )
        available = [(t.schema_name, t.table_name) for t in manifest.tables]
        return [(manifest, match_snapshot_tables(conn, tables, available) if tables else None)]
    assert to_time is not None
    manifests = [m for m in store.list() if from_other_database or here.owns(m)]
    wanted: list[QualifiedName] | None = None
    if tables:
        available = sorted({(t.schema_name, t.table_name) for m in manifests for t in m.tables})
        wanted = match_snapshot_tables(conn, tables, available)
    picked = pick_snapshots_at(manifests, to_time, wanted)
    if not picked:
        raise SnapshotError(f"No snapshot was taken at or before {to_time.isoformat()}")
    by_id: dict[str, tuple[SnapshotManifest, list[QualifiedName]]] = {}
    for table, manifest in picked.items():
        by_id.setdefault(manifest.id, (manifest, []))[1].append(table)
    return [(m, chosen) for m, chosen in sorted(by_id.values(), key=lambda g: (g[0].created_at, g[0].id))]
