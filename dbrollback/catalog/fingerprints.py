"""Post-image fingerprints: every snapshotted table's keys and column hashes right after a revision ran.

A rollback merges three versions of a table: the snapshot (pre-image), the fingerprint
(post-image) and the live table. The fingerprint tells it which rows existed right after the
revision (rows deleted since stay deleted, rows inserted since are kept) and, per row, a 64-bit
hash of each column the revision changed that still exists (a value equal to it now was not
written since, so the pre-image value may go back) and of each column the revision added (a
downgrade that drops it discards only the values written since, not the ones the revision wrote).

It is taken inside the revision's own transaction, after its migration code and before COMMIT,
while the SHARE lock taken before the snapshot is still held: no write can land between the
revision and its fingerprint. Each fingerprint is a plain table ``dbrollback._dbrb_fp_<snapshot
id>_<n>`` made by ``CREATE TABLE … AS SELECT`` on the server (no index, nothing read by the
client), holding the key columns under their own names and one ``bigint`` per hashed column;
``dbrollback.fingerprints`` records which column each hash belongs to (``hashed_columns`` for
columns that existed before the revision, ``added_columns`` for those it added).

Hashes are ``hash_record_extended(ROW(column), 0)`` (the text form for types without an extended
hash function, with the text-output settings pinned) exactly as :mod:`dbrollback.snapshot.checksum`
builds them, so a rollback recomputes them the same way. Key columns are stored as values and not
hashed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dbrollback.catalog import OBJECT_PREFIX, SCHEMA
from dbrollback.snapshot.checksum import pin_text_settings, row_hash_expression

FINGERPRINT_PREFIX = f"{OBJECT_PREFIX}fp_"
ALGORITHM = "colhash64-v1"  # per column: hash_record_extended(ROW(c), 0), rowhash64-v2's text rules

TAKEN = "taken"
NO_KEY = "no_key"  # no primary key or unique NOT NULL key: rows cannot be matched, no merge
TABLE_GONE = "table_gone"  # dropped (or renamed) by the revision: every row comes from the snapshot

_MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer names

_TABLE_OID_SQL = """
SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# The primary key, else the narrowest valid unique index without expressions or predicate whose key
# columns (not INCLUDE columns) are all NOT NULL: the same choice as restore's row matching.
_ROW_KEY_SQL = """
SELECT array_agg(a.attname ORDER BY k.ord)
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indexprs IS NULL AND i.indpred IS NULL
  AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, i.indisprimary
HAVING bool_and(a.attnotnull)
ORDER BY bool_or(i.indisprimary) DESC, count(*), i.indexrelid
LIMIT 1
"""


@dataclass(frozen=True)
class FingerprintTarget:
    """A table snapshotted before a revision, as the snapshot saw it."""

    snapshot_id: str
    schema: str
    table: str
    columns_before: tuple[str, ...]
    # Columns the analysis says the revision leaves alone; every other column that still
    # exists is hashed (an opaque effect leaves this empty: everything is hashed).
    unaffected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Fingerprint:
    id: int
    run_id: int
    revision: str
    snapshot_id: str
    schema: str
    table: str
    status: str
    fp_table: str | None  # in the dbrollback schema
    key_columns: list[str]
    hashed_columns: dict[str, str]  # column that existed before the revision -> hash column in fp_table
    column_types: dict[str, str]  # hashed or added column -> format_type() right after the revision
    algorithm: str
    row_count: int | None
    bytes: int | None
    created_at: datetime
    note: str | None
    # Column the revision added -> hash column in fp_table; empty for fingerprints taken before
    # catalog version 7 (a rollback then counts every value in such columns as written since).
    added_columns: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """A merge can use it: the rows' keys and hashes were recorded."""
        return self.status == TAKEN

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "revision": self.revision,
            "snapshot_id": self.snapshot_id,
            "table": f"{self.schema}.{self.table}",
            "status": self.status,
            "fp_table": self.fp_table,
            "key_columns": self.key_columns,
            "hashed_columns": self.hashed_columns,
            "added_columns": self.added_columns,
            "column_types": self.column_types,
            "algorithm": self.algorithm,
            "row_count": self.row_count,
            "bytes": self.bytes,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
        }


def fingerprint_table_name(snapshot_id: str, number: int) -> str:
    """``_dbrb_fp_<snapshot id>_<n>``: lower case so psql users need no quotes."""
    stem = snapshot_id.lower().replace("-", "_")
    name = f"{FINGERPRINT_PREFIX}{stem}_{number}"
    if len(name.encode()) > _MAX_IDENTIFIER:  # ids from elsewhere: keep the name unique, not readable
        name = f"{FINGERPRINT_PREFIX}{hashlib.sha256(snapshot_id.encode()).hexdigest()[:24]}_{number}"
    return name


def take_fingerprint(conn: psycopg.Connection, run_id: int, revision: str, target: FingerprintTarget,
                     number: int) -> Fingerprint:  # fmt: skip
    """Fingerprint ``target`` as the current transaction sees it, and record it; never raises for a
    table that cannot be fingerprinted (the catalog row says why)."""
    found = conn.execute(_TABLE_OID_SQL, (target.schema, target.table)).fetchone()
    if found is None:
        return _record(conn, run_id, revision, target, TABLE_GONE,
                       note="the table no longer exists after the revision (dropped or renamed); "
                            "all its rows come from the snapshot")  # fmt: skip
    oid = int(found[0])
    rows = conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
    after = {str(name): str(type_) for name, type_, _ in rows}
    generated = {str(name) for name, _, is_generated in rows if is_generated}
    key_row = conn.execute(_ROW_KEY_SQL, (oid,)).fetchone()
    key = [str(k) for k in key_row[0]] if key_row else []
    if not key:
        return _record(conn, run_id, revision, target, NO_KEY,
                       note="no primary key or unique index on NOT NULL columns after the revision: "
                            "rows cannot be matched, so a rollback cannot merge this table "
                            "(--strategy restore can)")  # fmt: skip
    missing = [k for k in key if k not in target.columns_before]
    if missing:
        return _record(conn, run_id, revision, target, NO_KEY, key=key,
                       note=f"key column(s) {', '.join(missing)} did not exist before the revision: "
                            "rows of the snapshot cannot be matched to it")  # fmt: skip
    before = set(target.columns_before)
    hashed = [c for c in after if c in before and c not in target.unaffected and c not in key]
    # Generated columns hold nothing anyone wrote; key columns all existed before (checked above).
    added = [c for c in after if c not in before and c not in generated]
    all_names = _hash_column_names(key, len(hashed) + len(added))
    hash_names = dict(zip(hashed, all_names[: len(hashed)], strict=True))
    added_names = dict(zip(added, all_names[len(hashed) :], strict=True))
    fp_table = fingerprint_table_name(target.snapshot_id, number)
    selected: list[sql.Composable] = [sql.Identifier("t", k) for k in key]
    for column, hash_name in (hash_names | added_names).items():
        expression = row_hash_expression(conn, target.schema, target.table, "t", [column])
        selected.append(sql.SQL("{} AS {}").format(expression, sql.Identifier(hash_name)))
    create = sql.SQL("CREATE TABLE {} AS SELECT {} FROM {} AS t").format(
        sql.Identifier(SCHEMA, fp_table),
        sql.SQL(", ").join(selected),
        sql.Identifier(target.schema, target.table),
    )
    with pinned_text_settings(conn):
        cursor = conn.execute(create)
        row_count = cursor.rowcount
    size = conn.execute(
        "SELECT pg_catalog.pg_total_relation_size(%s::regclass)",
        (sql.Identifier(SCHEMA, fp_table).as_string(conn),),
    ).fetchone()
    return _record(conn, run_id, revision, target, TAKEN, fp_table=fp_table, key=key, hashed=hash_names,
                   added=added_names, types={c: after[c] for c in hashed + added}, row_count=row_count,
                   size=int(size[0]) if size else None)  # fmt: skip


def _hash_column_names(key: list[str], count: int) -> list[str]:
    """h_1 … h_n, with a longer prefix if a key column could clash with one."""
    prefix = "h_"
    while any(k.startswith(prefix) for k in key):
        prefix = "_" + prefix
    return [f"{prefix}{i}" for i in range(1, count + 1)]


@contextmanager
def pinned_text_settings(conn: psycopg.Connection) -> Iterator[None]:
    """checksum's pinned output settings for the block only: SET LOCAL would otherwise last until
    the revision's COMMIT, which other on_version_apply hooks run before."""
    before: dict[str, str] = dict(conn.execute("SELECT name, setting FROM pg_catalog.pg_settings").fetchall())
    pin_text_settings(conn)
    try:
        yield
    finally:
        pinned: dict[str, str] = dict(
            conn.execute("SELECT name, setting FROM pg_catalog.pg_settings").fetchall()
        )
        for name, value in before.items():
            if pinned.get(name) != value:
                conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))


def _record(conn: psycopg.Connection, run_id: int, revision: str, target: FingerprintTarget, status: str, *,
            fp_table: str | None = None, key: list[str] | None = None, hashed: dict[str, str] | None = None,
            added: dict[str, str] | None = None, types: dict[str, str] | None = None,
            row_count: int | None = None, size: int | None = None, note: str | None = None
            ) -> Fingerprint:  # fmt: skip
    # Results in binary: their text form would follow the revision's DateStyle, which psycopg
    # cannot parse in every style.
    with conn.cursor(row_factory=dict_row, binary=True) as cur:
        cur.execute(
            f"""INSERT INTO dbrollback.fingerprints
                   (run_id, revision, snapshot_id, schema_name, table_name, status, fp_table, key_columns,
                    hashed_columns, column_types, algorithm, row_count, bytes, note, added_columns)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               RETURNING {_COLUMNS}""",
            (run_id, revision, target.snapshot_id, target.schema, target.table, status, fp_table, key or [],
             Jsonb(hashed or {}), Jsonb(types or {}), ALGORITHM, row_count, size, note, Jsonb(added or {})),
        )  # fmt: skip
        row = cur.fetchone()
    assert row is not None
    return _fingerprint(row)


_COLUMNS = """id, run_id, revision, snapshot_id, schema_name, table_name, status, fp_table, key_columns,
              hashed_columns, column_types, algorithm, row_count, bytes, created_at, note, added_columns"""


def _fingerprint(row: dict[str, Any]) -> Fingerprint:
    return Fingerprint(
        id=int(row["id"]),
        run_id=int(row["run_id"]),
        revision=row["revision"],
        snapshot_id=row["snapshot_id"],
        schema=row["schema_name"],
        table=row["table_name"],
        status=row["status"],
        fp_table=row["fp_table"],
        key_columns=list(row["key_columns"]),
        hashed_columns=dict(row["hashed_columns"]),
        column_types=dict(row["column_types"]),
        algorithm=row["algorithm"],
        row_count=row["row_count"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        note=row["note"],
        added_columns=dict(row["added_columns"]),
    )


def fingerprints_of_run(conn: psycopg.Connection, run_id: int) -> list[Fingerprint]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM dbrollback.fingerprints WHERE run_id = %s ORDER BY id", (run_id,)
        )
        return [_fingerprint(r) for r in cur.fetchall()]


def fingerprints_of_snapshots(conn: psycopg.Connection, snapshot_ids: list[str]) -> list[Fingerprint]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM dbrollback.fingerprints WHERE snapshot_id = ANY(%s) ORDER BY id",
            (snapshot_ids,),
        )
        return [_fingerprint(r) for r in cur.fetchall()]


def drop_fingerprints(conn: psycopg.Connection, snapshot_ids: list[str]) -> list[str]:
    """Drop the fingerprint tables of these snapshots and their catalog rows, in one transaction;
    returns the tables dropped."""
    dropped: list[str] = []
    if not snapshot_ids:
        return dropped
    with conn.transaction():
        rows = conn.execute(
            "DELETE FROM dbrollback.fingerprints WHERE snapshot_id = ANY(%s) RETURNING fp_table",
            (snapshot_ids,),
        ).fetchall()
        for (fp_table,) in rows:
            if fp_table is not None:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, fp_table)))
                dropped.append(str(fp_table))
    return sorted(dropped)
