"""How long-running library calls report progress, without knowing about terminals.

The CLI passes a reporter that draws rich progress bars on a TTY; scripts pass nothing and get
the silent default.
"""

from __future__ import annotations

from typing import Protocol


class ProgressTask(Protocol):
    def advance(self, amount: int) -> None: ...

    def finish(self) -> None: ...


class ProgressReporter(Protocol):
    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        """Start a task; `unit` is "bytes" or "rows" (for the rate shown)."""
        ...


class _SilentTask:
    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


class SilentProgress:
    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        return _SilentTask()


SILENT = SilentProgress()
