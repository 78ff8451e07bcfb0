"""Walking and printing pglast parse trees: what classify, plan and the lint rules all need."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast

__all__ = ["deparse", "walk_nodes"]


def walk_nodes(value: Any) -> Iterator[ast.Node]:
    """Every AST node in ``value`` (a node, or a sequence of nodes), depth first, itself included."""
    if isinstance(value, ast.Node):
        yield value
        for attribute in value:
            yield from walk_nodes(getattr(value, attribute))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from walk_nodes(item)


def deparse(node: Any) -> str:
    """``node`` as SQL text, or ``?`` when pglast cannot print it (only used in messages)."""
    from pglast.stream import RawStream

    try:
        return str(RawStream()(node))
    except Exception:
        return "?"
