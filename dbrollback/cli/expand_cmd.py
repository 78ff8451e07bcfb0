"""contract and abort: close open expansions (see dbrollback.expand)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from dbrollback.cli.console import Console, TerminalProgress
from dbrollback.cli.state import AppState, global_options, migration_options, pass_state
from dbrollback.errors import RefusedForSafety

if TYPE_CHECKING:
    from dbrollback.expand.registry import Expansion
    from dbrollback.expand_api import ExpandCommandResult


def _render(console: Console, result: ExpandCommandResult) -> None:
    verb = {"contract": "contracted", "abort": "aborted"}[result.action]
    title = f"Would be {verb} (dry run, nothing changed)" if result.dry_run else verb.capitalize()
    console.line(f"{title} ({result.duration_s:.2f}s):")
    console.table(
        None,
        ["expansion", "revision", "table", "kind", "rows checked", "out of sync", "dropped", "snapshot"],
        [
            (
                str(o.expansion.id),
                o.expansion.revision or "-",
                o.expansion.table_name,
                o.expansion.kind,
                "-" if o.checked_rows is None else f"{o.checked_rows:,}",
                "-" if o.out_of_sync_rows is None else f"{o.out_of_sync_rows:,}",
                ", ".join(o.dropped) or "-",
                o.snapshot_id or "-",
            )
            for o in result.outcomes
        ],
    )
    for o in result.outcomes:
        for note in o.notes:
            console.line(f"Note: expansion {o.expansion.id}: {note}", style="yellow")


def _emit(state: AppState, result: ExpandCommandResult) -> int:
    if state.json:
        state.console.emit_json(result.to_dict())
    else:
        _render(state.console, result)
    return 0


def _confirm(state: AppState, action: str, what: str) -> object:
    """A confirm callback for the api: asks on a terminal, refuses (exit 3) without one."""

    def confirm(expansions: list[Expansion]) -> bool:
        from dbrollback.expand.lifecycle import describe, new_shape, old_shape

        if state.json or not sys.stdin.isatty():
            raise RefusedForSafety(f"{action} changes the schema: pass --yes (no terminal to confirm on)")
        for e in expansions:
            shape = old_shape(e) if action == "contract" else new_shape(e)
            state.console.line(
                f"  expansion {e.id} (revision {e.revision or '-'}) {e.table_name}: {describe(e)}; "
                f"drops {', '.join(shape) or 'nothing'}"
            )
        return click.confirm(f"{what} {len(expansions)} expansion(s)?", default=False, err=True)

    return confirm


_REV = click.argument("revision", required=False, metavar="[REV]")
_ID = click.option(
    "--id", "ids", type=int, multiple=True, metavar="N", help="Only this expansion (repeatable)."
)
_DRY = click.option("--dry-run", is_flag=True, help="Check and report; change nothing.")
_YES = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@click.command()
@_REV
@_ID
@_DRY
@_YES
@click.option("--no-snapshot", is_flag=True, help="Do not snapshot the table before dropping old columns.")
@click.option(
    "--drop-dependents",
    is_flag=True,
    help="Let indexes and constraints on an old column be dropped with it (recreate them on the new "
    "column first).",
)
@migration_options
@global_options
@pass_state
def contract(
    state: AppState,
    revision: str | None,
    ids: tuple[int, ...],
    dry_run: bool,
    yes: bool,
    no_snapshot: bool,
    drop_dependents: bool,
) -> int:
    """Finish expansions: drop the old shape (columns, dual-write triggers) once new code runs.

    REV: the revision that opened them (or a unique prefix) [all open expansions]. Refused (exit 3,
    nothing changed) unless each backfill is complete and every row's new columns match the old
    ones, counted now. The table is snapshotted before old columns are dropped.
    """
    from dbrollback.expand_api import contract_expansions

    with TerminalProgress(state.console) as progress:
        result = contract_expansions(
            state.settings(),
            revision,
            ids=list(ids),
            dry_run=dry_run,
            assume_yes=yes,
            snapshot=not no_snapshot,
            drop_dependents=drop_dependents,
            confirm=_confirm(state, "contract", "Contract"),  # type: ignore[arg-type]
            progress=progress,
            notify=state.console.notice,
        )
    return _emit(state, result)


@click.command()
@_REV
@_ID
@_DRY
@_YES
@migration_options
@global_options
@pass_state
def abort(state: AppState, revision: str | None, ids: tuple[int, ...], dry_run: bool, yes: bool) -> int:
    """Undo expansions: drop the new shape (columns, dual-write triggers); the old one has every write.

    REV: the revision that opened them (or a unique prefix) [all open expansions]. One transaction;
    instant (no data is moved). The revision stays applied; its downgrade, expand.abort(), is then
    a no-op.
    """
    from dbrollback.expand_api import abort_expansions

    result = abort_expansions(
        state.settings(),
        revision,
        ids=list(ids),
        dry_run=dry_run,
        assume_yes=yes,
        confirm=_confirm(state, "abort", "Abort"),  # type: ignore[arg-type]
        notify=state.console.notice,
    )
    return _emit(state, result)


COMMANDS = [contract, abort]
