"""The revision graph of a versions directory, read statically (no import) for the graph rules.

Graph rules need every revision file of the directory, also the ones not being linted (with
``--changed-since`` or files passed by pre-commit), so this reads ``revision``, ``down_revision``
and ``branch_labels`` from the module's literal assignments only: cheap, and never runs code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GraphEntry", "read_graph_entry"]


@dataclass(frozen=True)
class GraphEntry:
    path: Path
    revision: str
    down_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...]
    line: int  # of `revision =`


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
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


def read_graph_entry(path: Path, source: str | None = None) -> GraphEntry | None:
    """The graph facts of one revision file, or None when it is not a revision with literal ids."""
    try:
        text = source if source is not None else path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
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
    revision, line = values.get("revision", (None, 0))
    if not isinstance(revision, str):
        return None
    down = _names(values.get("down_revision", (None, 0))[0])
    labels = _names(values.get("branch_labels", (None, 0))[0])
    if down is None:
        return None  # computed at import time: the graph rules cannot know it
    return GraphEntry(path.resolve(), revision, down, labels or (), line)
