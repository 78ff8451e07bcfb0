"""SQL expressions given to the expand helpers, checked with PostgreSQL's own parser.

An ``up``/``down`` expression is written over the table's columns (``lower(email)``); inside the
dual-write trigger the same expression must read the row being written, so its column references
are rewritten to ``NEW."col"``. Only unqualified references to the table's own columns are
allowed: anything else (another table, a subquery's alias) would not mean the same in the trigger,
the backfill and the contract check.
"""

from __future__ import annotations

from collections.abc import Iterable

import pglast
from pglast import ast
from pglast.stream import RawStream
from pglast.visitors import Visitor

from dbrollback.errors import ConfigError


def _parse(expression: str, what: str) -> ast.Node:
    if not expression or not expression.strip():
        raise ConfigError(f"The {what} expression is empty.")
    try:
        statements = pglast.parse_sql(f"SELECT ({expression})")
    except pglast.parser.ParseError as exc:
        raise ConfigError(f"The {what} expression {expression!r} is not valid SQL: {exc}") from None
    stmt = statements[0].stmt if len(statements) == 1 else None
    if (
        not isinstance(stmt, ast.SelectStmt)
        or stmt.fromClause
        or stmt.whereClause
        or not stmt.targetList
        or len(stmt.targetList) != 1
    ):
        raise ConfigError(f"The {what} expression {expression!r} must be one SQL expression.")
    return stmt.targetList[0].val


class _Rewrite(Visitor):
    def __init__(self, columns: set[str] | None, row: str | None) -> None:
        super().__init__()
        self.columns = columns
        self.row = row
        self.unknown: list[str] = []
        self.used: list[str] = []

    def visit_SubLink(self, ancestors: object, node: ast.SubLink) -> None:
        raise ConfigError("Subqueries are not allowed in expand expressions (they would run per row).")

    def visit_ColumnRef(self, ancestors: object, node: ast.ColumnRef) -> ast.ColumnRef | None:
        fields = node.fields or ()
        if len(fields) != 1 or not isinstance(fields[0], ast.String) or fields[0].sval is None:
            shown = ".".join(getattr(f, "sval", "*") for f in fields)
            raise ConfigError(
                f"Column reference {shown} in an expand expression must be a plain column of the table."
            )
        name: str = fields[0].sval
        if self.columns is not None and name not in self.columns:
            self.unknown.append(name)
            return None
        self.used.append(name)
        if self.row is None:
            return None
        return ast.ColumnRef(fields=(ast.String(sval=self.row), fields[0]))


def check_expression(expression: str, columns: Iterable[str], what: str) -> list[str]:
    """The table columns ``expression`` reads; unknown columns are a ConfigError."""
    return _rewrite(expression, set(columns), None, what)[1]


def row_expression(expression: str, columns: Iterable[str], what: str, row: str = "new") -> str:
    """``expression`` with every column reference read from the trigger row ``row``."""
    return _rewrite(expression, set(columns), row, what)[0]


def referenced_columns(expression: str) -> list[str]:
    """Every column an (already checked) expression reads."""
    return _rewrite(expression, None, None, "stored")[1]


def _rewrite(expression: str, columns: set[str] | None, row: str | None, what: str) -> tuple[str, list[str]]:
    node = _parse(expression, what)
    visitor = _Rewrite(columns, row)
    # Visit a wrapper so that the root node itself may be replaced.
    wrapper = ast.ResTarget(val=node)
    visitor(wrapper)
    if visitor.unknown:
        raise ConfigError(
            f"The {what} expression {expression!r} names column(s) the table does not have: "
            f"{', '.join(sorted(set(visitor.unknown)))}."
        )
    assert wrapper.val is not None
    return f"({RawStream()(wrapper.val)})", list(dict.fromkeys(visitor.used))
