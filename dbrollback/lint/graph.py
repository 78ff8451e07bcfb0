"""The revision graph of a versions directory, read statically (no import) for the graph rules.

Graph rules need every revision file of the directory, also the ones not being linted (with
``--changed-since`` or files passed by pre-commit), so this reads ``revision``, ``down_revision``
and ``branch_labels`` from the module's literal assignments only: cheap, and never runs code. A
file that does not parse is read with a regular expression over its module-level literal
assignments; when even that fails its id stays unknown, and graph rules do not judge edges that
could point into it (:attr:`RevisionGraph.edges_known`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GraphEntry",
    "RevisionGraph",
    "UnreadableRevision",
    "python_files",
    "read_graph_entry",
    "scan_graph_entry",
]


@dataclass(frozen=True)
class GraphEntry:
    path: Path
    revision: str
    # None: not known without running the file (computed at import time, or not readable).
    down_revisions: tuple[str, ...] | None
    branch_labels: tuple[str, ...]
    line: int  # of `revision =`


@dataclass(frozen=True)
class UnreadableRevision:
    """A file that assigns ``revision`` at module level, but whose id cannot be read without
    running it (it does not parse, or computes the id)."""

    path: Path


@dataclass
class RevisionGraph:
    entries: list[GraphEntry] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)

    @property
    def edges_known(self) -> bool:
        """True if every revision file's id and parents are known: only then can a graph rule say a
        parent is missing or a revision has no child."""
        return not self.unreadable and all(entry.down_revisions is not None for entry in self.entries)


def python_files(directories: list[Path]) -> list[Path]:
    """The .py files below ``directories`` (resolved, sorted, without __pycache__). Resolving every
    file costs a system call per path component: below a resolved directory only symlinks need it."""
    found = [
        p for d in directories for p in sorted(d.resolve().rglob("*.py")) if "__pycache__" not in p.parts
    ]
    return list(dict.fromkeys(p.resolve() if p.is_symlink() else p for p in found))


# A module-level assignment (no indentation), also annotated (`down_revision: Union[str, None] = …`).
REVISION_ASSIGNMENT = re.compile(r"^revision\s*(:[^=\n]*)?=", re.MULTILINE)
_LITERAL = r"(?P<value>None|'[^'\n]*'|\"[^\"\n]*\"|\([^()]*\)|\[[^\[\]]*\])"


_ASSIGNMENTS = re.compile(
    rf"^(?P<name>revision|down_revision|branch_labels)\s*(?::[^=\n]*)?=\s*{_LITERAL}\s*(?:#.*)?$",
    re.MULTILINE,
)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def _names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _scanned(text: str) -> dict[str, tuple[Any, int]]:
    """name -> (value, line) of the last module-level literal assignment to each graph name."""
    found: dict[str, tuple[Any, int]] = {}
    for match in _ASSIGNMENTS.finditer(text):
        try:
            value = ast.literal_eval(match["value"])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            found.pop(match["name"], None)
            continue
        found[match["name"]] = (value, text.count("\n", 0, match.start()) + 1)
    return found


def scan_graph_entry(path: Path, text: str) -> GraphEntry | None:
    """The graph facts read with regular expressions, without parsing the file: for files that do
    not parse, and where speed matters more than the rare multi-line or computed assignment. None
    when ``revision`` is not a literal string assignment."""
    values = _scanned(text)
    revision = values.get("revision")
    if revision is None or not isinstance(revision[0], str):
        return None
    down = values.get("down_revision")
    down_revisions = _names(down[0]) if down is not None else None
    if down is None and re.search(r"^down_revision\b", text, re.MULTILINE) is None:
        down_revisions = ()  # no down_revision at all: a base, as Alembic reads it
    labels = values.get("branch_labels")
    branch_labels = (_names(labels[0]) or ()) if labels is not None else ()
    return GraphEntry(path, revision[0], down_revisions, branch_labels, revision[1])


def read_graph_entry(path: Path, source: str | None = None) -> GraphEntry | UnreadableRevision | None:
    """The graph facts of one revision file (``path`` resolved, as :func:`python_files` gives it);
    :class:`UnreadableRevision` when it assigns a
    ``revision`` whose value cannot be read; None when it is not a revision (no module-level
    ``revision =``) or cannot be read at all."""
    try:
        text = source if source is not None else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if REVISION_ASSIGNMENT.search(text) is None:
        return None
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError):
        return scan_graph_entry(path, text) or UnreadableRevision(path)
    values: dict[str, tuple[Any, int]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision", "branch_labels"):
                values[target.id] = (_literal(value), node.lineno)
    if "revision" not in values:
        return None
    revision, line = values["revision"]
    if revision is _NOT_LITERAL:
        return UnreadableRevision(path)
    if not isinstance(revision, str):
        return None  # Alembic would not take it as a revision either
    down = _names(values.get("down_revision", (None, 0))[0])
    labels = _names(values.get("branch_labels", (None, 0))[0])
    return GraphEntry(path, revision, down, labels or (), line)
