"""Table contents as text, and what a downgrade lost of them.

Values are read with ``::text`` under pinned output settings (time zone, date style, float digits…)
so the same value always reads the same. Tables in a throwaway database hold a few hundred rows, so
they are compared value by value rather than through checksums: that says which columns lost data
and in how many rows.

Rows are matched by the table's primary key (or a unique key of NOT NULL columns) when its columns
exist on both sides; otherwise the rows are compared as multisets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.check.tables import QualifiedName, TableInfo

__all__ = ["LostData", "TableRows", "align_types", "compare_rows", "pin_output_settings", "read_rows"]

Row = tuple[str | None, ...]

# The text form of values depends on these; set for the whole session of the check's connection.
_OUTPUT_SETTINGS = (("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                    ("extra_float_digits", "3"), ("bytea_output", "hex"), ("lc_monetary", "C"))  # fmt: skip

STAGE_BEFORE_UPGRADE = "before_upgrade"  # rows that existed before the upgrade
STAGE_AFTER_UPGRADE = "after_upgrade"  # rows written after the upgrade (by the seeder)
_STAGE_TEXT = {STAGE_BEFORE_UPGRADE: "rows written before the upgrade",
               STAGE_AFTER_UPGRADE: "rows written after the upgrade"}  # fmt: skip


def pin_output_settings(conn: psycopg.Connection) -> None:
    for name, value in _OUTPUT_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


@dataclass(frozen=True)
class TableRows:
    table: QualifiedName
    display: str
    columns: tuple[str, ...]
    types: tuple[str, ...]  # format_type() of each column, typmod included
    casts: tuple[str, ...]  # each column's type without typmod, for casts
    key: tuple[str, ...] | None
    rows: tuple[Row, ...]

    @classmethod
    def of(cls, table: TableInfo, rows: list[Row]) -> TableRows:
        return cls(table.qualified, table.display, table.column_names, table.column_types, table.column_casts,
                   table.row_key(), tuple(rows))  # fmt: skip

    def null_only_columns(self) -> list[str]:
        """Columns that are NULL in every row (every column of an empty table)."""
        return [c for i, c in enumerate(self.columns) if all(row[i] is None for row in self.rows)]

    def with_rows(self, rows: list[Row]) -> TableRows:
        return TableRows(
            self.table, self.display, self.columns, self.types, self.casts, self.key, tuple(rows)
        )


@dataclass(frozen=True)
class LostData:
    table: str
    stage: str
    columns: tuple[str, ...]  # columns whose values changed in rows that are still there
    changed_rows: int
    missing_rows: int | None  # None when rows could not be told apart (no key)
    compared_rows: int

    @property
    def rows(self) -> int:
        return self.changed_rows + (self.missing_rows or 0)

    @property
    def message(self) -> str:
        if self.missing_rows is None:
            lost_in = f"; values lost in {', '.join(self.columns)}" if self.columns else ""
            return (f"{self.table} ({_STAGE_TEXT[self.stage]}): {self.changed_rows} of {self.compared_rows} "
                    f"rows not found unchanged (no key to match rows by){lost_in}")  # fmt: skip
        parts = []
        if self.missing_rows:
            parts.append(f"{self.missing_rows} of {self.compared_rows} rows missing")
        if self.columns:
            names = ", ".join(self.columns)
            counted = f"{self.changed_rows} of {self.compared_rows} rows"
            parts.append(f"values of {names} lost or changed in {counted}")
        return f"{self.table} ({_STAGE_TEXT[self.stage]}): {'; '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "stage": self.stage, "columns": list(self.columns), "rows": self.rows,
                "changed_rows": self.changed_rows, "missing_rows": self.missing_rows,
                "compared_rows": self.compared_rows, "message": self.message}  # fmt: skip


def read_rows(conn: psycopg.Connection, table: TableInfo) -> TableRows:
    columns: sql.Composable = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.column_names
    )
    query = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(*table.qualified))
    return TableRows.of(table, list(conn.execute(query).fetchall()))


def align_types(conn: psycopg.Connection, before: TableRows, after: TableRows) -> tuple[TableRows, TableRows]:
    """Both sides with each column whose type differs between them in one canonical text form.

    A revision that changes a column's type and a downgrade that changes it back turn ``12`` into
    ``12.000``: the same value, other text. Such columns are read through the ``after`` column's type
    without its typmod (so nothing is truncated or rounded on the way, which would hide a loss), with
    numeric trailing zeros trimmed. A value that does not convert stays as it was, and so differs.
    """
    changed = [
        (name, after.casts[after.columns.index(name)])
        for i, name in enumerate(before.columns)
        if name in after.columns and before.types[i] != after.types[after.columns.index(name)]
    ]
    if not changed:
        return before, after
    old = [list(values) for values in zip(*before.rows, strict=True)] or [[] for _ in before.columns]
    new = [list(values) for values in zip(*after.rows, strict=True)] or [[] for _ in after.columns]
    for name, cast in changed:
        i, j = before.columns.index(name), after.columns.index(name)
        old[i] = _canonical(conn, old[i], cast)
        new[j] = _canonical(conn, new[j], cast)
    return before.with_rows(list(zip(*old, strict=True))), after.with_rows(list(zip(*new, strict=True)))


def _canonical(conn: psycopg.Connection, values: list[str | None], cast: str) -> list[str | None]:
    if not values:
        return values
    for expression in ("pg_catalog.trim_scale(v::{})::text", "v::{}::text"):
        query = sql.SQL("SELECT " + expression + " FROM unnest({}::text[]) WITH ORDINALITY AS u(v, o) "
                        "ORDER BY o").format(sql.SQL(cast), sql.Literal(values))  # fmt: skip
        try:
            with conn.transaction():
                return [r[0] for r in conn.execute(query).fetchall()]
        except psycopg.Error:
            continue  # not numeric (no trim_scale for it), or values that do not convert
    return values


def compare_rows(before: TableRows, after: TableRows, stage: str) -> LostData | None:
    """What of ``before`` (in the columns both sides have) is not in ``after``; None if nothing."""
    common = tuple(c for c in before.columns if c in after.columns)
    if not common or not before.rows:
        return None
    b_index = [before.columns.index(c) for c in common]
    a_index = [after.columns.index(c) for c in common]
    old = [tuple(r[i] for i in b_index) for r in before.rows]
    new = [tuple(r[i] for i in a_index) for r in after.rows]
    key = before.key if before.key and set(before.key) <= set(common) else None
    lost: tuple[tuple[str, ...], int, int | None]
    if key is not None:
        lost = _compare_by_key(old, new, [common.index(k) for k in key], common)
    else:
        lost = _compare_as_multisets(old, new, common)
    columns, changed, missing = lost
    if not columns and not changed and not missing:
        return None
    return LostData(before.display, stage, columns, changed, missing, len(old))


def _compare_by_key(old: list[Row], new: list[Row], key: list[int],
                    common: tuple[str, ...]) -> tuple[tuple[str, ...], int, int]:  # fmt: skip
    by_key = {tuple(r[i] for i in key): r for r in new}
    missing = changed = 0
    lost_columns: set[int] = set()
    for row in old:
        match = by_key.get(tuple(row[i] for i in key))
        if match is None:
            missing += 1
            continue
        differing = [i for i, (x, y) in enumerate(zip(row, match, strict=True)) if x != y]
        if differing:
            changed += 1
            lost_columns.update(differing)
    return tuple(common[i] for i in sorted(lost_columns)), changed, missing


def _compare_as_multisets(old: list[Row], new: list[Row],
                          common: tuple[str, ...]) -> tuple[tuple[str, ...], int, None]:  # fmt: skip
    unmatched = sum((Counter(old) - Counter(new)).values())
    lost_columns = tuple(
        name for i, name in enumerate(common)
        if Counter(r[i] for r in old) - Counter(r[i] for r in new)
    )  # fmt: skip
    return lost_columns, unmatched, None
