"""downgrade-loses-data: the upgrade destroys data and the downgrade only recreates its shape."""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast as pg_ast

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import (
    PgType,
    RecordedOp,
    RecordedRevision,
    TableKey,
    added_columns,
    created_tables,
    dropped_columns,
    dropped_tables,
    row_changes,
    table_label,
    type_changes,
    with_tables_created_before,
)
from dbrollback.lint.rules.downgrade_not_inverse import downgrade_comparable

Column = tuple[TableKey, str]

# name -> (bits, decimal digits) of PostgreSQL's integer types.
_INTEGERS = {"int2": (16, 5), "int4": (32, 10), "int8": (64, 19)}
_TEMPORAL = ("timestamp", "timestamptz", "time", "timetz", "interval")
_STRINGS = ("varchar", "text")


def _numbers(modifiers: tuple[str, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(int(m) for m in modifiers)
    except ValueError:
        return None


def _numeric_fits(modifiers: tuple[int, ...], digits: int, scale: int) -> bool:
    """Whether numeric(modifiers) holds every value with ``digits`` integer digits and ``scale``."""
    if not modifiers:
        return True
    new_scale = modifiers[1] if len(modifiers) > 1 else 0
    return new_scale >= scale and modifiers[0] - new_scale >= digits


def lossless(old: PgType, new: PgType) -> bool:
    """True if every value of ``old`` survives the change to ``new`` unchanged: varchar -> text,
    varchar widening, smallint -> integer -> bigint, integers -> numeric/float wide enough, numeric
    widening, real -> double precision, date -> timestamp, more fractional-second precision."""
    if old == new:
        return True
    if old.array_dimensions != new.array_dimensions or old.collation != new.collation:
        return False
    before, after = _numbers(old.modifiers), _numbers(new.modifiers)
    if before is None or after is None:
        return False
    if old.name in _STRINGS and new.name in _STRINGS:
        # text, and varchar without a length, hold any string.
        if new.name == "text" or not after:
            return True
        return old.name == "varchar" and bool(before) and after[0] >= before[0]
    if old.name in _INTEGERS:
        bits, digits = _INTEGERS[old.name]
        if new.name in _INTEGERS:
            return _INTEGERS[new.name][0] >= bits
        if new.name == "numeric":
            return _numeric_fits(after, digits, 0)
        # double precision has a 53-bit mantissa, real a 24-bit one.
        return (new.name == "float8" and bits <= 32) or (new.name == "float4" and bits <= 16)
    if old.name == "numeric" and new.name == "numeric":
        if not before:
            return not after
        scale = before[1] if len(before) > 1 else 0
        return _numeric_fits(after, before[0] - scale, scale)
    if old.name == "float4" and new.name == "float8":
        return True
    if old.name == "date" and new.name in ("timestamp", "timestamptz"):
        return True
    if old.name == new.name and old.name in _TEMPORAL:
        return not after or (bool(before) and after[0] >= before[0])
    return False


def _plain_using(using: str | None, column: str) -> bool:
    """True if USING is absent or only casts the column itself (the value is kept)."""
    if using is None:
        return True
    try:
        statement: Any = pglast.parse_sql(f"SELECT {using}")[0].stmt
        expression = statement.targetList[0].val
    except Exception:
        return False
    while isinstance(expression, pg_ast.TypeCast):
        expression = expression.arg
    if not isinstance(expression, pg_ast.ColumnRef):
        return False
    fields = [f.sval for f in expression.fields or () if isinstance(f, pg_ast.String)]
    return bool(fields) and fields[-1] == column


class _Restore:
    """What the downgrade rebuilds: tables, columns and column types, and the rows it writes back."""

    def __init__(self, ops: list[RecordedOp]) -> None:
        self.tables = created_tables(ops)
        self.columns = added_columns(ops)
        self.types: dict[Column, list[PgType | None]] = {}
        self.refilled_tables: set[TableKey] = set()
        self.refilled_columns: set[Column] = set()
        for recorded in ops:
            for change in type_changes(recorded):
                self.types.setdefault((change.table, change.column), []).append(change.new)
            for row in row_changes(recorded):
                if row.kind in ("insert", "merge"):
                    self.refilled_tables.add(row.table)
                if row.kind in ("update", "merge"):
                    self.refilled_columns |= {(row.table, c) for c in row.columns}


def _losses(recorded: RecordedOp, new_tables: set[TableKey], new_columns: set[Column],
            restore: _Restore) -> list[str]:  # fmt: skip
    """What ``recorded`` destroys in tables and columns that existed before the revision and that the
    downgrade recreates without writing their data back."""
    lost: list[str] = []
    for table in dropped_tables(recorded):
        if table not in new_tables and table in restore.tables and table not in restore.refilled_tables:
            lost.append(f"drops table {table_label(table)}; the downgrade recreates it empty")
    for table, column in dropped_columns(recorded):
        key = (table, column)
        if table in new_tables or key in new_columns or key in restore.refilled_columns:
            continue
        if key in restore.columns or table in restore.tables:
            lost.append(f"drops column {table_label(table)}.{column}; the downgrade re-adds it empty")
    for change in type_changes(recorded):
        key = (change.table, change.column)
        restored = restore.types.get(key)
        if change.table in new_tables or key in new_columns or key in restore.refilled_columns:
            continue
        if not restored:
            continue  # the downgrade does not change the type back: downgrade-not-inverse's case
        old = change.old or restored[-1]
        if old is None or change.new is None:
            continue  # a type we cannot read: not guessed
        if lossless(old, change.new) and _plain_using(change.using, change.column):
            continue
        lost.append(
            f"changes {table_label(change.table)}.{change.column} from {old} to {change.new}, which can "
            "change values; the downgrade restores the type, not the values"
        )
    return lost


class DowngradeLosesData(Rule):
    id = "downgrade-loses-data"
    default_severity = "error"
    axes = ("data-loss", "irreversible")
    problem = (
        "the upgrade destroys data (drops a column or table, narrows a type) and the downgrade only "
        "recreates the shape, so rolling back returns empty or changed values"
    )
    safe_alternative = (
        "run the upgrade through `dbrollback upgrade`, which snapshots the data before the revision so "
        "`dbrollback rollback` restores it; or keep the old column/table until the change has proven itself"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        if not downgrade_comparable(revision):
            return []
        upgrade = revision.upgrade
        restore = _Restore(revision.downgrade.ops)
        findings: list[Finding] = []
        for index, (recorded, new_tables) in enumerate(with_tables_created_before(upgrade.ops)):
            lost = _losses(recorded, new_tables, added_columns(upgrade.ops[:index]), restore)
            if not lost:
                continue
            message = (
                f"{'; '.join(lost)} — only a dbrollback snapshot (taken by `dbrollback upgrade` before "
                "this revision) brings the data back"
            )
            findings.append(self.data_loss_finding(revision, recorded, message))
        return findings
