"""``--changed-since REF``: the files added or changed since the merge base with REF, including
uncommitted and untracked ones, so a pre-merge check lints exactly what the branch brings."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dbrollback.errors import ConfigError

__all__ = ["changed_files"]


def _git(args: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ConfigError("--changed-since needs git, which is not installed") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise ConfigError(f"git {' '.join(args)} failed: {detail}")
    return done.stdout


def changed_files(ref: str, cwd: Path | None = None) -> set[Path]:
    """Absolute paths of files added, copied, modified or renamed since ``ref``'s merge base with HEAD."""
    cwd = (cwd or Path.cwd()).resolve()
    if ref.startswith("-"):
        raise ConfigError(f"--changed-since {ref!r} is not a git reference")
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd).strip())
    try:
        _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], top)
    except ConfigError:
        raise ConfigError(f"--changed-since: {ref!r} is not a commit of the repository at {top}") from None
    base = _git(["merge-base", ref, "HEAD"], top).strip()
    names = _git(["diff", "--name-only", "-z", "--diff-filter=ACMR", base], top).split("\0")
    names += _git(["ls-files", "--others", "--exclude-standard", "-z"], top).split("\0")
    return {(top / name).resolve() for name in names if name}
