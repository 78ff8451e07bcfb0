"""rollback."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from dbrollback.cli.console import Console, TerminalProgress
from dbrollback.cli.state import AppState, global_options, migration_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED, ConfigError, RefusedForSafety

if TYPE_CHECKING:
    from dbrollback.rollback.report import RollbackResult


def render_result(console: Console, result: RollbackResult) -> None:
    title = "Would roll back (dry run, nothing changed)" if result.dry_run else "Rolled back"
    runs = result.run_ids or [result.run_id]
    console.line(
        f"{title}: run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}, "
        f"{', '.join(result.reverted_revisions)} (strategy {result.strategy}, {result.duration_s:.2f}s)"
    )
    for note in result.notes:
        console.line(f"Note: {note}", style="yellow")
    for skipped in result.skipped_downgrades:
        console.line(
            f"Downgrade of {skipped.revision} not run: {skipped.reason}; version moved back, tables restored "
            "from the snapshot",
            style="yellow",
        )
    if result.tables:
        console.table(
            None,
            ["table", "restored", "re-inserted", "kept", "conflicts", "lost writes", "saved to", "verified"],
            [
                (
                    t.table,
                    f"{t.restored_rows:,}",
                    f"{t.reinserted_rows:,}",
                    f"{t.kept_rows:,}",
                    f"{t.conflicts:,}",
                    f"{t.lost_writes:,}",
                    t.lost_values_saved_to or "-",
                    "yes" if t.verified else "NO",
                )
                for t in result.tables
            ],
        )
    for t in result.tables:
        for example in t.conflict_examples:
            what = f"column {example['column']}" if example["column"] else "re-insert (key taken)"
            console.line(
                f"Conflict in {t.table} {example['key']}: {what}: kept {example['current']}, "
                f"pre-image was {example['preimage']}",
                style="yellow",
            )
    if result.schema_matches is None:
        console.line("Schema: no schema was recorded before the run; not compared", style="yellow")
    elif result.schema_matches:
        console.line("Schema: matches the schema before the upgrade", style="green")
    else:
        console.line("Schema: DIFFERS from the schema before the upgrade:", style="bold red")
        for difference in result.schema_differences:
            console.line(f"  {difference.get('message', difference)}")
    if result.strategy == "restore":
        verb = "would discard" if result.dry_run else "discarded"
        console.line(
            f"Restore strategy: {verb} {result.lost_writes:,} row(s) written since the migration "
            "(tables put back exactly to the snapshot)",
            style="bold yellow" if result.lost_writes else None,
        )
    if result.verified:
        console.line("Verified: data and schema match what they were before the upgrade", style="green")
    else:
        console.line("NOT verified: see the tables and schema above", style="bold red")


@click.command()
@click.option(
    "--run",
    "run_id",
    type=int,
    metavar="RUN_ID",
    help="Roll back this upgrade run [the most recent one not rolled back yet].",
)
@click.option(
    "--to",
    "to",
    metavar="REV",
    help="Roll back runs, newest first, until the database is at REV (a revision a run started from).",
)
@click.option("--steps", type=click.IntRange(min=1), metavar="N", help="Roll back the N most recent runs.")
@click.option(
    "--strategy",
    type=click.Choice(["merge", "restore"]),
    default="merge",
    show_default=True,
    help="merge: put back what the migration destroyed and keep later writes. restore: put the "
    "snapshotted tables back exactly to the snapshot, DISCARDING later writes; downgrades that are "
    "missing or raise are skipped.",
)
@click.option(
    "--dry-run", is_flag=True, help="Do everything in a transaction that is rolled back; report it."
)
@click.option(
    "--batched",
    is_flag=True,
    help="For tables too large for one transaction: commit the downgrades first, then put the values "
    "of existing rows back in short transactions of --batch-rows rows (merge only; resumable).",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    metavar="N",
    help="Rows per batch with --batched [10000; --resume: as the rollback began].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish a --batched rollback whose batches were interrupted (killed, lost connection, lock "
    "timeout).",
)
@click.option(
    "--abandon",
    is_flag=True,
    help="With --resume: give up the remaining batches instead (their values stay in the snapshot; "
    "the rollback is reported not verified).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@migration_options
@global_options
@pass_state
def rollback(
    state: AppState,
    run_id: int | None,
    to: str | None,
    steps: int | None,
    strategy: str,
    dry_run: bool,
    batched: bool,
    batch_rows: int | None,
    resume: bool,
    abandon: bool,
    yes: bool,
) -> int:
    """Undo an upgrade run: downgrade its revisions and merge back the data they destroyed.

    Values the migration dropped or rewrote come back from the snapshot taken before it; writes
    made since are kept (a collision is reported as a conflict). --strategy restore instead puts
    the tables back exactly to the snapshot, discarding later writes. Everything happens in one
    transaction (several runs too), then it is verified. Exit 1 if verification failed, 3 if
    refused (nothing changed), 4 if it failed (rolled back, nothing changed).

    --batched commits the downgrades and everything else first, then puts values back in batches
    (each its own transaction, verified as it commits); if they are interrupted, `rollback
    --resume` finishes them (exit 4 until then says so).
    """
    settings = state.settings()
    console = state.console
    from dbrollback.rollback.plan import check_strategy
    from dbrollback.rollback_api import rollback as run_rollback  # imported when used: fast start-up

    check_strategy(strategy)  # a usage error comes before any question
    if to is not None and steps is not None:
        raise ConfigError("--to and --steps cannot be used together")

    if batched and strategy != "merge":
        raise ConfigError("--batched applies to --strategy merge only")

    if abandon and not yes and not state.json and sys.stdin.isatty():
        if not click.confirm(
            "Give up the remaining batches (their values are not put back)?", default=False, err=True
        ):
            raise RefusedForSafety("Not confirmed; nothing was changed")
    elif abandon and not yes:
        raise RefusedForSafety("--abandon gives up values: pass --yes (no terminal to confirm on)")

    if not dry_run and not yes and not resume:
        if state.json or not sys.stdin.isatty():
            raise RefusedForSafety("rollback changes schema and data: pass --yes (no terminal to confirm on)")
        # The prompt shows what the rollback would do: the same rollback, run as a dry run first.
        with TerminalProgress(console) as progress:
            preview = run_rollback(
                settings,
                run_id=run_id,
                to=to,
                steps=steps,
                strategy=strategy,
                dry_run=True,
                notify=console.notice,
                progress=progress,
                batched=batched,  # a batched rollback's preview is its first transaction only
                batch_rows=batch_rows,
            )
        render_result(console, preview)
        runs = preview.run_ids or [preview.run_id]
        question = f"Roll back run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}"
        if strategy == "restore":
            question += (
                f", DISCARDING {preview.lost_writes:,} row(s) written since the migration"
                if preview.lost_writes
                else " (no later writes to discard)"
            )
        if not click.confirm(question + "?", default=False, err=True):
            raise RefusedForSafety("Rollback not confirmed; nothing was changed")
        run_id = preview.run_id

    with TerminalProgress(console) as progress:
        result = run_rollback(
            settings,
            run_id=run_id,
            to=to,
            steps=steps,
            strategy=strategy,
            dry_run=dry_run,
            notify=console.notice,
            progress=progress,
            batched=batched,
            batch_rows=batch_rows,
            resume=resume,
            abandon=abandon,
        )
    if state.json:
        console.emit_json(result.to_dict())
    else:
        render_result(console, result)
    return 0 if result.verified else EXIT_CHECK_FAILED


COMMANDS = [rollback]
