"""upgrade and downgrade."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from dbrollback import api
from dbrollback.cli.console import TerminalProgress
from dbrollback.cli.state import AppState, global_options, migration_options, pass_state


def _render(state: AppState, result: api.MigrationResult) -> None:
    console = state.console
    if state.json:
        console.emit_json(result.to_dict())
        return
    heads = lambda hs: ", ".join(hs) or "base"  # noqa: E731
    if result.dry_run:
        if not result.planned:
            console.line(f"Nothing to do: already at {heads(result.from_heads)}.")
            return
        console.table(
            f"Would {result.direction} from {heads(result.from_heads)} (dry run, nothing changed)",
            ["#", "revision", "phase", "description"],
            [(i, s.revision, s.phase, s.doc) for i, s in enumerate(result.planned, 1)],
        )
        return
    if not result.applied:
        console.line(f"Nothing to do: already at {heads(result.to_heads)} (run {result.run_id}).")
        return
    for snap in result.snapshots:
        console.line(f"Snapshot {snap['id']} before {snap['revision']}: {', '.join(snap['tables'])}")
    for back in result.restored_values:
        console.line(
            f"Saved values put back in {back['table']} ({', '.join(back['columns'])}): "
            f"{back['rows']:,} row(s) from snapshot {back['from_snapshot']}"
            + (f", {back['rows_deleted_since']:,} row(s) deleted since" if back["rows_deleted_since"] else "")
        )
    for done in result.expansions:
        if "backfill" in done:
            b = done["backfill"]
            console.line(
                f"Expansion {done['expansion_id']}: backfilled {b['rows_updated']:,} row(s) of {b['table']} "
                f"in {b['batches']:,} batch(es), {b['rows_per_s']:,.0f} rows/s"
            )
        else:
            console.line(f"Expansion {done['expansion_id']}: validated {done['validated']}")
    console.line(
        f"{result.direction.capitalize()}d {heads(result.from_heads)} → {heads(result.to_heads)}: "
        f"{len(result.applied)} revision(s) applied, journaled as run {result.run_id}.",
        style="green",
    )


def _revision(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Relative targets like -1 look like options; click is told to let them through
    # (ignore_unknown_options) and anything else that starts with "-" is refused here.
    if value is not None and value.startswith("-") and not value[1:].isdigit():
        raise click.UsageError(f"No such option: {value}", ctx=ctx)
    return value


_RELATIVE_OK = {"ignore_unknown_options": True}


@click.command(context_settings=_RELATIVE_OK)
@click.argument("revision", default="heads", required=False, callback=_revision)
@click.option("--dry-run", is_flag=True, help="Show the revisions that would run; change nothing.")
@click.option(
    "--snapshot",
    "snapshot_policy",
    type=click.Choice(["lossy", "touched", "all", "never"]),
    help="Which tables to snapshot first [lossy: those a revision destroys data in].",
)
@click.option(
    "--no-snapshot", is_flag=True, help="Take no snapshot at all (recorded in the journal and audit log)."
)
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel connections for snapshots [cores].")
@click.option(
    "--skip-saved-values",
    is_flag=True,
    help="Do not put back values a rollback saved before dropping their columns (they stay in their "
    "snapshot; the saved record is marked skipped).",
)
@click.option(
    "--no-backfill",
    is_flag=True,
    help="Do not backfill the expansions the revisions open (run `dbrollback backfill --resume` later).",
)
@migration_options
@global_options
@pass_state
def upgrade(state: AppState, revision: str, dry_run: bool, snapshot_policy: str | None, no_snapshot: bool,
            jobs: int | None, skip_saved_values: bool, no_backfill: bool) -> None:  # fmt: skip
    """Apply revisions up to REVISION (default: heads), one transaction each.

    REVISION accepts everything Alembic does: ids, unique prefixes, head, heads,
    +N, branch@head, branch labels. Before each revision that destroys data, the tables it
    touches are snapshotted to the store (see `dbrollback plan`); an unwritable store
    refuses the upgrade (exit 3) before anything changes. Values a rollback saved before its
    downgrade dropped their columns are put back when the revision is applied again.
    Expansions the revisions open (dbrollback.expand) are backfilled in short batches after
    they commit, unless --no-backfill.
    """
    from dbrollback import api  # imported when used: keeps every other command's start-up fast

    settings = state.settings(snapshot=snapshot_policy, jobs=jobs)
    with TerminalProgress(state.console) as progress:
        result = api.upgrade(settings, revision, dry_run=dry_run, snapshot=not no_snapshot,
                             progress=progress, notify=state.console.notice,
                             skip_saved_values=skip_saved_values, backfill=not no_backfill)  # fmt: skip
    _render(state, result)


@click.command(context_settings=_RELATIVE_OK)
@click.argument("revision", callback=_revision)
@click.option("--dry-run", is_flag=True, help="Show the revisions that would run; change nothing.")
@migration_options
@global_options
@pass_state
def downgrade(state: AppState, revision: str, dry_run: bool) -> None:
    """Revert revisions down to REVISION (an id, -N, or base), one transaction each."""
    from dbrollback import api

    result = api.downgrade(state.settings(), revision, dry_run=dry_run, notify=state.console.notice)
    _render(state, result)


COMMANDS = [upgrade, downgrade]
