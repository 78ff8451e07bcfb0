"""Compare live tables with a snapshot, and find the rows that differ (the library side of `verify`).

Per table, in one transaction (REPEATABLE READ when we start it, so every number describes one
state of the live table even while others commit):

1. **Fast path**: row count and order-independent checksum of the live table, compared with the
   manifest's. Equal: done, no data is read back from the store.
2. **Otherwise** the snapshot's rows are COPYed into a temporary table and the two are compared by
   bisection, as data-diff tools do: key ranges are cut into up to 16 sub-ranges (boundaries sampled
   from both sides' keys), the range checksums of both sides are compared, and only differing
   ranges are cut again, until a range holds at most ``LEAF_ROWS`` rows per side; such a range is
   then compared row by row with a FULL OUTER JOIN on the primary key. Reading stops as soon as
   ``max_examples`` differences and one more (to know the list is truncated) have been found; the
   total number of differing rows is not counted.
   Tables without a primary key are compared as multisets (``EXCEPT ALL`` both ways).

Values are compared the way the checksum hashes them: with the type's own equality when the type
has a hash function, through the text form otherwise (json, point, ...). Generated columns are part
of the manifest's checksum but not of the captured data, so the row-by-row comparison covers the
stored columns only.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Loader
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader

from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.errors import SnapshotCorrupt, SnapshotError
from dbrollback.snapshot.capture import primary_key_columns, table_columns
from dbrollback.snapshot.checksum import (
    has_extended_hash,
    pin_text_settings,
    row_hash_expression,
    table_checksum,
)
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import ColumnInfo, SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore

LEAF_ROWS = 256  # a range this small (on both sides) is compared row by row
FANOUT = 16  # sub-ranges per bisection step
NO_PK_NOTE = "no primary key: compared as multisets (a changed row shows as one missing and one extra row)"

DifferenceKind = Literal["missing", "extra", "changed"]
Progress = Callable[[int], None]
_Key = tuple[str, ...]  # a key value as the text of each key column (exact with pinned settings)


def json_value(value: Any) -> Any:
    """`value` as something json.dumps accepts without loss of meaning (str() for the rest)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()  # PostgreSQL's own bytea hex form
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)  # Decimal (also NaN), datetimes, UUID, intervals, ranges ...


@dataclass
class RowDifference:
    """One differing row. missing: in the snapshot, not live; extra: live, not in the snapshot;
    changed: both, with the names of the columns whose values differ.

    `key` holds the primary key columns, or every compared column for a table without one.
    """

    kind: DifferenceKind
    key: dict[str, Any]
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": {name: json_value(v) for name, v in self.key.items()},
            "columns": list(self.columns),
        }


@dataclass
class TableVerification:
    """The comparison of one live table (schema.table) with its snapshot copy.

    `live_checksum` is None when it cannot be compared with the snapshot's (different columns).
    """

    schema: str
    table: str
    snapshot_rows: int
    live_rows: int | None
    snapshot_checksum: str
    live_checksum: str | None
    ok: bool
    differences: list[RowDifference] = field(default_factory=list)
    differences_truncated: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "snapshot_rows": self.snapshot_rows,
            "live_rows": self.live_rows,
            "snapshot_checksum": self.snapshot_checksum,
            "live_checksum": self.live_checksum,
            "ok": self.ok,
            "differences": [d.to_dict() for d in self.differences],
            "differences_truncated": self.differences_truncated,
            "note": self.note,
        }


# -- snapshot level --------------------------------------------------------------------------------


def verify_snapshot(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    *,
    tables: list[tuple[str, str]] | None = None,
    max_examples: int = 10,
    progress: Progress | None = None,
) -> list[TableVerification]:
    """Verify the snapshot's tables (all, or `tables`) against the live database.

    Every file of the snapshot is re-read and checked against its sha256 first: a damaged snapshot
    raises SnapshotCorrupt (naming the file, expected and actual hash) before any query is sent.
    """
    selected = _select_tables(manifest, tables)
    problems = store.verify(manifest.id)
    if problems:
        raise SnapshotCorrupt(
            f"Snapshot {manifest.id} is damaged: " + "; ".join(problems), id=manifest.id, problems=problems
        )
    return [
        verify_table(conn, store, manifest, table, max_examples=max_examples, progress=progress)
        for table in selected
    ]


def _select_tables(manifest: SnapshotManifest, tables: list[tuple[str, str]] | None) -> list[TableManifest]:
    if tables is None:
        return list(manifest.tables)
    by_name = {(t.schema_name, t.table_name): t for t in manifest.tables}
    unknown = [f"{s}.{t}" for s, t in tables if (s, t) not in by_name]
    if unknown:
        raise SnapshotError(
            f"Snapshot {manifest.id} has no table {', '.join(unknown)}; it has: "
            + ", ".join(f"{s}.{t}" for s, t in by_name),
            id=manifest.id,
            unknown=unknown,
            tables=[f"{s}.{t}" for s, t in by_name],
        )
    return [by_name[name] for name in dict.fromkeys(tables)]


# -- table level -----------------------------------------------------------------------------------


class _Progress:
    """Reports snapshot rows as they are settled; per table the calls add up to its row count."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, rows: int) -> None:
        rows = min(rows, self.total - self.done)
        if rows > 0 and self.callback is not None:
            self.done += rows
            self.callback(rows)

    def finish(self) -> None:
        self.advance(self.total - self.done)


def verify_table(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    table: TableManifest,
    *,
    live_schema: str | None = None,
    live_table: str | None = None,
    max_examples: int = 10,
    progress: Progress | None = None,
) -> TableVerification:
    """Compare the live table (default: the one the snapshot was taken of) with the snapshot.

    The snapshot's files are read only when the fast path finds a difference; a damaged file then
    raises SnapshotCorrupt. Nothing is left behind: the temporary copy is dropped, or rolled back
    with the transaction on error. `progress(rows)` is called with increments of snapshot rows as
    they are settled (all at once on the fast path); per table they add up to its row count.
    """
    if max_examples < 0:
        raise ValueError("max_examples must be >= 0")
    schema = table.schema_name if live_schema is None else live_schema
    name = table.table_name if live_table is None else live_table
    reporter = _Progress(progress, table.row_count)
    starts_transaction = conn.info.transaction_status == pq.TransactionStatus.IDLE
    with conn.transaction():
        if starts_transaction and conn.isolation_level in (
            None, psycopg.IsolationLevel.READ_UNCOMMITTED, psycopg.IsolationLevel.READ_COMMITTED
        ):  # fmt: skip
            # One MVCC snapshot for the fast path, the copy and every range of the bisection.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        pin_text_settings(conn)  # for the text-hashed columns and for key boundaries sent as text
        # Compare every row or fail: never a row-level-security-filtered subset that looks "changed".
        conn.execute("SET LOCAL row_security = off")
        try:
            result = _verify(conn, store, manifest, table, schema, name, max_examples, reporter)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SnapshotError(
                f"Cannot verify {schema}.{name}: {exc.diag.message_primary or exc}. The role must be able "
                "to read every row (table owner, BYPASSRLS or superuser)."
            ) from None
    reporter.finish()
    return result


@dataclass
class _Layout:
    """How the live table's columns differ from the snapshot's."""

    missing: list[str]  # in the snapshot, not live
    extra: list[str]  # live, not in the snapshot
    retyped: list[tuple[str, str, str]]  # (name, snapshot type, live type)
    generation: list[str]  # generated on one side only
    compared: list[str]  # stored snapshot columns present live with the same type

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.retyped or self.generation)

    def describe(self, quote: Callable[[str], str]) -> str:
        parts = []
        if self.missing:
            parts.append("missing in the live table: " + ", ".join(map(quote, self.missing)))
        if self.extra:
            parts.append("not in the snapshot: " + ", ".join(map(quote, self.extra)))
        if self.retyped:
            parts.append(
                "type changed: " + ", ".join(f"{quote(n)} ({old} -> {new})" for n, old, new in self.retyped)
            )
        if self.generation:
            parts.append("generated on one side only: " + ", ".join(map(quote, self.generation)))
        return "columns differ from the snapshot: " + "; ".join(parts)


def _layout(table: TableManifest, live: dict[str, ColumnInfo]) -> _Layout:
    snap = {c.name: c for c in table.columns}
    # format_type() text names a type as the current search_path sees it; capture used the same
    # function, so equal text means the same type as long as search_path is the same.
    retyped = [(n, c.type, live[n].type) for n, c in snap.items() if n in live and live[n].type != c.type]
    changed = {n for n, _, _ in retyped}
    return _Layout(
        missing=[n for n in snap if n not in live],
        extra=[n for n in live if n not in snap],
        retyped=retyped,
        generation=[n for n, c in snap.items() if n in live and live[n].generated != c.generated],
        compared=[n for n in table.copy_columns if n in live and n not in changed],
    )


def _relation(conn: psycopg.Connection, schema: str, name: str) -> tuple[int, str] | None:
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _verify(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    table: TableManifest,
    schema: str,
    name: str,
    max_examples: int,
    reporter: _Progress,
) -> TableVerification:
    notes: list[str] = []
    if (schema, name) != (table.schema_name, table.table_name):
        notes.append(f"compared with snapshot table {table.schema_name}.{table.table_name}")

    def result(ok: bool, live_rows: int | None, live_checksum: str | None, **more: Any) -> TableVerification:
        return TableVerification(
            schema=schema, table=name, snapshot_rows=table.row_count, live_rows=live_rows,
            snapshot_checksum=table.checksum, live_checksum=live_checksum, ok=ok,
            note="; ".join(notes), **more,
        )  # fmt: skip

    relation = _relation(conn, schema, name)
    if relation is None:
        notes.append(f"the live table {schema}.{name} does not exist")
        return result(False, None, None)
    oid, relkind = relation
    if relkind not in ("r", "p"):
        notes.append(f"{schema}.{name} is not a table (relkind {relkind!r})")
        return result(False, None, None)

    live_columns = {c.name: c for c in table_columns(conn, oid)}
    layout = _layout(table, live_columns)
    live_checksum: str | None = None
    if layout.identical:
        # The manifest's checksum covers ALL columns, generated ones included, in the snapshot's
        # column order: hashing the same columns in the same order gives a comparable number.
        live_rows, live_checksum = table_checksum(conn, schema, name, columns=[c.name for c in table.columns])
        if (live_rows, live_checksum) == (table.row_count, table.checksum):
            return result(True, live_rows, live_checksum)
    else:
        notes.append(layout.describe(lambda n: sql.Identifier(n).as_string(conn)))
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        assert count is not None
        live_rows = int(count[0])
    if not layout.compared:
        notes.append("no stored column in common to compare")
        return result(False, live_rows, live_checksum)

    compared = layout.compared
    live_pk = primary_key_columns(conn, oid)
    key = table.primary_key
    if not key:
        notes.append(NO_PK_NOTE)
    elif not set(key) <= set(compared) or set(live_pk) != set(key):
        notes.append(
            "the primary key differs from the snapshot's: compared as multisets "
            "(a changed row shows as one missing and one extra row)"
        )
        key = []

    copy = _load_snapshot_copy(conn, store, manifest, table, oid, compared, key)
    live_side = _Side(schema, name, row_hash_expression(conn, schema, name, "t", compared))
    snap_side = _Side(
        copy.schema, copy.table, row_hash_expression(conn, copy.schema, copy.table, "t", compared)
    )
    hashable = {t: has_extended_hash(conn, t) for t in {_type_of(table, n) for n in compared}}
    by_text = {n for n in compared if not hashable[_type_of(table, n)]}
    if key:
        bisector = _Bisector(
            conn, live_side, snap_side, key, [_type_of(table, k) for k in key], compared, by_text, reporter
        )
        found = bisector.run(live_rows, copy.rows, max_examples + 1)
    else:
        found = _multiset_differences(conn, live_side, snap_side, compared, by_text, max_examples + 1)
    # On success the copy goes now; on error the enclosing transaction's rollback removes it.
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(copy.schema, copy.table)))

    differences, truncated = found[:max_examples], len(found) > max_examples
    more = {"differences": differences, "differences_truncated": truncated}
    if not layout.identical:
        if not found:
            notes.append(f"the {len(compared)} compared columns match")
        return result(False, live_rows, live_checksum, **more)
    if found:
        return result(False, live_rows, live_checksum, **more)
    generated = [c.name for c in table.columns if c.generated]
    if generated:
        notes.append(
            "every row matches in the stored columns, so generated column values differ (generation "
            "expression changed?): " + ", ".join(sql.Identifier(n).as_string(conn) for n in generated)
        )
        return result(False, live_rows, live_checksum)
    # Both sides were just hashed by this server and matched everywhere; the manifest's number
    # came from the server that took the snapshot (hash functions can differ between versions).
    notes.append("the checksum differs from the manifest's, but every row matches the snapshot's data")
    return result(True, live_rows, live_checksum)


def _type_of(table: TableManifest, column: str) -> str:
    return next(c.type for c in table.columns if c.name == column)


# -- the snapshot copy -----------------------------------------------------------------------------


@dataclass
class _Copy:
    schema: str  # the session's real temp schema (pg_temp_N): the catalog lookups need its name
    table: str
    rows: int


_COLLATIONS_SQL = """
SELECT a.attname, cn.nspname, co.collname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""


def _load_snapshot_copy(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    table: TableManifest,
    live_oid: int,
    compared: list[str],
    key: list[str],
) -> _Copy:
    collations = {n: (nsp, coll) for n, nsp, coll in conn.execute(_COLLATIONS_SQL, (live_oid,)).fetchall()}
    columns: list[sql.Composable] = []
    for column in table.columns:
        if column.generated:
            continue
        if column.name not in compared:
            # Not compared (dropped or retyped live, its type may be gone): binary COPY data of
            # any type loads into bytea unchanged.
            columns.append(sql.SQL("{} bytea").format(sql.Identifier(column.name)))
            continue
        # The live column's collation: both sides must sort keys alike for ranges to match.
        collate = (
            sql.SQL(" COLLATE {}").format(sql.Identifier(*collations[column.name]))
            if column.name in collations
            else sql.SQL("")
        )
        # format_type() text is a valid, quoted type name.
        columns.append(sql.SQL("{} {}{}").format(sql.Identifier(column.name), sql.SQL(column.type), collate))
    name = f"{OBJECT_PREFIX}verify_{secrets.token_hex(4)}"
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(columns))
    )
    row = conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = pg_my_temp_schema()"
    ).fetchone()
    assert row is not None
    temp_schema = str(row[0])
    try:
        rows = load_table_copy(conn, store, manifest.id, table, temp_schema, name)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        # The data no longer fits its type: a domain's CHECK tightened, an enum label renamed ...
        raise SnapshotError(
            f"Cannot load snapshot {manifest.id} table {table.schema_name}.{table.table_name} "
            f"for comparison: {exc.diag.message_primary or exc}",
            id=manifest.id,
        ) from exc
    if rows != table.row_count:
        files = ", ".join(f.name for f in table.files)
        raise SnapshotCorrupt(
            f"{files}: holds {rows} rows, the manifest says {table.row_count}", id=manifest.id, file=files
        )
    target = sql.Identifier(temp_schema, name)
    if key:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                target, sql.SQL(", ").join(sql.Identifier(k) for k in key)
            )
        )
    conn.execute(sql.SQL("ANALYZE {}").format(target))
    return _Copy(temp_schema, name, rows)


# -- comparison ------------------------------------------------------------------------------------


@dataclass
class _Side:
    schema: str
    table: str
    row_hash: sql.Composable  # over the compared columns, alias t; built once per side

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def _lenient(base: type[Loader]) -> type[Loader]:
    """A loader that returns the text when Python cannot hold the value ('infinity' dates)."""

    class Lenient(base):  # type: ignore[valid-type,misc]
        def load(self, data: Any) -> Any:
            try:
                return super().load(data)
            except psycopg.DataError:
                return bytes(data).decode()

    return Lenient


_LENIENT_LOADERS = (
    ("date", _lenient(DateLoader)),
    ("timestamp", _lenient(TimestampLoader)),
    ("timestamptz", _lenient(TimestamptzLoader)),
)

# Marks where a bound parameter goes; PostgreSQL allows no NUL in names, so it cannot clash.
_PARAM = sql.SQL("\x00")


def _fetch(conn: psycopg.Connection, query: sql.Composable, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run a query whose parameters are marked with _PARAM.

    psycopg reads a % inside a quoted identifier as a placeholder (psycopg/psycopg2#825), so the
    query is rendered with every % doubled and only our markers turned into %s.
    """
    text = query.as_string(conn).replace("%", "%%").replace("\x00", "%s")
    with conn.cursor() as cur:
        for type_name, loader in _LENIENT_LOADERS:
            cur.adapters.register_loader(type_name, loader)
        return cur.execute(sql.SQL(text), params).fetchall()


def _comparison(a: str, b: str, column: str, by_text: set[str]) -> sql.Composable:
    # Types without a hash function (json, point, ...) may lack equality too; the checksum hashes
    # their text form, so compare that.
    cast = sql.SQL("::text") if column in by_text else sql.SQL("")
    return sql.SQL("{}{} IS DISTINCT FROM {}{}").format(
        sql.Identifier(a, column), cast, sql.Identifier(b, column), cast
    )


class _Bisector:
    """Finds differing rows between two tables with the same key by bisecting key ranges.

    A range is (lo, hi): lo <= key < hi, None for unbounded; bounds travel as text and are cast
    to the key types on the server, so every key type round-trips exactly.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        live: _Side,
        snap: _Side,
        key: list[str],
        key_types: list[str],
        columns: list[str],
        by_text: set[str],
        reporter: _Progress,
    ) -> None:
        self.conn, self.live, self.snap, self.key = conn, live, snap, key
        self.key_types, self.columns, self.by_text, self.reporter = key_types, columns, by_text, reporter

    def _where(self, lo: _Key | None, hi: _Key | None) -> tuple[sql.Composable | None, list[str]]:
        keys = sql.SQL(", ").join(sql.Identifier("t", k) for k in self.key)
        values = sql.SQL(", ").join(sql.SQL("{}::{}").format(_PARAM, sql.SQL(t)) for t in self.key_types)
        parts: list[sql.Composable] = []
        params: list[str] = []
        for bound, op in ((lo, ">="), (hi, "<")):
            if bound is not None:
                parts.append(sql.SQL("({}) {} ({})").format(keys, sql.SQL(op), values))
                params.extend(bound)
        return (sql.SQL(" AND ").join(parts) if parts else None), params

    @staticmethod
    def _filtered(where: sql.Composable | None) -> sql.Composable:
        return sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL("")

    def _checksum(self, side: _Side, where: sql.Composable | None, params: list[str]) -> tuple[int, int]:
        # The same query as checksum.checksum_query, with the row hash built once per side.
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {} AS t{}").format(
            side.row_hash, side.ident, self._filtered(where)
        )
        ((count, total),) = _fetch(self.conn, query, params)
        return int(count), int(total)

    def _split_points(self, lo: _Key | None, hi: _Key | None, rows: int) -> list[_Key]:
        """Up to FANOUT-1 keys cutting the range into parts of similar size on both sides together."""
        where, params = self._where(lo, hi)
        aliases = [sql.Identifier(f"k{i}") for i in range(len(self.key))]
        keys = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.Identifier("t", k), a)
            for k, a in zip(self.key, aliases, strict=True)
        )
        branch = sql.SQL("SELECT {} FROM {} AS t{}")
        query = sql.SQL(
            "SELECT {texts} FROM (SELECT {aliases}, row_number() OVER (ORDER BY {aliases}) AS rn "
            "FROM ({live} UNION ALL {snap}) AS u) AS s WHERE rn % {step} = 0 ORDER BY rn"
        ).format(
            texts=sql.SQL(", ").join(sql.SQL("{}::text").format(a) for a in aliases),
            aliases=sql.SQL(", ").join(aliases),
            live=branch.format(keys, self.live.ident, self._filtered(where)),
            snap=branch.format(keys, self.snap.ident, self._filtered(where)),
            step=_PARAM,
        )
        step = max(1, -(-rows // FANOUT))
        points: list[_Key] = []
        for row in _fetch(self.conn, query, [*params, *params, step]):
            point = tuple(row)
            if point != lo and point != hi and (not points or points[-1] != point):
                points.append(point)
        return points

    def _diff_rows(self, lo: _Key | None, hi: _Key | None, limit: int) -> list[RowDifference]:
        where, params = self._where(lo, hi)
        columns = sql.SQL(", ").join(sql.Identifier("t", c) for c in self.columns)
        branch = sql.SQL("SELECT {} FROM {} AS t{}")
        others = [c for c in self.columns if c not in self.key]
        changed = [_comparison("l", "s", c, self.by_text) for c in others]
        first = self.key[0]  # key columns are NOT NULL: a NULL marks the side without the row
        query = sql.SQL(
            "SELECT {keys}, {l_first} IS NULL, {s_first} IS NULL{flags} "
            "FROM ({live}) AS l FULL JOIN ({snap}) AS s ON {join} "
            "WHERE {l_first} IS NULL OR {s_first} IS NULL{any_changed} "
            "ORDER BY {order} LIMIT {limit}"
        ).format(
            keys=sql.SQL(", ").join(
                sql.SQL("coalesce({}, {})").format(sql.Identifier("l", k), sql.Identifier("s", k))
                for k in self.key
            ),
            l_first=sql.Identifier("l", first),
            s_first=sql.Identifier("s", first),
            flags=sql.SQL("").join(sql.SQL(", {}").format(c) for c in changed),
            live=branch.format(columns, self.live.ident, self._filtered(where)),
            snap=branch.format(columns, self.snap.ident, self._filtered(where)),
            join=sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier("l", k), sql.Identifier("s", k)) for k in self.key
            ),
            any_changed=sql.SQL("").join(sql.SQL(" OR {}").format(c) for c in changed),
            order=sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(self.key))),
            limit=_PARAM,
        )
        found = []
        n = len(self.key)
        for row in _fetch(self.conn, query, [*params, *params, limit]):
            key = dict(zip(self.key, row[:n], strict=True))
            no_live, no_snap = row[n], row[n + 1]
            if no_live:
                found.append(RowDifference("missing", key))
            elif no_snap:
                found.append(RowDifference("extra", key))
            else:
                found.append(
                    RowDifference("changed", key, [c for c, d in zip(others, row[n + 2 :], strict=True) if d])
                )
        return found

    def run(self, live_rows: int, snap_rows: int, wanted: int) -> list[RowDifference]:
        """Differences in key order, at most `wanted` (reading stops once that many are found)."""
        found: list[RowDifference] = []
        # (lo, hi, live rows, snapshot rows, cannot be cut further); depth first, lowest keys first
        stack: list[tuple[_Key | None, _Key | None, int, int, bool]] = [
            (None, None, live_rows, snap_rows, False)
        ]
        while stack and len(found) < wanted:
            lo, hi, n_live, n_snap, leaf = stack.pop()
            if leaf or max(n_live, n_snap) <= LEAF_ROWS:
                found.extend(self._diff_rows(lo, hi, wanted - len(found)))
                self.reporter.advance(n_snap)
                continue
            points = self._split_points(lo, hi, n_live + n_snap)
            edges = [lo, *points, hi]
            children = []
            for a, b in itertools.pairwise(edges):
                where, params = self._where(a, b)
                live_sum, snap_sum = (
                    self._checksum(self.live, where, params),
                    self._checksum(self.snap, where, params),
                )
                if live_sum == snap_sum:
                    self.reporter.advance(snap_sum[0])
                else:
                    children.append((a, b, live_sum[0], snap_sum[0], not points))
            stack.extend(reversed(children))
        return found


def _multiset_differences(
    conn: psycopg.Connection, live: _Side, snap: _Side, columns: list[str], by_text: set[str], wanted: int
) -> list[RowDifference]:
    """Rows in one table and not the other, duplicates counted (EXCEPT ALL), missing ones first."""
    selected = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Identifier("t", c), sql.Identifier(c))
        if c in by_text
        else sql.Identifier("t", c)
        for c in columns
    )
    found: list[RowDifference] = []
    kinds: tuple[tuple[DifferenceKind, _Side, _Side], ...] = (("missing", snap, live), ("extra", live, snap))
    for kind, left, right in kinds:
        if len(found) >= wanted:
            break
        query = sql.SQL(
            "SELECT * FROM (SELECT {cols} FROM {left} AS t EXCEPT ALL SELECT {cols} FROM {right} AS t) AS d "
            "LIMIT {limit}"
        ).format(cols=selected, left=left.ident, right=right.ident, limit=_PARAM)
        found.extend(
            RowDifference(kind, dict(zip(columns, row, strict=True)))
            for row in _fetch(conn, query, [wanted - len(found)])
        )
    return found
