"""restore and verify."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from dbrollback.cli.console import Console, TerminalProgress
from dbrollback.cli.options import split_table_list, tables_option
from dbrollback.cli.state import AppState, global_options, migration_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED, RefusedForSafety, SnapshotCorrupt

if TYPE_CHECKING:
    from dbrollback.snapshot.restore import RestorePlan, TablePlan


def _refs(t: TablePlan) -> str:
    return ", ".join(f"{r.schema}.{r.table} ({r.name}, ON DELETE {r.on_delete})" for r in t.referenced_by)


def render_restore_plans(console: Console, plans: list[RestorePlan], title: str) -> None:
    for plan in plans:
        taken = f"{plan.snapshot_created_at:%Y-%m-%d %H:%M:%S %Z}"
        console.table(
            f"{title} from snapshot {plan.snapshot_id} (taken {taken})",
            ["table", "action", "method", "rows in snapshot", "rows now", "referenced by"],
            [
                (t.qualified, t.action, t.method, f"{t.snapshot_rows:,}",
                 "-" if t.live_rows is None else f"{t.live_rows:,}",
                 _refs(t))
                for t in plan.tables
            ],
        )  # fmt: skip
        for t in plan.tables:
            for ref in t.cascade_risks:
                console.line(
                    f"Note: rows removed or re-keyed in {t.qualified} would {ref.on_delete} rows of "
                    f"{ref.schema}.{ref.table} through {ref.name}; the restore refuses that unless "
                    "--allow-cascade.",
                    style="yellow",
                )


@click.command()
@click.option("--snapshot", "snapshot_id", metavar="ID", help="Restore from this snapshot.")
@click.option("--to-time", metavar="TIMESTAMP",
              help="Restore each table to its newest snapshot at or before this time (ISO 8601; "
                   "no zone = local time).")  # fmt: skip
@tables_option("Tables to restore [every table of the snapshot].")
@click.option(
    "--into-schema",
    metavar="SCHEMA",
    help="Restore side by side into this schema; live tables are not touched.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be restored; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--allow-cascade",
    is_flag=True,
    help="Allow rows removed or re-keyed here to CASCADE / SET NULL rows of referencing tables.",
)
@click.option(
    "--from-other-database",
    is_flag=True,
    help="Allow a snapshot taken from another database (e.g. prod into staging).",
)
@migration_options
@global_options
@pass_state
def restore(state: AppState, snapshot_id: str | None, to_time: str | None, tables: tuple[str, ...],
            into_schema: str | None, dry_run: bool, yes: bool, allow_cascade: bool,
            from_other_database: bool) -> None:  # fmt: skip
    """Put tables back to a snapshot's contents, checked by row count and checksum.

    Each table is loaded into a staging table, then swapped in place in one transaction (indexes,
    constraints, foreign keys, triggers, grants and views stay as they are). An interrupted restore
    changes nothing. Damaged snapshot files refuse the restore (exit 3) before anything changes.
    """
    settings = state.settings()
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    at = snapshot_api.parse_timestamp(to_time) if to_time else None
    console = state.console

    def confirm(plans: list[RestorePlan]) -> bool:
        if yes:
            return True
        if state.json or not sys.stdin.isatty():
            raise RefusedForSafety("restore replaces table contents: pass --yes (no terminal to confirm on)")
        render_restore_plans(console, plans, "Will restore")
        return click.confirm("Replace the contents of these tables?", default=False, err=True)

    with TerminalProgress(console) as progress:
        report = snapshot_api.restore(settings, snapshot_id=snapshot_id, to_time=at,
                                      tables=split_table_list(tables) or None, into_schema=into_schema,
                                      dry_run=dry_run, confirm=confirm,
                                      from_other_database=from_other_database,
                                      allow_cascade=allow_cascade, progress=progress,
                                      notify=console.notice)  # fmt: skip
    if state.json:
        console.emit_json(report.to_dict())
        return
    if dry_run:
        render_restore_plans(console, report.plans, "Would restore (dry run, nothing changed)")
        return
    console.table(
        "Restored",
        ["table", "action", "rows", "deleted", "updated", "inserted", "checksum", "sequences moved"],
        [
            (f"{r.schema}.{r.table}", r.action, f"{r.rows_restored:,}", r.deleted, r.updated, r.inserted,
             "verified" if r.checksum_verified else "NOT verified",
             ", ".join(s.sequence for s in r.sequences_set if s.advanced) or "-")
            for r in report.results
        ],
    )  # fmt: skip
    for r in report.results:
        for cascade in r.cascades:
            console.line(f"Cascaded: {cascade.action} on {cascade.schema}.{cascade.table} through "
                         f"{cascade.constraint} ({cascade.rows:,} row(s) of {r.schema}.{r.table} "
                         f"{cascade.event}d)", style="yellow")  # fmt: skip
        for skipped in r.skipped_defaults:
            console.line(f"Note: {r.schema}.{r.table}.{skipped.column}: default {skipped.default!r} "
                         f"not recreated ({skipped.reason})", style="yellow")  # fmt: skip


@click.command()
@click.option("--snapshot", "snapshot_id", metavar="ID", required=True, help="Compare with this snapshot.")
@tables_option("Tables to compare [every table of the snapshot].")
@click.option(
    "--in-schema",
    metavar="SCHEMA",
    help="Compare with the same-named tables in this schema (e.g. after restore --into-schema).",
)
@click.option(
    "--max-examples",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="Differing rows to show per table.",
)
@global_options
@pass_state
def verify(state: AppState, snapshot_id: str, tables: tuple[str, ...], in_schema: str | None,
           max_examples: int) -> int:  # fmt: skip
    """Compare live tables with a snapshot: row counts and checksums, then the differing rows.

    Exit 0 when every table matches, 1 when something differs or the snapshot is damaged.
    """
    console = state.console
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    try:
        with TerminalProgress(console) as progress:
            report = snapshot_api.verify(state.settings(), snapshot_id, split_table_list(tables) or None,
                                         in_schema=in_schema, max_examples=max_examples, progress=progress,
                                         notify=console.notice)  # fmt: skip
    except SnapshotCorrupt as exc:  # verify reports; it does not refuse
        console.error(exc)
        return EXIT_CHECK_FAILED
    if state.json:
        console.emit_json(report.to_dict())
        return 0 if report.ok else EXIT_CHECK_FAILED
    for t in report.tables:
        name = f"{t.schema}.{t.table}"
        if t.ok:
            console.line(f"{name}: {t.live_rows:,} rows, checksum matches the snapshot", style="green")
            continue
        live = "missing" if t.live_rows is None else f"{t.live_rows:,} rows"
        console.line(f"{name}: DIFFERS — snapshot {t.snapshot_rows:,} rows, live {live}"
                     + (f" ({t.note})" if t.note else ""), style="bold red")  # fmt: skip
        if t.differences:
            console.table(
                None,
                ["difference", "key", "columns"],
                [(d.kind, ", ".join(f"{k}={v!r}" for k, v in d.key.items()), ", ".join(d.columns))
                 for d in t.differences],
            )  # fmt: skip
            if t.differences_truncated:
                console.line(f"  (more differences; showing {len(t.differences)})")
    return 0 if report.ok else EXIT_CHECK_FAILED


COMMANDS = [restore, verify]
