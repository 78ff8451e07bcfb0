"""What the lint and check reports share for CI: paths as CI tools show them, and the escaping of
GitHub Actions workflow commands (``::error file=…,line=…::message``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["display_path", "escape_data", "escape_property"]


def display_path(path: str, base: Path | None = None) -> str:
    """Relative to ``base`` (default: the current directory) when below it; CI tools want that."""
    base = (base or Path.cwd()).resolve()
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return Path(path).as_posix()


def escape_data(text: str) -> str:
    """A workflow command's message: a newline would end the command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: ``:`` and ``,`` separate properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")
