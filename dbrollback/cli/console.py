"""All terminal output goes through here; the only module that touches rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console as RichConsole
from rich.table import Table
from rich.text import Text

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

    def finding(self, location: str, severity: str, text: str, hint: str | None) -> None:
        """One lint finding: ``location: severity text`` and an indented hint; coloured on a TTY."""
        if self.json_mode:
            return
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}.get(severity)
        line = Text(f"{location}: ")
        line.append(severity, style=style)
        line.append(f" {text}")
        self.out.print(line)
        if hint:
            self.out.print(f"    hint: {hint}", markup=False, style="dim")

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


class _RichTask:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, amount: int) -> None:
        self._progress.advance(self._task_id, amount)

    def finish(self) -> None:
        for task in self._progress.tasks:
            if task.id == self._task_id and task.total is not None:
                self._progress.update(self._task_id, completed=max(task.completed, task.total))
        self._progress.stop_task(self._task_id)


class _QuietTask:
    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1e6:,.1f} MB"
    return f"{value:,.0f} rows"


def _make_amount_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        """Done / total and the rate, in MB or rows depending on the task's unit."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "bytes")
            done = _amount(task.completed, unit)
            total = f" / {_amount(task.total, unit)}" if task.total else ""
            speed = task.finished_speed or task.speed
            rate = f"  {_amount(speed, unit)}/s" if speed else ""
            return Text(f"{done}{total}{rate}")

    return AmountColumn()


class TerminalProgress:
    """Progress bars with amount, rate and ETA on stderr when it is a terminal.

    Silent when stderr is not a terminal or under --json. Use as a context manager around the
    call that reports progress.
    """

    def __init__(self, console: Console) -> None:
        self._progress: Any = None
        if not console.json_mode and console.err.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _make_amount_column(),
                TimeRemainingColumn(),
                console=console.err,
            )

    def __enter__(self) -> TerminalProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int | None, unit: str = "bytes") -> Any:
        if self._progress is None:
            return _QuietTask()
        return _RichTask(self._progress, self._progress.add_task(description, total=total, unit=unit))
