"""snapshot create | list | show | verify | prune."""

from __future__ import annotations

import click

from dbrollback.cli.console import TerminalProgress
from dbrollback.cli.options import split_table_list, tables_option
from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED, SnapshotCorrupt


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "-"  # type: ignore[attr-defined]


@click.group()
@global_options
def snapshot() -> None:
    """Consistent copies of table data, taken before risky migrations or on demand."""


@snapshot.command("create")
@tables_option("Tables to capture [every user table].")
@click.option("--label", help="A note stored with the snapshot.")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel connections for large tables [cores].")
@global_options
@pass_state
def create(state: AppState, tables: tuple[str, ...], label: str | None, jobs: int | None) -> None:
    """Capture tables at one point in time into the store; prints the new snapshot id."""
    settings = state.settings(jobs=jobs)
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    with TerminalProgress(state.console) as progress:
        manifest, location = snapshot_api.snapshot_create(
            settings, split_table_list(tables) or None, label, progress=progress, notify=state.console.notice
        )
    summary = snapshot_api.SnapshotSummary.of(manifest, location)
    if state.json:
        state.console.emit_json(summary.to_dict())
        return
    state.console.notice(
        f"Snapshot of {len(summary.tables)} table(s), {summary.rows:,} rows, {_size(summary.bytes)} "
        f"compressed, in {location}"
    )
    click.echo(manifest.id)


@snapshot.command("list")
@global_options
@pass_state
def list_(state: AppState) -> None:
    """Snapshots in the store, oldest first."""
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    summaries = snapshot_api.snapshot_list(state.settings())
    if state.json:
        state.console.emit_json([s.to_dict() for s in summaries])
        return
    if not summaries:
        state.console.line("No snapshots in the store.")
        return
    state.console.table(
        f"Snapshots ({len(summaries)})",
        ["id", "created", "database", "run", "revision", "label", "tables", "rows", "size", "expires"],
        [
            (s.id, _when(s.created_at), s.database, s.run_id or "-", s.revision or "-", s.label or "",
             ", ".join(s.tables), f"{s.rows:,}", _size(s.bytes), _when(s.expires_at))
            for s in summaries
        ],
    )  # fmt: skip


@snapshot.command("show")
@click.argument("snapshot_id")
@global_options
@pass_state
def show(state: AppState, snapshot_id: str) -> None:
    """Everything the manifest records about one snapshot."""
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    manifest, location = snapshot_api.snapshot_show(state.settings(), snapshot_id)
    if state.json:
        state.console.emit_json({**manifest.model_dump(mode="json"), "location": location})
        return
    console = state.console
    console.line(f"Snapshot {manifest.id}  ({location})")
    console.line(f"Created {_when(manifest.created_at)} from database {manifest.database!r}, "
                 f"PostgreSQL {manifest.server_version}")  # fmt: skip
    console.line(f"Run {manifest.run_id or '-'}, revision {manifest.revision or '-'}, "
                 f"label {manifest.label or '-'}, expires {_when(manifest.expires_at)}")  # fmt: skip
    for table in manifest.tables:
        console.table(
            f"{table.schema_name}.{table.table_name}: {table.row_count:,} rows, "
            f"primary key ({', '.join(table.primary_key) or 'none'}), checksum {table.checksum}"
            + (f" — {table.note}" if table.note else ""),
            ["column", "type", "nullable", "default / generated"],
            [(c.name, c.type, "yes" if c.nullable else "no",
              (("generated: " if c.generated else "") + (c.default or ""))) for c in table.columns],
        )  # fmt: skip
        for entry in table.files:
            console.line(f"  {entry.name}  {_size(entry.bytes)}  sha256 {entry.sha256}")


@snapshot.command("verify")
@click.argument("snapshot_id")
@global_options
@pass_state
def verify(state: AppState, snapshot_id: str) -> int:
    """Re-read every file of a snapshot; check size and sha256 against the manifest. Exit 1 on damage."""
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    try:
        check = snapshot_api.snapshot_verify(state.settings(), snapshot_id)
    except SnapshotCorrupt as exc:  # a damaged manifest: verify reports it, exit 1
        state.console.error(exc)
        return EXIT_CHECK_FAILED
    if state.json:
        state.console.emit_json(check.to_dict())
    elif check.ok:
        state.console.line(
            f"Snapshot {snapshot_id}: {check.files} file(s), {_size(check.bytes)}: every sha256 matches.",
            style="green",
        )
    else:
        state.console.line(f"Snapshot {snapshot_id} is DAMAGED:", style="bold red")
        for problem in check.problems:
            state.console.line(f"  {problem}", style="red")
    return 0 if check.ok else EXIT_CHECK_FAILED


@snapshot.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@global_options
@pass_state
def prune(state: AppState, dry_run: bool) -> None:
    """Delete snapshots past the rollback window (never one a run inside the window needs)."""
    from dbrollback import snapshot_api  # imported when used: fast start-up for other commands

    result = snapshot_api.snapshot_prune(state.settings(), dry_run=dry_run, notify=state.console.notice)
    if state.json:
        state.console.emit_json(result.to_dict())
        return
    verb = "Would delete" if dry_run else "Deleted"
    if not result.pruned:
        state.console.line("Nothing to prune.")
    for s in result.pruned:
        state.console.line(f"{verb} {s.id} (created {_when(s.created_at)}, {_size(s.bytes)})")
    for s, reason in result.kept:
        state.console.line(f"Kept {s.id}: {reason}", style="dim")
    for partial in result.partials:
        verb = "Would remove" if dry_run else "Removed"
        state.console.line(f"{verb} the unfinished snapshot {partial} (a capture that never completed)")


COMMANDS = [snapshot]
