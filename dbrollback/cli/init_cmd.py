"""init."""

from __future__ import annotations

from pathlib import Path

import click

from dbrollback.cli.state import AppState, global_options, pass_state


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@global_options
@pass_state
def init(state: AppState, directory: Path) -> None:
    """Add dbrollback.toml to the Alembic project in DIRECTORY, or create a new project there."""
    from dbrollback.project_init import init_project

    result = init_project(directory)
    if state.json:
        state.console.emit_json(result.to_dict())
        return
    for path in result.created:
        state.console.line(f"created {path}")
    for path in result.kept:
        state.console.line(f"kept existing {path}")
    state.console.line(result.next_step, style="green")


COMMANDS = [init]
