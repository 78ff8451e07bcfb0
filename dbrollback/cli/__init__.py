"""The `dbrollback` command line: click only. Parse flags, call one api function, render."""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Any

import click

from dbrollback import __version__
from dbrollback.cli.state import AppState, global_options
from dbrollback.errors import EXIT_USAGE, DbrollbackError
from dbrollback.urls import redact

EXIT_INTERRUPTED = 130  # the shell's convention for death by SIGINT


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbrollback")
@global_options
def cli() -> None:
    """Safe, verifiable rollback for Alembic migrations on PostgreSQL.

    With no database URL configured anywhere, commands use an embedded PostgreSQL
    whose data lives in .dbrollback/pgdata.

    Exit codes: 0 success, 1 a check found problems, 2 usage/configuration/connection
    error, 3 refused for safety (lock held, confirmation missing), 4 a migration failed
    and was rolled back.
    """


def _register() -> None:
    from dbrollback.cli import (
        backfill_cmd,
        check_cmd,
        config_cmd,
        db_cmd,
        demo_cmd,
        expand_cmd,
        init_cmd,
        lint_cmd,
        migrate_cmd,
        plan_cmd,
        restore_cmd,
        rollback_cmd,
        snapshot_cmd,
        status_cmd,
    )

    modules = (
        migrate_cmd,
        rollback_cmd,
        expand_cmd,
        plan_cmd,
        status_cmd,
        snapshot_cmd,
        restore_cmd,
        lint_cmd,
        check_cmd,
        config_cmd,
        db_cmd,
        init_cmd,
        demo_cmd,
        backfill_cmd,
    )
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _terminate(signum: int, frame: object) -> None:
    # A cancelled pipeline sends SIGTERM: unwind like Ctrl-C so the open revision's transaction
    # is rolled back and the run is journaled as interrupted, instead of dying mid-write.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # A closed terminal or SSH session: unwind the same way. Not under `nohup`, which ignores
    # SIGHUP on purpose.
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _terminate)
    state = AppState()
    code = run(argv, state)
    sys.exit(code)


def run(argv: list[str] | None, state: AppState) -> int:
    """Run the CLI and map every outcome to the exit-code contract."""
    from dbrollback.invocation import set_command_line

    set_command_line(["dbrollback", *(sys.argv[1:] if argv is None else argv)])
    try:
        result: Any = cli.main(args=argv, prog_name="dbrollback", obj=state, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        code = EXIT_USAGE if exc.exit_code == 1 else exc.exit_code
        if state.json:
            state.console.emit_json({"error": "usage", "message": exc.format_message()})
        exc.show()
        return code
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C/SIGTERM into Abort
        state.console.err.print("Interrupted.", markup=False)
        return EXIT_INTERRUPTED
    except DbrollbackError as exc:
        if state.debug:
            sys.stderr.write(redact(traceback.format_exc()))
        state.console.error(exc)
        return exc.exit_code
    except Exception as exc:
        if state.debug:
            sys.stderr.write(redact(traceback.format_exc()))
        state.console.unexpected(exc)
        return EXIT_USAGE
