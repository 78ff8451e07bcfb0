"""What the lint and check reports share for CI: paths as CI tools show them, and the escaping of
GitHub Actions workflow commands (``::error file=…,line=…::message``)."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

__all__ = ["ci_root", "display_path", "escape_data", "escape_property", "human_path", "uri_reference"]


@lru_cache(maxsize=8)
def _git_top_level(cwd: Path) -> Path | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True,
                              text=True, check=False, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or cwd vanished
    top = done.stdout.strip()
    return Path(top).resolve() if done.returncode == 0 and top else None


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def ci_root() -> Path:
    """The directory CI tools resolve paths against: the git work tree the current directory is in
    (GitHub annotations and code scanning want paths from the repository root, also when the job
    runs in a subdirectory such as a monorepo's ``backend/``); else ``GITHUB_WORKSPACE`` when the
    current directory is below it; else the current directory. git is asked once per directory."""
    cwd = Path.cwd().resolve()
    top = _git_top_level(cwd)
    if top is not None:
        return top
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        root = Path(workspace).resolve()
        if _is_within(cwd, root):
            return root
    return cwd


def _relative(path: str, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def display_path(path: str, base: Path | None = None) -> str:
    """``path`` as CI output shows it: relative to ``base`` (default: :func:`ci_root`) when below
    it, else as given."""
    return _relative(path, base if base is not None else ci_root())


def human_path(path: str, base: Path | None = None) -> str:
    """``path`` for people reading a terminal: relative to ``base`` (default: the current directory)
    when below it, so it can be opened from where the command ran."""
    return _relative(path, base if base is not None else Path.cwd())


def uri_reference(relative_path: str) -> str:
    """A relative POSIX path as a URI reference (SARIF ``artifactLocation.uri``): spaces, ``%``,
    ``#``, ``?`` and non-ASCII characters percent-encoded (UTF-8), ``/`` kept."""
    return quote(relative_path, safe="/")


def escape_data(text: str) -> str:
    """A workflow command's message: a newline would end the command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: ``:`` and ``,`` separate properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")
