"""db start | stop | status | url: the embedded PostgreSQL."""

from __future__ import annotations

import click

from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.embedded import EmbeddedServer


def _server(state: AppState) -> EmbeddedServer:
    return EmbeddedServer(state.settings().embedded_pgdata)


@click.group()
@global_options
def db() -> None:
    """Manage the embedded PostgreSQL used when no database URL is configured."""


@db.command()
@global_options
@pass_state
def start(state: AppState) -> None:
    """Initialise (first time) and start the embedded server."""
    server = _server(state)
    status = server.start()
    if state.json:
        state.console.emit_json({"running": True, "pid": status.pid, "pgdata": str(status.pgdata),
                                 "url": status.url()})  # fmt: skip
    else:
        state.console.line(f"Embedded PostgreSQL running (pid {status.pid}) at {status.pgdata}")
        state.console.line(status.url())


@db.command()
@global_options
@pass_state
def stop(state: AppState) -> None:
    """Stop the embedded server (its data stays)."""
    was_running = _server(state).stop()
    if state.json:
        state.console.emit_json({"was_running": was_running, "running": False})
    else:
        state.console.line("Stopped." if was_running else "The embedded server was not running.")


@db.command("status")
@global_options
@pass_state
def db_status(state: AppState) -> None:
    """Whether the embedded server is initialised and running."""
    status = _server(state).status()
    doc = {
        "pgdata": str(status.pgdata),
        "initialized": status.initialized,
        "running": status.running,
        "pid": status.pid,
        "url": status.url() if status.running else None,
    }
    if state.json:
        state.console.emit_json(doc)
    else:
        for key, value in doc.items():
            state.console.line(f"{key + ':':13}{'' if value is None else value}")


@db.command()
@global_options
@pass_state
def url(state: AppState) -> None:
    """Print the embedded server's connection URL (starts it if needed)."""
    status = _server(state).start()
    if state.json:
        state.console.emit_json({"url": status.url()})
    else:
        click.echo(status.url())


COMMANDS = [db]
