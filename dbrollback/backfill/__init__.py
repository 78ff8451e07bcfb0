"""Backfills: a table-wide UPDATE as short, resumable, throttled keyset batches (see engine)."""

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

__all__ = [
    "BackfillOptions",
    "BackfillPreview",
    "BackfillRecord",
    "BackfillResult",
    "create_backfill",
    "get_backfill",
    "list_backfills",
    "preview_backfill",
    "run_backfill",
    "unfinished_backfills",
]
