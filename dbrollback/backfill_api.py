"""`dbrollback backfill` as library calls: settings -> database -> backfill engine.

See docs/backfill.md. A backfill takes no dbrollback run lock: it is meant to run for hours next to
the application and to deploys. Its own advisory lock keeps two runs of one backfill apart, and
each run is in the audit log (a row when it starts, one when it ends).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from dbrollback.backfill.engine import (
    BackfillOptions,
    BackfillPreview,
    BackfillRecord,
    BackfillResult,
    create_backfill,
    get_backfill,
    list_backfills,
    preview_backfill,
    run_backfill,
    unfinished_backfills,
)
from dbrollback.catalog import audit
from dbrollback.database import Notify, connect, resolve_database
from dbrollback.errors import ConfigError, DbrollbackError, LockHeld, SnapshotError
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.settings import Settings
from dbrollback.snapshot.names import QualifiedName, resolve_live_tables

COMMAND = "backfill"


def _quiet(_: str) -> None:
    pass


def resolve_table(conn: psycopg.Connection, text: str) -> QualifiedName:
    """A table as users type it (`orders`, `sales.orders`, quoted as in SQL): PostgreSQL's own
    parse_ident; an unqualified name is looked up on the search_path."""
    try:
        return resolve_live_tables(conn, [text])[0]
    except SnapshotError as exc:
        raise ConfigError(exc.message, table=text) from None


def backfill(
    settings: Settings,
    table: str,
    set_sql: str,
    where_sql: str | None = None,
    *,
    options: BackfillOptions | None = None,
    dry_run: bool = False,
    notify: Notify = _quiet,
    progress: ProgressReporter = SILENT,
) -> BackfillResult | BackfillPreview:
    """Record a backfill of `table` and run it to the end; `dry_run`: check it and count the rows
    it would update, changing nothing."""
    database = resolve_database(settings, notify)
    with connect(database, "backfill") as conn:
        name = resolve_table(conn, table)
        if dry_run:
            return preview_backfill(conn, name, set_sql, where_sql)
        backfill_id = create_backfill(conn, name, set_sql, where_sql, actor=settings.actor)
        notify(f"Backfill {backfill_id} of {name[0]}.{name[1]} recorded")
        return _run_audited(conn, settings, backfill_id, options, notify, progress)


def resume(
    settings: Settings,
    backfill_id: int | None = None,
    *,
    options: BackfillOptions | None = None,
    notify: Notify = _quiet,
    progress: ProgressReporter = SILENT,
) -> list[BackfillResult]:
    """Finish backfill `backfill_id`, or every unfinished one (pending or failed) oldest first.
    Resuming all skips, with a notice, one that another session is running."""
    database = resolve_database(settings, notify)
    with connect(database, "backfill") as conn:
        if backfill_id is not None:
            record = get_backfill(conn, backfill_id)
            if record is None:
                raise ConfigError(f"No backfill {backfill_id}", backfill_id=backfill_id)
            if record.status == "done":
                notify(f"Backfill {backfill_id} ({record.label}) is already done")
                return [_finished(record)]
            return [_run_audited(conn, settings, backfill_id, options, notify, progress)]
        records = unfinished_backfills(conn)
        if not records:
            notify("No unfinished backfills")
        results: list[BackfillResult] = []
        for record in records:
            try:
                results.append(_run_audited(conn, settings, record.id, options, notify, progress))
            except LockHeld as exc:
                notify(f"Skipped: {exc.message}")
        return results


def backfills(settings: Settings, *, unfinished_only: bool = True) -> list[BackfillRecord]:
    """The recorded backfills (by default the unfinished ones), oldest first."""
    database = resolve_database(settings)
    with connect(database, "backfill") as conn:
        return list_backfills(conn, unfinished_only=unfinished_only)


def _finished(record: BackfillRecord) -> BackfillResult:
    return BackfillResult(
        record.id,
        record.label,
        record.status,
        batch_rows=record.batch_rows,
        total_rows_updated=record.rows_updated,
        total_batches=record.batches,
    )


def _audit(conn: psycopg.Connection, settings: Settings, details: dict[str, Any]) -> None:
    # A lost connection must not hide why the backfill stopped.
    with contextlib.suppress(psycopg.Error):
        audit.record(conn, COMMAND, settings.actor, details=details)


def _run_audited(
    conn: psycopg.Connection,
    settings: Settings,
    backfill_id: int,
    options: BackfillOptions | None,
    notify: Notify,
    progress: ProgressReporter,
) -> BackfillResult:
    record = get_backfill(conn, backfill_id)
    assert record is not None
    what = {
        "backfill_id": backfill_id,
        "table": record.label,
        "set": record.set_sql,
        "where": record.where_sql,
    }
    _audit(conn, settings, {**what, "phase": "start", "from_status": record.status})
    try:
        result = run_backfill(conn, backfill_id, options, progress=progress, notify=notify)
    except DbrollbackError as exc:
        _audit(conn, settings, {**what, "phase": "end", "status": exc.kind, "message": exc.message})
        raise
    except KeyboardInterrupt:
        notify(
            f"Interrupted: backfill {backfill_id} ({record.label}) keeps every batch that committed; "
            f"resume with `dbrollback backfill --resume --id {backfill_id}`"
        )
        _audit(conn, settings, {**what, "phase": "end", "status": "interrupted"})
        raise
    _audit(conn, settings, {**what, "phase": "end", **result.to_dict()})
    return result
