"""All terminal output goes through here; the only module that touches rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console as RichConsole
from rich.table import Table

from dbrollback.errors import DbrollbackError
from dbrollback.urls import redact


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class Console:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.out = RichConsole(highlight=False, soft_wrap=True)
        self.err = RichConsole(stderr=True, highlight=False, soft_wrap=True)
        for console in (self.out, self.err):
            if not console.is_terminal:  # pipes and CI logs: don't squeeze tables into 80 columns
                console.width = 160

    # -- JSON mode: exactly one document on stdout --------------------------------------------
    def emit_json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, default=_default, indent=2) + "\n")
        sys.stdout.flush()

    # -- human output -------------------------------------------------------------------------
    def notice(self, message: str) -> None:
        """Progress and context lines: stderr, silent under --json."""
        if not self.json_mode:
            self.err.print(redact(message), markup=False, style="dim")

    def line(self, message: str = "", style: str | None = None) -> None:
        if not self.json_mode:
            self.out.print(message, markup=False, style=style)

    def table(self, title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        if self.json_mode:
            return
        table = Table(title=title, title_justify="left", show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.out.print(table)

    def error(self, error: DbrollbackError) -> None:
        if self.json_mode:
            self.emit_json(error.to_dict())
        else:
            self.err.print(f"Error: {redact(error.message)}", markup=False, style="bold red")

    def unexpected(self, error: BaseException) -> None:
        message = redact(f"{type(error).__name__}: {error}")
        if self.json_mode:
            self.emit_json({"error": "unexpected", "message": message})
        else:
            self.err.print(
                f"Unexpected error: {message}\n(run with --debug for a traceback)",
                markup=False,
                style="bold red",
            )
