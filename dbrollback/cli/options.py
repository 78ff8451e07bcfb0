"""Option parsing shared by several commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click


def split_table_list(values: Sequence[str]) -> list[str]:
    """`--tables a,b --tables "x,y".z` → ['a', 'b', '"x,y".z']: commas inside double quotes are kept."""
    names: list[str] = []
    for value in values:
        current, quoted = "", False
        for char in value:
            if char == '"':
                quoted = not quoted
            if char == "," and not quoted:
                names.append(current.strip())
                current = ""
            else:
                current += char
        names.append(current.strip())
    return [n for n in names if n]


def tables_option(help_text: str) -> Any:
    return click.option(
        "--tables",
        "tables",
        multiple=True,
        metavar="NAMES",
        help=help_text + ' Comma-separated and/or repeated; [schema.]table, quote like SQL: "My T".',
    )
