"""config show."""

from __future__ import annotations

import click

from dbrollback.cli.state import AppState, global_options, migration_options, pass_state


@click.group()
@global_options
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@migration_options
@global_options
@pass_state
def show(state: AppState) -> None:
    """Print every setting, its effective value and where it came from (password masked)."""
    settings = state.settings()
    values = settings.display()
    sources = settings.sources
    if state.json:
        state.console.emit_json(
            {name: {"value": value, "source": sources[name]} for name, value in values.items()}
        )
        return
    state.console.table(
        "Effective configuration (highest precedence: flag > env > file > alembic.ini > default)",
        ["setting", "value", "source"],
        [(name, value, sources[name]) for name, value in values.items()],
    )


COMMANDS = [config]
