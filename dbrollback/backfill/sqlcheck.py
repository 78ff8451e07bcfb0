"""The user's SET and WHERE text: proven to be pieces of exactly one UPDATE before they go anywhere.

`set_sql` and `where_sql` are SQL by design, so they cannot be bound as values. What they must not
do is step outside their place in ``UPDATE t SET {set_sql} WHERE ({where_sql})``: end the statement
and start another, comment the rest of it out, close the parenthesis around the condition, or add a
FROM, a RETURNING or a WITH. Each piece is scanned alone (no comment, no ``;``, brackets balanced
inside the piece), then the whole statement is parsed and must be one plain UPDATE of the table.
The server checks names and types afterwards (see keyset.check_on_server).
"""

from __future__ import annotations

import pglast
from pglast import ast, parser
from pglast.parser import ParseError

from dbrollback.errors import ConfigError

_PLACEHOLDER = "_dbrb_backfill_target"
_OPENING = {"ASCII_40": "ASCII_41", "ASCII_91": "ASCII_93"}  # ( ) and [ ]
_CLOSING = set(_OPENING.values())


def _scan_piece(what: str, text: str) -> None:
    if not text.strip():
        raise ConfigError(f"{what} is empty")
    try:
        tokens = parser.scan(text)
    except ParseError as exc:
        raise ConfigError(f"{what} is not valid SQL: {exc}") from None
    stack: list[str] = []
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            raise ConfigError(f"{what} may not contain comments: {text!r}")
        if token.name == "ASCII_59":
            raise ConfigError(f"{what} must be one expression, not several statements (found ';'): {text!r}")
        if token.name in _OPENING:
            stack.append(_OPENING[token.name])
        elif token.name in _CLOSING and (not stack or stack.pop() != token.name):
            raise ConfigError(f"{what} has an unbalanced bracket: {text!r}")
    if stack:
        raise ConfigError(f"{what} has an unbalanced bracket: {text!r}")


def check_update_pieces(set_sql: str, where_sql: str | None) -> list[str]:
    """Raise ConfigError unless the pieces make exactly one UPDATE; returns the assigned columns."""
    _scan_piece("--set", set_sql)
    statement = f"UPDATE {_PLACEHOLDER} SET {set_sql}"
    if where_sql is not None:
        _scan_piece("--where", where_sql)
        statement += f" WHERE ({where_sql})"
    try:
        parsed = pglast.parse_sql(statement)
    except ParseError as exc:
        raise ConfigError(f"--set/--where do not form one UPDATE statement: {exc}") from None
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, ast.UpdateStmt):
        raise ConfigError("--set/--where must form exactly one UPDATE statement")
    update = parsed[0].stmt
    if update.relation is None or update.relation.relname != _PLACEHOLDER or update.relation.schemaname:
        raise ConfigError("--set must be assignments (column = expression, ...) only")
    if (
        update.fromClause
        or getattr(update, "returningClause", None)
        or getattr(update, "returningList", None)
        or update.withClause
    ):
        raise ConfigError("--set may not add FROM, RETURNING or WITH to the UPDATE: assignments only")
    if (update.whereClause is None) != (where_sql is None):
        raise ConfigError("--set may not contain a WHERE clause: give the condition with --where")
    return [t.name for t in update.targetList or () if isinstance(t, ast.ResTarget) and t.name]
