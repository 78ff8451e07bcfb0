"""backfill."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from dbrollback.cli.console import Console, TerminalProgress
from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.durations import parse_duration, parse_optional_duration
from dbrollback.errors import ConfigError

if TYPE_CHECKING:
    from dbrollback.backfill.engine import BackfillOptions, BackfillPreview, BackfillRecord, BackfillResult

_OFF = {"off", "none", "no"}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _bytes(text: str) -> int | None:
    """`64MB`, `65536`, `off` (None)."""
    if text.strip().lower() in _OFF:
        return None
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"--max-lag-bytes: expected a size such as 64MB or 'off', got {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _count(option: str, text: str) -> int | None:
    if text.strip().lower() in _OFF:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{option}: expected a number or 'off', got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{option} must not be negative")
    return value


def _ms(option: str, text: str, *, optional: bool) -> int:
    try:
        value = parse_optional_duration(text) if optional else parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    return 0 if value is None else round(value.total_seconds() * 1000)


def _options(
    batch_time: str | None,
    batch_rows: int | None,
    max_batch_rows: int | None,
    pause: str | None,
    max_lag_bytes: str | None,
    max_lock_waiters: str | None,
    lock_timeout: str | None,
    lock_retries: int | None,
    max_batches: int | None,
) -> BackfillOptions:
    from dbrollback.backfill.engine import BackfillOptions

    options = BackfillOptions(max_batches=max_batches)
    if batch_time is not None:
        options.target_batch_ms = _ms("--batch-time", batch_time, optional=True)
    if batch_rows is not None:
        options.initial_batch_rows = batch_rows
        options.resume_at_saved_batch_rows = False
    if max_batch_rows is not None:
        options.max_batch_rows = max_batch_rows
    if pause is not None:
        options.pause_ms = _ms("--pause", pause, optional=True)
    if max_lag_bytes is not None:
        options.max_replication_lag_bytes = _bytes(max_lag_bytes)
    if max_lock_waiters is not None:
        options.max_lock_waiters = _count("--max-lock-waiters", max_lock_waiters)
    if lock_timeout is not None:
        options.lock_timeout_ms = _ms("--lock-timeout", lock_timeout, optional=True)
    if lock_retries is not None:
        options.lock_retries = lock_retries
    return options


def render_result(console: Console, result: BackfillResult) -> None:
    head = f"Backfill {result.id} of {result.table}"
    if result.status == "done" and not result.batches:
        console.line(f"{head}: already done ({result.total_rows_updated:,} rows updated)")
        return
    resumed = " (resumed)" if result.resumed else ""
    console.line(
        f"{head}{resumed}: {result.status}; {result.rows_updated:,} row(s) updated of "
        f"{result.rows_scanned:,} walked in {result.batches:,} batch(es), {result.duration_s:.1f} s "
        f"({result.rows_per_s:,.0f} rows/s)",
        style="green" if result.status == "done" else "yellow",
    )
    console.line(
        f"  last batch {result.batch_rows or 0:,} rows; waited {result.throttled_s:.1f} s for standbys "
        f"and lock waiters; {result.lock_retries} lock retr{'y' if result.lock_retries == 1 else 'ies'}"
    )
    if result.status == "pending":
        console.line(
            f"  Not finished (--max-batches): `dbrollback backfill --resume --id {result.id}` goes on",
            style="yellow",
        )


def render_preview(console: Console, preview: BackfillPreview) -> None:
    estimate = (
        f"; the table has about {preview.rows_estimate:,} rows" if preview.rows_estimate is not None else ""
    )
    console.line(
        f"Dry run, nothing changed: the backfill of {preview.table} would update "
        f"{preview.rows_matching:,} row(s) as things stand{estimate}; it walks the key "
        f"({', '.join(preview.key_columns)})"
    )


def render_list(console: Console, records: list[BackfillRecord]) -> None:
    if not records:
        console.line("No backfills to list")
        return
    console.table(
        None,
        ["id", "table", "status", "updated", "walked", "batches", "last key", "updated at", "error"],
        [
            (
                r.id,
                r.label,
                r.status,
                f"{r.rows_updated:,}",
                f"{r.rows_scanned:,}",
                f"{r.batches:,}",
                ", ".join(r.last_key) if r.last_key else "-",
                f"{r.updated_at:%Y-%m-%d %H:%M:%S}",
                r.error or "",
            )
            for r in records
        ],
    )


@click.command()
@click.argument("table", required=False, metavar="[TABLE]")
@click.option(
    "--set", "set_sql", metavar="SQL", help='The assignments, as in UPDATE ... SET: "col = expr, ...".'
)
@click.option("--where", "where_sql", metavar="SQL", help="Only rows where this condition holds.")
@click.option(
    "--batch-time",
    metavar="DURATION",
    help="Size batches so each takes about this long [200ms]; 'off': every batch is --batch-rows.",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    metavar="N",
    help="Rows in the first batch [1000; --resume: the size it had reached].",
)
@click.option("--max-batch-rows", type=click.IntRange(min=1), metavar="N", help="Largest batch [50000].")
@click.option("--pause", metavar="DURATION", help="Sleep between batches [0].")
@click.option(
    "--max-lag-bytes",
    metavar="SIZE",
    help="Wait while a standby replays more than this behind (e.g. 16MB; 'off') [64MB].",
)
@click.option(
    "--max-lock-waiters",
    metavar="N",
    help="Wait (up to 5 s a batch) while more sessions than this wait for the table's locks ('off') [0].",
)
@click.option("--lock-timeout", metavar="DURATION", help="lock_timeout of each batch [2s].")
@click.option(
    "--lock-retries",
    type=click.IntRange(min=0),
    metavar="N",
    help="Retries of a batch, halved each time, after a lock timeout or deadlock [10].",
)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N batches (the backfill stays pending; --resume goes on).",
)
@click.option(
    "--dry-run", is_flag=True, help="Check everything and count the rows it would update; change nothing."
)
@click.option(
    "--resume", is_flag=True, help="Go on with unfinished backfills (pending or failed), oldest first."
)
@click.option(
    "--id", "backfill_id", type=click.IntRange(min=1), metavar="ID", help="With --resume: only this backfill."
)
@click.option("--list", "list_", is_flag=True, help="List unfinished backfills (with --all: every one).")
@click.option("--all", "list_all", is_flag=True, help="With --list: finished backfills too.")
@click.option("--actor", metavar="NAME", help="Who is running this, for the audit log [OS user].")
@global_options
@pass_state
def backfill(
    state: AppState,
    table: str | None,
    set_sql: str | None,
    where_sql: str | None,
    batch_time: str | None,
    batch_rows: int | None,
    max_batch_rows: int | None,
    pause: str | None,
    max_lag_bytes: str | None,
    max_lock_waiters: str | None,
    lock_timeout: str | None,
    lock_retries: int | None,
    max_batches: int | None,
    dry_run: bool,
    resume: bool,
    backfill_id: int | None,
    list_: bool,
    list_all: bool,
    actor: str | None,
) -> int:
    """Update every row of TABLE in short, resumable batches: UPDATE TABLE SET ... [WHERE ...].

    TABLE is `table`, `schema.table` or quoted as in SQL (`'"My Schema"."Odd.Name"'`). The table is
    walked in the order of its primary key (or a unique index on NOT NULL columns), one transaction
    per batch with its position, so a killed backfill goes on where it stopped (--resume) and never
    updates a row twice. Batches adapt to --batch-time and wait for lagging standbys and for
    sessions waiting on the table's locks. Exit 2 for bad SQL or an unknown table, 3 for a table
    without a key or a backfill already running, 4 when a batch failed (it was rolled back; fix
    the cause and --resume), 130 when interrupted (--resume goes on).
    """
    from dbrollback import backfill_api

    console = state.console
    settings = state.settings(actor=actor)
    flags_for_runs = [batch_time, batch_rows, max_batch_rows, pause, max_lag_bytes, max_lock_waiters,
                      lock_timeout, lock_retries, max_batches]  # fmt: skip
    if list_all and not list_:
        raise ConfigError("--all applies to --list only")
    if backfill_id is not None and not resume:
        raise ConfigError("--id applies to --resume only")
    if list_:
        if resume or table or set_sql or where_sql or dry_run or any(v is not None for v in flags_for_runs):
            raise ConfigError("--list takes no TABLE, --set, --where, --resume or batch options")
        records = backfill_api.backfills(settings, unfinished_only=not list_all)
        if state.json:
            console.emit_json([r.to_dict() for r in records])
        else:
            render_list(console, records)
        return 0
    options = _options(batch_time, batch_rows, max_batch_rows, pause, max_lag_bytes, max_lock_waiters,
                       lock_timeout, lock_retries, max_batches)  # fmt: skip
    options.check()
    if resume:
        if table or set_sql or where_sql or dry_run:
            raise ConfigError("--resume takes no TABLE, --set, --where or --dry-run: it goes on as recorded")
        with TerminalProgress(console) as progress:
            results = backfill_api.resume(
                settings, backfill_id, options=options, notify=console.notice, progress=progress
            )
        if state.json:
            console.emit_json([r.to_dict() for r in results])
        elif not results:
            console.line("No unfinished backfills")
        for result in [] if state.json else results:
            render_result(console, result)
        return 0
    if not table or set_sql is None:
        raise ConfigError("backfill needs TABLE and --set (or --resume, or --list)")
    with TerminalProgress(console) as progress:
        outcome = backfill_api.backfill(
            settings,
            table,
            set_sql,
            where_sql,
            options=options,
            dry_run=dry_run,
            notify=console.notice,
            progress=progress,
        )
    from dbrollback.backfill.engine import BackfillPreview

    if state.json:
        console.emit_json(outcome.to_dict())
    elif isinstance(outcome, BackfillPreview):
        render_preview(console, outcome)
    else:
        render_result(console, outcome)
    return 0


COMMANDS = [backfill]
