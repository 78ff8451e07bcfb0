"""The command line being run, for the journal and the audit table.

Kept apart from the catalog so that the CLI can record it without importing psycopg (every
command's start-up time, `lint` in CI included, pays for what the CLI imports up front)."""

from __future__ import annotations

import os
import shlex
import sys

from dbrollback.urls import redact

_command_line: list[str] | None = None


def set_command_line(args: list[str]) -> None:
    """The CLI records the command it is running; library callers default to sys.argv."""
    global _command_line
    _command_line = list(args)


def command_line() -> str:
    args = _command_line or [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]]
    return redact(shlex.join(args))
