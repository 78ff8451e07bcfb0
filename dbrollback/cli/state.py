"""The one application object in ctx.obj, and the global options every command accepts.

Global options work both before and after the subcommand (`dbrollback --json status` and
`dbrollback status --json`): each command carries them too, and both store into AppState.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dbrollback.cli.console import Console
from dbrollback.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


class AppState:
    def __init__(self) -> None:
        self.flags: dict[str, Any] = {}
        self.json = False
        self.debug = False
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None or self._console.json_mode != self.json:
            self._console = Console(json_mode=self.json)
        return self._console

    def settings(self, **overrides: Any) -> Settings:
        flags = {**self.flags, **{k: v for k, v in overrides.items() if v is not None}}
        return load_settings(flags)


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        state = ctx.ensure_object(AppState)
        if name in ("json", "debug"):
            if value:
                setattr(state, name, True)
        elif value is not None:
            state.flags[name] = value
        return value

    return callback


def global_options(f: F) -> F:
    options = [
        click.option("--database-url", metavar="URL", expose_value=False,
                     callback=_store("database_url"),
                     help="PostgreSQL URL (postgresql://, postgres:// or postgresql+psycopg://)."),
        click.option("-c", "--alembic-config", metavar="PATH", expose_value=False,
                     callback=_store("alembic_config"), help="Alembic ini file [alembic.ini]."),
        click.option("--store", metavar="URI", expose_value=False, callback=_store("store"),
                     help="Snapshot store URI [file://.dbrollback/snapshots]."),
        click.option("--json", "json_output", is_flag=True, expose_value=False,
                     callback=_store("json"), help="Print one JSON document on stdout, nothing else."),
        click.option("--debug", is_flag=True, expose_value=False, callback=_store("debug"),
                     help="Show tracebacks on errors."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def migration_options(f: F) -> F:
    """Settings that tune a run; stored like global options."""
    options = [
        click.option("--lock-timeout", metavar="DURATION", expose_value=False,
                     callback=_store("lock_timeout"), help="lock_timeout per revision [5s]."),
        click.option("--statement-timeout", metavar="DURATION", expose_value=False,
                     callback=_store("statement_timeout"), help="statement_timeout per revision."),
        click.option("--lock-wait", metavar="DURATION", expose_value=False,
                     callback=_store("lock_wait"), help="Wait this long for another run [60s]."),
        click.option("--lock-retries", type=int, metavar="N", expose_value=False,
                     callback=_store("lock_retries"), help="Retries after a lock timeout [3]."),
        click.option("--actor", metavar="NAME", expose_value=False, callback=_store("actor"),
                     help="Who is running this, for the journal [OS user]."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


pass_state = click.make_pass_decorator(AppState, ensure=True)
