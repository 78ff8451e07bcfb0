"""The per-table three-way merge: pre-image (snapshot), post-image (fingerprint), live table.

Runs on the rollback's single transaction, around each revision's downgrade:

* :func:`prepare`, before the downgrade: lock the table against writers (SHARE: they wait until
  the rollback commits, so nothing lands between what we compare and what we write), then record
  in temp tables which fingerprinted rows were deleted since the migration, which hashed columns
  were written since (their hash now differs from the fingerprint's), which rows were inserted
  since, and which rows hold values written since in columns the migration added (the downgrade
  may drop them: `lost_writes`; the values the migration itself wrote there are not counted).
* :func:`merge`, after the downgrade: stage the snapshot (COPY into a temp table) and per key put
  back what the migration destroyed (see docs/rollback.md for the rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.catalog import OBJECT_PREFIX, SCHEMA
from dbrollback.catalog.fingerprints import TABLE_GONE, Fingerprint, pinned_text_settings
from dbrollback.errors import MigrationFailed, RefusedForSafety
from dbrollback.rollback.fill import DEFAULT_BATCH_ROWS, DRY_RUN, defer, values_set_aside_match
from dbrollback.rollback.report import MAX_CONFLICT_EXAMPLES, TableReport
from dbrollback.rollback.sqlparts import (
    Hasher,
    LiveColumn,
    count,
    key_json,
    keys_equal,
    live_columns,
    local_settings,
    names,
)
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import TableManifest
from dbrollback.snapshot.store import SnapshotStore

TEMP_PREFIX = f"{OBJECT_PREFIX}rb_"
# For the merge's joins and sorts over whole tables (4MB, the default, splits a join of millions of
# keys into dozens of batches); per sort or hash node of the rollback's own statements only.
WORK_MEM = "64MB"
GONE = f"{OBJECT_PREFIX}gone"


def _flag(i: int) -> str:
    return f"{OBJECT_PREFIX}c{i}"


def _fp_hash(i: int) -> str:
    return f"{OBJECT_PREFIX}f{i}"


def _added_flag(i: int) -> str:
    return f"{OBJECT_PREFIX}a{i}"


@dataclass
class TableMerge:
    """One fingerprinted table of one revision, through prepare → downgrade → merge → verify."""

    fingerprint: Fingerprint
    tm: TableManifest
    number: int
    snapshot_id: str
    report: TableReport
    columns_after_migration: dict[str, LiveColumn] = field(default_factory=dict)
    hashed: list[str] = field(default_factory=list)  # i-th entry has flag _dbrb_c{i}, hash _dbrb_f{i}
    added: list[str] = field(default_factory=list)  # columns the migration added (not in the pre-image)
    # i-th entry of `added` has flag _dbrb_a{i} in temp("added"): its value was written since
    deleted_since: int = 0
    inserted_since: int = 0
    deleted_by_migration: int = 0  # pre-image rows not in the fingerprint
    # filled by merge
    columns_after_rollback: dict[str, LiveColumn] = field(default_factory=dict)
    restored_columns: list[str] = field(default_factory=list)  # dropped + transformed, put back per key
    transformed: list[str] = field(default_factory=list)
    insertable: list[str] = field(default_factory=list)
    # --batched: the rollback run whose batches put the values back after its transaction (fill.py)
    batched_run_id: int | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    deferred_rows: int | None = None  # rows left to those batches (None: not deferred)
    deferred_columns: list[tuple[str, str]] = field(default_factory=list)  # (column, live type)
    deferred_match: bool = True  # dry run: the values set aside are the pre-image's

    @property
    def gone(self) -> bool:
        return self.fingerprint.status == TABLE_GONE

    @property
    def key(self) -> list[str]:
        return self.fingerprint.key_columns

    @property
    def live(self) -> sql.Identifier:
        return sql.Identifier(self.fingerprint.schema, self.fingerprint.table)

    @property
    def fp(self) -> sql.Identifier:
        assert self.fingerprint.fp_table is not None
        return sql.Identifier(SCHEMA, self.fingerprint.fp_table)

    def temp(self, kind: str) -> sql.Identifier:
        return sql.Identifier("pg_temp", f"{TEMP_PREFIX}{kind}_{self.number}")

    @property
    def pre_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.tm.columns if not c.generated}

    def changed_any(self, alias: str) -> sql.Composable:
        """Some hashed column that still exists was written since the migration."""
        flags = [sql.Identifier(alias, _flag(i)) for i, c in enumerate(self.hashed) if c in self.transformed]
        return sql.SQL(" OR ").join(flags) if flags else sql.SQL("false")


def prepare(conn: psycopg.Connection, hasher: Hasher, m: TableMerge) -> None:
    """Before the revision's downgrade: what changed since the migration (see module docstring)."""
    if m.gone:
        return
    f = m.fingerprint
    name = m.report.table
    columns = live_columns(conn, f.schema, f.table)
    if columns is None:
        raise RefusedForSafety(
            f"{name} no longer exists; it was changed after run {f.run_id}. Nothing was changed.", table=name
        )
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(m.live))
    m.columns_after_migration = columns
    m.hashed = list(f.hashed_columns)
    for column in m.hashed:
        now = columns.get(column)
        if now is None or now.type != f.column_types.get(column):
            raise RefusedForSafety(
                f"{name}.{column} was changed after run {f.run_id} (it is "
                f"{now.type if now else 'gone'}, the fingerprint recorded {f.column_types.get(column)}): "
                "later writes to it cannot be told apart. Nothing was changed.",
                table=name,
                column=column,
            )
    selected: list[sql.Composable] = [names(m.key, "f")]
    selected.append(sql.SQL("{} IS NULL AS {}").format(sql.Identifier("t", m.key[0]), sql.Identifier(GONE)))
    for i, column in enumerate(m.hashed):
        selected.append(
            sql.SQL("{} IS DISTINCT FROM {} AS {}").format(
                hasher.value("t", column, columns[column].type),
                sql.Identifier("f", f.hashed_columns[column]),
                sql.Identifier(_flag(i)),
            )
        )
        selected.append(
            sql.SQL("{} AS {}").format(
                sql.Identifier("f", f.hashed_columns[column]), sql.Identifier(_fp_hash(i))
            )
        )
    with pinned_text_settings(conn), local_settings(conn, {"work_mem": WORK_MEM}):
        if m.hashed:
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} AS f LEFT JOIN {} AS t ON {}"
                ).format(
                    m.temp("since"), sql.SQL(", ").join(selected), m.fp, m.live, keys_equal(m.key, "f", "t")
                )
            )
            # Temporary tables are never analyzed by autovacuum: give the planner real numbers.
            conn.execute(sql.SQL("ANALYZE {}").format(m.temp("since")))
            counts = sql.SQL(
                "SELECT (SELECT count(*) FROM {}), count(*), count(*) FILTER (WHERE {}) FROM {}"
            ).format(m.live, sql.Identifier(GONE), m.temp("since"))
        else:
            # Nothing hashed (the revision only dropped columns): no per-row flags to keep, only
            # how many fingerprinted rows were deleted since.
            counts = sql.SQL(
                "SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {}), "
                "(SELECT count(*) FROM {} AS f WHERE NOT EXISTS (SELECT FROM {} AS t WHERE {}))"
            ).format(m.live, m.fp, m.fp, m.live, keys_equal(m.key, "f", "t"))
        row = conn.execute(counts).fetchone()
    assert row is not None
    live_rows, fingerprinted, m.deleted_since = (int(v) for v in row)
    # Keys are unique on both sides: every live row not matched by a fingerprinted one is new.
    m.inserted_since = live_rows - (fingerprinted - m.deleted_since)
    before = {c.name for c in m.tm.columns}
    m.added = [c for c in columns if c not in before and not columns[c].generated]
    if m.added:
        with pinned_text_settings(conn), local_settings(conn, {"work_mem": WORK_MEM}):
            _record_added_written_since(conn, hasher, m)


def _record_added_written_since(conn: psycopg.Connection, hasher: Hasher, m: TableMerge) -> None:
    """temp("added"): the rows holding a value written since the migration in a column it added."""
    f = m.fingerprint
    written = [_added_written_since(hasher, m, column) for column in m.added]
    flags = [sql.SQL("{} AS {}").format(w, sql.Identifier(_added_flag(i))) for i, w in enumerate(written)]
    source: sql.Composable = sql.SQL("{} AS t").format(m.live)
    if any(column in f.added_columns for column in m.added):
        source = sql.SQL("{} AS t LEFT JOIN {} AS f ON {}").format(m.live, m.fp, keys_equal(m.key, "t", "f"))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {}, {} FROM {} WHERE {}").format(
            m.temp("added"),
            names(m.key, "t"),
            sql.SQL(", ").join(flags),
            source,
            sql.SQL(" OR ").join(written),
        )
    )


def _added_written_since(hasher: Hasher, m: TableMerge, column: str) -> sql.Composable:
    """The live row's value in `column` (added by the migration) was written since: it differs from
    the fingerprint's hash, or the row is new since and holds a value."""
    f = m.fingerprint
    hash_column = f.added_columns.get(column)
    now = m.columns_after_migration[column]
    if hash_column is None or now.type != f.column_types.get(column):
        # Not hashed (fingerprinted before catalog version 7, or added after the run) or retyped
        # since: the migration's own values cannot be told apart, so every value counts (upper bound).
        return sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", column))
    return sql.SQL("(CASE WHEN {} IS NULL THEN {} IS NOT NULL ELSE {} IS DISTINCT FROM {} END)").format(
        sql.Identifier("f", m.key[0]),  # key columns are NOT NULL: NULL here means no fingerprinted row
        sql.Identifier("t", column),
        hasher.value("t", column, now.type),
        sql.Identifier("f", hash_column),
    )


def _stage(conn: psycopg.Connection, store: SnapshotStore, m: TableMerge) -> None:
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
        for c in m.tm.columns
        if not c.generated
    )
    # One statement over the extended protocol: type names come from a manifest file.
    with conn.cursor(binary=True) as cur:
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(m.temp("pre"), definition))
    schema, table = "pg_temp", f"{TEMP_PREFIX}pre_{m.number}"
    rows = load_table_copy(conn, store, m.snapshot_id, m.tm, schema, table)
    if rows != m.tm.row_count:
        raise MigrationFailed(
            f"Snapshot {m.snapshot_id}: {m.report.table} loaded {rows} rows, the manifest "
            f"says {m.tm.row_count}; rolled back, nothing was changed"
        )
    conn.execute(sql.SQL("ANALYZE {}").format(m.temp("pre")))


# The UPDATE walks the live table in key order (merge join), so each page is written once: a hash
# join bigger than work_mem runs in batches, each dirtying pages all over the table again (and
# writing them whole into the WAL again after every checkpoint). In benchmarks/rollback_merge.py
# (5M rows) a plain UPDATE … FROM took 206 s planned that way, about 25 s by merge join.
_MERGE_SETTINGS = {"enable_hashjoin": "off", "work_mem": WORK_MEM}


def merge(conn: psycopg.Connection, hasher: Hasher, store: SnapshotStore, m: TableMerge) -> None:
    """After the revision's downgrade: put back what the migration destroyed, keep later writes."""
    f = m.fingerprint
    name = m.report.table
    after = live_columns(conn, f.schema, f.table)
    if after is None:
        raise MigrationFailed(
            f"{name} does not exist after the downgrade of {f.revision}, so its rows cannot be put back; "
            "the rollback was rolled back and nothing was changed",
            table=name,
        )
    m.columns_after_rollback = after
    _stage(conn, store, m)
    m.insertable = [c for c in m.tm.copy_columns if c in after and not after[c].generated]
    insert = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} AS p").format(
        m.live, names(m.insertable), names(m.insertable, "p"), m.temp("pre")
    )
    if m.gone:  # recreated by the downgrade: every row comes from the snapshot
        m.report.reinserted_rows = max(conn.execute(insert).rowcount, 0)
        return
    with pinned_text_settings(conn), local_settings(conn, _MERGE_SETTINGS):
        _merge_rows(conn, hasher, m, after, insert)


def _merge_rows(
    conn: psycopg.Connection,
    hasher: Hasher,
    m: TableMerge,
    after: dict[str, LiveColumn],
    insert: sql.Composable,
) -> None:
    key = m.key
    m.transformed = [c for c in m.hashed if c in m.insertable and c not in key]
    dropped = [
        c
        for c in m.insertable
        if c not in m.columns_after_migration and c not in key and after[c].identity != "a"
    ]
    m.restored_columns = dropped + m.transformed
    # Rows the migration deleted (in the pre-image, not in the fingerprint), found once: the
    # conflicts, the re-insert and their verification then join only these few keys.
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} AS p "
            "WHERE NOT EXISTS (SELECT FROM {} AS f WHERE {})"
        ).format(m.temp("deleted"), names(m.key, "p"), m.temp("pre"), m.fp, keys_equal(m.key, "f", "p"))
    )
    conn.execute(sql.SQL("ANALYZE {}").format(m.temp("deleted")))
    # Most migrations delete no rows: then the joins for re-inserts and taken keys are skipped.
    m.deleted_by_migration = count(conn, sql.SQL("SELECT count(*) FROM {}").format(m.temp("deleted")))
    _record_conflicts(conn, hasher, m)
    m.report.kept_rows = (
        0
        if not m.transformed
        else count(
            conn,
            sql.SQL("SELECT count(*) FROM {} AS s JOIN {} AS p ON {} WHERE NOT s.{} AND ({})").format(
                m.temp("since"),
                m.temp("pre"),
                keys_equal(key, "s", "p"),
                sql.Identifier(GONE),
                m.changed_any("s"),
            ),
        )
    )
    if m.restored_columns:
        values, source, where = _restore_statement(hasher, m, dropped)
        if m.batched_run_id is not None:
            m.deferred_rows = defer(
                conn,
                hasher,
                rollback_run_id=m.batched_run_id,
                number=m.number,
                schema=m.fingerprint.schema,
                table=m.fingerprint.table,
                key=key,
                values=[(c, after[c].type, v, h) for c, v, h in values],
                source=source,
                where=where,
                batch_rows=m.batch_rows,
            )
            m.deferred_columns = [(c, after[c].type) for c, _, _ in values]
            if m.batched_run_id == DRY_RUN:
                m.deferred_match = values_set_aside_match(conn, hasher, m.number, m.deferred_columns)
        else:
            sets = [sql.SQL("{} = {}").format(sql.Identifier(c), v) for c, v, _ in values]
            update = sql.SQL("UPDATE {} AS t SET {} FROM {} WHERE {}").format(
                m.live, sql.SQL(", ").join(sets), source, where
            )
            m.report.restored_rows = max(conn.execute(update).rowcount, 0)
    # Rows the migration deleted: back, unless the key was taken since (a conflict, recorded above).
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            m.temp("reinserted"), names(key), m.temp("pre")
        )
    )
    reinsert = sql.SQL(
        "WITH ins AS ({} WHERE EXISTS (SELECT FROM {} AS d WHERE {}) "
        "AND NOT EXISTS (SELECT FROM {} AS t WHERE {}) RETURNING {}) "
        "INSERT INTO {} SELECT * FROM ins"
    ).format(
        insert,
        m.temp("deleted"),
        keys_equal(key, "d", "p"),
        m.live,
        keys_equal(key, "t", "p"),
        names(key),
        m.temp("reinserted"),
    )
    if m.deleted_by_migration:
        m.report.reinserted_rows = max(conn.execute(reinsert).rowcount, 0)
    if m.added:
        dropped_since = [i for i, a in enumerate(m.added) if a not in after]
        if dropped_since:
            m.report.lost_writes = count(
                conn,
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                    m.temp("added"),
                    sql.SQL(" OR ").join(sql.Identifier(_added_flag(i)) for i in dropped_since),
                ),
            )


def _restore_statement(
    hasher: Hasher, m: TableMerge, dropped: list[str]
) -> tuple[list[tuple[str, sql.Composable, sql.Composable]], sql.Composable, sql.Composable]:
    """``UPDATE live AS t SET column = value, … FROM source WHERE where``, as its parts: the
    columns put back (with their values and the hash of the pre-image value the row should get, NULL
    where a write since the migration is kept), and the rows that get at least one value back."""
    key, pre_types, after = m.key, m.pre_types, m.columns_after_rollback
    values: list[tuple[str, sql.Composable, sql.Composable]] = [
        (c, sql.SQL("p.{}").format(sql.Identifier(c)), hasher.value("p", c, pre_types[c])) for c in dropped
    ]
    wanted: list[sql.Composable] = [
        hasher.differs(c, ("p", pre_types[c]), ("t", after[c].type)) for c in dropped
    ]
    for i, c in enumerate(m.hashed):
        if c not in m.transformed:
            continue
        values.append(
            (
                c,
                sql.SQL("CASE WHEN s.{} THEN t.{} ELSE p.{} END").format(
                    sql.Identifier(_flag(i)), sql.Identifier(c), sql.Identifier(c)
                ),
                sql.SQL("CASE WHEN s.{} THEN NULL ELSE {} END").format(
                    sql.Identifier(_flag(i)), hasher.value("p", c, pre_types[c])
                ),
            )
        )
        wanted.append(
            sql.SQL("(NOT s.{} AND {})").format(
                sql.Identifier(_flag(i)), hasher.differs(c, ("p", pre_types[c]), ("t", after[c].type))
            )
        )
    if m.transformed:
        source = sql.SQL("{} AS p JOIN {} AS s ON {}").format(
            m.temp("pre"), m.temp("since"), keys_equal(key, "p", "s")
        )
        where = sql.SQL("{} AND NOT s.{} AND ({})").format(
            keys_equal(key, "t", "p"), sql.Identifier(GONE), sql.SQL(" OR ").join(wanted)
        )
    else:
        # Only dropped columns: no per-row flags needed, any live row with a pre-image key the
        # migration did not delete is that row (a deleted key taken since is a conflict).
        source = sql.SQL("{} AS p").format(m.temp("pre"))
        where = sql.SQL("{} AND NOT EXISTS (SELECT FROM {} AS d WHERE {}) AND ({})").format(
            keys_equal(key, "t", "p"),
            m.temp("deleted"),
            keys_equal(key, "d", "p"),
            sql.SQL(" OR ").join(wanted),
        )
    return values, source, where


def _record_conflicts(conn: psycopg.Connection, hasher: Hasher, m: TableMerge) -> None:
    """Pre-image values a later write keeps out, and deleted rows whose key was taken since."""
    key, pre_types, after = m.key, m.pre_types, m.columns_after_rollback
    table = m.temp("conflicts")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} (key jsonb, col text, current text, preimage text) ON COMMIT DROP"
        ).format(table)
    )
    for i, c in enumerate(m.hashed):
        if c not in m.transformed:
            continue
        if pre_types[c] == m.fingerprint.column_types.get(c):
            # Same type before and after: a row the migration left as it was lost nothing.
            migration_changed: sql.Composable = sql.SQL("{} IS DISTINCT FROM s.{}").format(
                hasher.value("p", c, pre_types[c]), sql.Identifier(_fp_hash(i))
            )
        else:
            migration_changed = sql.SQL("true")
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT {}, {}, t.{}::text, p.{}::text FROM {} AS p JOIN {} AS s ON {} "
                "JOIN {} AS t ON {} WHERE NOT s.{} AND s.{} AND {} AND {}"
            ).format(
                table,
                key_json(key, "p"),
                sql.Literal(c),
                sql.Identifier(c),
                sql.Identifier(c),
                m.temp("pre"),
                m.temp("since"),
                keys_equal(key, "p", "s"),
                m.live,
                keys_equal(key, "t", "p"),
                sql.Identifier(GONE),
                sql.Identifier(_flag(i)),
                migration_changed,
                hasher.differs(c, ("p", pre_types[c]), ("t", after[c].type)),
            )
        )
    if m.deleted_by_migration:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT {}, NULL, to_jsonb(t)::text, to_jsonb(p)::text "
                "FROM {} AS d JOIN {} AS p ON {} JOIN {} AS t ON {}"
            ).format(
                table,
                key_json(key, "p"),
                m.temp("deleted"),
                m.temp("pre"),
                keys_equal(key, "d", "p"),
                m.live,
                keys_equal(key, "t", "p"),
            )
        )
    m.report.conflicts = count(conn, sql.SQL("SELECT count(DISTINCT key) FROM {}").format(table))
    rows = conn.execute(
        sql.SQL(
            "SELECT key, col, current, preimage FROM {} ORDER BY key::text, col NULLS FIRST LIMIT {}"
        ).format(table, sql.Literal(MAX_CONFLICT_EXAMPLES))
    ).fetchall()
    m.report.conflict_examples = [_example(*r) for r in rows]


def _example(key: Any, column: str | None, current: str | None, preimage: str | None) -> dict[str, Any]:
    return {"key": key, "column": column, "current": current, "preimage": preimage}
