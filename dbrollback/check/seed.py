"""Fill the user tables of a throwaway database with generated rows.

Tables are filled parents first; a foreign key takes its values from rows that exist in the parent
(spread over them by row number, so one-to-one keys stay distinct). Rows go in 50 at a time; when a
batch is refused (a CHECK the generator did not satisfy, a unique clash with rows a migration
inserted, a trigger) its rows are retried one by one with fresh values, then with values taken from
the CHECK constraints, then with defaults and NULLs; rows still refused are dropped and counted.
A table that cannot get any row is reported, never fatal.

A tenth of the values of nullable columns are NULL, unless the rows are asked for ``without_nulls``
(what `check` retries an upgrade with when it failed on the generated rows — typically a SET NOT
NULL that real data, filled by an earlier revision, would pass): then only a column with no value
generator, or a nullable foreign key whose parent is empty, is left NULL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbrollback.check.tables import ColumnInfo, QualifiedName, TableInfo, ValueType, quote_name
from dbrollback.check.values import Unsupported, generate

__all__ = ["SeedOutcome", "SeedProblem", "Seeder", "parents_first"]

_BATCH = 50
_ATTEMPTS = 3  # plain values; values from CHECK literals; defaults and NULLs where allowed
_NULL_SHARE = 0.1  # of the rows leave a nullable column NULL, so NULLs take part in the round trip
_PARENT_KEYS_LIMIT = 5000
_NULL = sql.SQL("NULL")
_DEFAULT = sql.SQL("DEFAULT")

Row = tuple[str | None, ...]


class _Unseedable(Exception):
    """No row of this table can be generated (reason in the message)."""


@dataclass(frozen=True)
class SeedProblem:
    table: str
    kind: str  # "not_seeded" | "rows_refused"
    message: str


@dataclass
class SeedOutcome:
    inserted: dict[QualifiedName, list[Row]] = field(default_factory=dict)  # as text, all columns
    problems: list[SeedProblem] = field(default_factory=list)


def parents_first(tables: list[TableInfo]) -> list[TableInfo]:
    """Tables ordered so that a foreign key's parent comes before its children (cycles: name order)."""
    by_name = {t.qualified: t for t in tables}
    order: list[TableInfo] = []
    done: set[QualifiedName] = set()
    visiting: set[QualifiedName] = set()

    def visit(table: TableInfo) -> None:
        if table.qualified in done or table.qualified in visiting:
            return
        visiting.add(table.qualified)
        for fk in table.foreign_keys:
            if fk.parent in by_name and fk.parent != table.qualified:
                visit(by_name[fk.parent])
        visiting.discard(table.qualified)
        done.add(table.qualified)
        order.append(table)

    for table in tables:
        visit(table)
    return order


def _can_generate(column: ColumnInfo) -> bool:
    if column.filled_by_server:
        return False
    try:
        generate(column.type, 1, random.Random(0))
    except Unsupported:
        return False
    return True


def _literal(text: str | None, vtype: ValueType) -> sql.Composable:
    if text is None:
        return _NULL
    return sql.SQL("{}::{}").format(sql.Literal(text), sql.SQL(vtype.sql_name))


def _error_text(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    if primary:
        return primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Seeder:
    """Generates rows deterministically from ``seed``; row numbers continue across calls, so values
    generated later never repeat earlier ones (unique keys stay satisfied)."""

    def __init__(self, seed: int = 0, rows: int = 300, extra_rows: int | None = None) -> None:
        self.seed = seed
        self.rows = rows
        self.extra_rows = max(1, rows // 5) if extra_rows is None else extra_rows
        self._next_row: dict[QualifiedName, int] = {}
        self._unusable: set[str] = set()  # of the table being filled
        self._null_share = _NULL_SHARE
        # Columns that got no value in a whole round of generated rows (refused by a CHECK, say).
        self._never_filled: set[tuple[QualifiedName, str, int]] = set()

    def fill_empty(self, conn: psycopg.Connection, tables: list[TableInfo], *,
                   without_nulls: bool = False) -> SeedOutcome:  # fmt: skip
        """Give every empty table ``rows`` rows; tables with rows are left alone."""
        self._null_share = 0.0 if without_nulls else _NULL_SHARE
        try:
            return self._seed(conn, tables, extra=0)
        finally:
            self._null_share = _NULL_SHARE

    def add_rows(self, conn: psycopg.Connection, tables: list[TableInfo]) -> SeedOutcome:
        """Add ``extra_rows`` rows to every table (``rows`` to empty ones)."""
        return self._seed(conn, tables, extra=self.extra_rows)

    def top_up(self, conn: psycopg.Connection, tables: list[TableInfo],
               null_only: dict[QualifiedName, list[str]]) -> SeedOutcome:  # fmt: skip
        """Add ``extra_rows`` rows to each table in which a column values can be generated for is
        NULL in every row (a column an earlier revision added to rows that were there), so that its
        round trip is checked on values rather than on NULLs. Not for a column a round of generated
        rows already left NULL everywhere: more of them would not fill it either."""
        wanted = []
        for table in tables:
            columns = [table.column(c) for c in null_only.get(table.qualified, ())]
            if any(_can_generate(c) and (table.qualified, c.name, c.attnum) not in self._never_filled
                   for c in columns):  # fmt: skip
                wanted.append(table)
        return self._seed(conn, wanted, extra=self.extra_rows)

    # -- internals --------------------------------------------------------------------------------
    def _seed(self, conn: psycopg.Connection, tables: list[TableInfo], extra: int) -> SeedOutcome:
        outcome = SeedOutcome()
        for table in parents_first(tables):
            has_rows = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(*table.qualified))
            ).fetchone()
            wanted = extra if has_rows and has_rows[0] else self.rows
            if wanted:
                rows, problem = self._fill(conn, table, wanted)
                outcome.inserted[table.qualified] = rows
                if problem:
                    kind = "rows_refused" if rows else "not_seeded"
                    outcome.problems.append(SeedProblem(table.display, kind, f"{table.display}: {problem}"))
        return outcome

    def _fill(self, conn: psycopg.Connection, table: TableInfo, wanted: int) -> tuple[list[Row], str | None]:
        rows, problem = self._fill_rows(conn, table, wanted)
        for i, column in enumerate(table.columns):
            if rows and all(row[i] is None for row in rows):
                self._never_filled.add((table.qualified, column.name, column.attnum))
        return rows, problem

    def _fill_rows(self, conn: psycopg.Connection, table: TableInfo,
                   wanted: int) -> tuple[list[Row], str | None]:  # fmt: skip
        columns = [c for c in table.columns if not c.filled_by_server]
        self._unusable = self._unusable_generators(conn, table, columns)
        parent_keys = self._parent_keys(conn, table, None)
        for fk in table.foreign_keys:
            required = any(table.column(c).not_null for c in fk.columns)
            if required and not parent_keys[fk.name]:
                parent = ".".join(quote_name(p) for p in fk.parent)
                problem = f"its foreign key {quote_name(fk.name)} needs rows in {parent}, which has none"
                return [], f"not seeded: {problem}"
        inserted: list[Row] = []
        refused, first_error = 0, ""
        try:
            for start in range(0, wanted, _BATCH):
                if start and any(fk.parent == table.qualified for fk in table.foreign_keys):
                    parent_keys = self._parent_keys(conn, table, parent_keys)  # rows of the last batch
                batch = [
                    self._row(table, columns, parent_keys, 0) for _ in range(min(_BATCH, wanted - start))
                ]
                try:
                    with conn.transaction():
                        inserted.extend(self._insert(conn, table, columns, batch))
                    continue
                except psycopg.Error:
                    pass
                for row in batch:
                    for attempt in range(_ATTEMPTS):
                        try:
                            with conn.transaction():
                                inserted.extend(self._insert(conn, table, columns, [row]))
                            break
                        except psycopg.Error as exc:
                            first_error = first_error or _error_text(exc)
                            if attempt + 1 < _ATTEMPTS:
                                row = self._row(table, columns, parent_keys, attempt + 1)
                    else:
                        refused += 1
        except _Unseedable as exc:
            return inserted, f"not seeded: {exc}"
        if not inserted:
            return [], f"not seeded: every generated row was refused ({first_error})"
        if refused:
            return inserted, f"{refused} of {wanted} generated rows were refused ({first_error})"
        return inserted, None

    def _insert(self, conn: psycopg.Connection, table: TableInfo, columns: list[ColumnInfo],
                rows: list[list[sql.Composable]]) -> list[Row]:  # fmt: skip
        target = sql.Identifier(*table.qualified)
        returning = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.columns
        )
        if not columns:
            out: list[Row] = []
            for _ in rows:
                query = sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING {}").format(target, returning)
                out.extend(conn.execute(query).fetchall())
            return out
        values = sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(row)) for row in rows)
        query = sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING {}").format(
            target, sql.SQL(", ").join(sql.Identifier(c.name) for c in columns), values, returning
        )
        return list(conn.execute(query).fetchall())

    def _parent_keys(self, conn: psycopg.Connection, table: TableInfo,
                     known: dict[str, list[Row]] | None) -> dict[str, list[Row]]:  # fmt: skip
        keys: dict[str, list[Row]] = {}
        for fk in table.foreign_keys:
            if known is not None and fk.parent != table.qualified:
                keys[fk.name] = known[fk.name]
                continue
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                  (".".join(quote_name(p) for p in fk.parent),)).fetchone()  # fmt: skip
            if not exists or not exists[0]:
                keys[fk.name] = []
                continue
            columns = [sql.Identifier("p", c) for c in fk.parent_columns]
            conditions = [sql.SQL("{} IS NOT NULL").format(c) for c in columns]
            if set(fk.columns) in [set(key) for key in table.unique_keys]:
                # One-to-one: parents that already have their child cannot take another.
                conditions.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS c WHERE {})").format(
                    sql.Identifier(*table.qualified),
                    sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("c", own), parent)
                                          for own, parent in zip(fk.columns, columns, strict=True)),
                ))  # fmt: skip
            query = sql.SQL("SELECT DISTINCT {} FROM {} AS p WHERE {} ORDER BY {} LIMIT {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(c) for c in columns),
                sql.Identifier(*fk.parent),
                sql.SQL(" AND ").join(conditions),
                sql.SQL(", ").join(sql.SQL(str(i)) for i in range(1, len(columns) + 1)),
                sql.Literal(_PARENT_KEYS_LIMIT),
            )
            keys[fk.name] = list(conn.execute(query).fetchall())
        return keys

    def _unusable_generators(self, conn: psycopg.Connection, table: TableInfo,
                             columns: list[ColumnInfo]) -> set[str]:  # fmt: skip
        """Columns whose generated values the server does not accept at all (xml on a server built
        without libxml, a domain whose CHECK they miss): those get NULL or their default instead,
        rather than spoiling every row."""
        foreign = {name for fk in table.foreign_keys for name in fk.columns}
        unusable: set[str] = set()
        for column in columns:
            if column.name in foreign:
                continue
            n = self._next_row.get(table.qualified, 1)
            try:
                sample = generate(column.type, n, self._rng(table, column.name, n, 0))
            except Unsupported:
                continue  # handled per value
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SELECT {}").format(_literal(sample, column.type)))
            except psycopg.Error:
                unusable.add(column.name)
        return unusable

    def _take(self, table: TableInfo) -> int:
        n = self._next_row.get(table.qualified, 1)
        self._next_row[table.qualified] = n + 1
        return n

    def _rng(self, table: TableInfo, column: str, n: int, attempt: int) -> random.Random:
        # A str seed is hashed with SHA-512: the same on every run and platform.
        return random.Random(f"{self.seed}\x00{table.schema}\x00{table.name}\x00{column}\x00{n}\x00{attempt}")

    def _row(self, table: TableInfo, columns: list[ColumnInfo], parent_keys: dict[str, list[Row]],
             attempt: int) -> list[sql.Composable]:  # fmt: skip
        n = self._take(table)
        values: dict[str, sql.Composable] = {}
        for fk in table.foreign_keys:
            options = parent_keys.get(fk.name) or []
            nullable = not any(table.column(c).not_null for c in fk.columns)
            leave_null = nullable and self._rng(table, fk.name, n, attempt).random() < self._null_share
            if not options or leave_null:
                for name in fk.columns:
                    values.setdefault(name, _NULL)
                continue
            picked = options[(n + attempt * 7919) % len(options)]
            for name, text in zip(fk.columns, picked, strict=True):
                values[name] = _literal(text, table.column(name).type)
        for column in columns:
            if column.name not in values:
                values[column.name] = self._value(table, column, n, attempt)
        return [values[c.name] for c in columns]

    def _value(self, table: TableInfo, column: ColumnInfo, n: int, attempt: int) -> sql.Composable:
        rng = self._rng(table, column.name, n, attempt)
        last = attempt == _ATTEMPTS - 1
        if last and column.default is not None:
            return _DEFAULT
        if not column.not_null and (last or rng.random() < self._null_share):
            return _NULL
        hints = table.check_hints.get(column.name, ()) if attempt == 1 else None
        try:
            if column.name in self._unusable and not (hints is not None and (hints or column.type.hints)):
                raise Unsupported(column.type.sql_name)
            return _literal(generate(column.type, n, rng, hints), column.type)
        except Unsupported:
            if column.default is not None:
                return _DEFAULT
            if not column.not_null:
                return _NULL
            raise _Unseedable(
                f"no generator for type {column.type.sql_name} of NOT NULL column {quote_name(column.name)}"
            ) from None
