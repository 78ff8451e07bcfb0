"""Put tables' contents back to what a snapshot holds, in place.

The live table object is never replaced (no DROP/RENAME swap): its rows are changed with DELETE,
UPDATE and INSERT. So everything attached to the table keeps its oid and definition: indexes,
constraints, foreign keys pointing in and out, triggers, defaults, identity and owned sequences,
grants, comments, views, row-level security policies, publication membership, statistics
targets, storage options. What is *not* preserved is the history of the rows themselves: ctids,
xmin, and the contents of rows that changed since the snapshot (that is the point).

How a restore runs (one session, ONE transaction for all tables, so a multi-table restore is
atomic: either every table is restored or none is; ``restore_many`` does the same for tables
coming from several snapshots, as ``restore --to-time`` picks them):

1. ``store.verify`` re-reads every file of the snapshot(s) before the database is touched.
2. "create" targets (the table is gone, or ``into_schema`` restores side by side) are built
   from the manifest and loaded with COPY, primary key added after the load.
3. "replace" targets: each snapshot file is loaded into a TEMP ... ON COMMIT DROP staging table
   (``_dbrb_stage_N``). Being temporary and created inside the transaction, it never becomes
   visible to others and vanishes with the session if the process is killed.
4. The swap, in a savepoint: LOCK all replaced tables IN SHARE ROW EXCLUSIVE MODE (writers wait,
   readers do not), re-check their columns, key and incoming foreign keys, then DELETE rows whose
   key is not in the snapshot (children first), UPDATE rows that differ and INSERT missing rows
   (parents first). A lock timeout rolls back to the savepoint and retries with exponential backoff.
5. Each restored table's server-side checksum is compared with the manifest's before COMMIT,
   and owned sequences (serial/identity) are moved forward past the restored values.

Rows are matched by a key of the live table: its primary key, else the UNIQUE index with the
fewest columns that is not partial, has no expressions, uses default operator classes and
collations, and whose columns are all NOT NULL and in the snapshot (every row the table can hold
is unique and non-null on it, so the snapshot's rows are too, or the restore could not succeed
anyway). A table without such a key has all its rows deleted and the snapshot's inserted.

A process killed at any point leaves nothing: the transaction never commits and the staging
tables die with the session. Only a lost connection *during* COMMIT has an unknown outcome,
and is reported as such.

Tables outside the restore are never changed silently:

* A table without a usable key that a table outside the restore references by foreign key is
  refused (RefusedForSafety): its rows cannot be matched, so all would be deleted and re-inserted,
  and the foreign key's ON DELETE action would hit every referencing row.
* Rows deleted from a table (or referenced columns updated) would set off ON DELETE / ON UPDATE
  CASCADE, SET NULL or SET DEFAULT of foreign keys of tables not being restored: the restore is
  refused (after counting, inside the transaction, so nothing changed) unless ``allow_cascade``;
  the results list what cascaded. NO ACTION / RESTRICT keys make the restore fail cleanly.
* ``row_security`` is off in the restore transaction: a role subject to row-level security on a
  restored table gets a refusal instead of restoring only the rows it can see.

Limits, by design or by PostgreSQL:

* User triggers on the restored tables fire as for any DML (like a data-only pg_restore without
  --disable-triggers). One that rewrites restored rows, or a rule, makes the checksum differ, and
  the restore is rolled back rather than committed with wrong data.
* Non-deferrable constraints are checked per statement (unique ones per row). A restore that
  needs a parent row deleted while a restored child still points at it until its own UPDATE
  (the child row moved to another parent), or an UPDATE swapping unique values between rows,
  fails cleanly (RestoreFailed, nothing changed); DEFERRABLE constraints are deferred to the end.
* An identity ALWAYS column whose value differs is switched to BY DEFAULT and back inside the
  transaction (ACCESS EXCLUSIVE for that moment): it cannot be UPDATEd otherwise.
* A "create" brings back columns, types, NOT NULL, defaults that still resolve, generated columns
  (as STORED) and the primary key: the manifest holds nothing else (no indexes, identity, other
  constraints, triggers, grants).
* A setval cannot be rolled back; sequences are only ever moved forward, last, after the checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

from dbrollback import __version__
from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.errors import (
    ConnectionFailed,
    DbrollbackError,
    RefusedForSafety,
    RestoreFailed,
    SnapshotCorrupt,
    SnapshotError,
)
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.urls import redact

STAGING_PREFIX = f"{OBJECT_PREFIX}stage_"
Action = Literal["replace", "create"]
# progress(qualified target, n): n more bytes of that table's snapshot files were loaded. The unit
# is stored (compressed) file bytes, whose total is known up front: TablePlan.snapshot_bytes.
Progress = Callable[[str, int], None]

_FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
# Foreign key actions that change rows of the referencing table.
_CHANGING_ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")
_BACKOFF_FIRST = 0.2  # seconds before the first retry; doubles each time
_BACKOFF_MAX = 10.0

_RELATION_SQL = """
SELECT c.oid, c.relkind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

_LIVE_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod,
       a.attgenerated <> '',
       CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END, a.attidentity
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Unique indexes that can match rows: valid, not partial, no expressions; per index whether all key
# columns are NOT NULL and use the default operator class and the column's collation (so `=` in
# the restore's joins means what the index means). The primary key first, then fewest columns.
_KEY_CANDIDATES_SQL = """
SELECT ic.relname, i.indisprimary, array_agg(a.attname::text ORDER BY k.ord),
       bool_and(a.attnotnull), bool_and(opc.opcdefault AND i.indcollation[(k.ord - 1)::int] = a.attcollation)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
JOIN pg_catalog.pg_opclass opc ON opc.oid = i.indclass[(k.ord - 1)::int]
WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
  AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, ic.relname, i.indisprimary, i.indnkeyatts
ORDER BY i.indisprimary DESC, i.indnkeyatts, ic.relname
"""

# Foreign keys pointing at the table, at a partitioned table it is a partition of (deleting from
# the partition deletes from it), or at one of its own partitions. conparentid = 0: a key is
# listed once, not once per partition. pg_partition_* return nothing for a plain table.
_REFERENCING_SQL = """
SELECT c.conname, n.nspname, r.relname, c.confdeltype, c.condeferrable, c.confupdtype,
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord)
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0
  AND c.confrelid IN (SELECT %(oid)s::oid
                      UNION SELECT relid FROM pg_catalog.pg_partition_ancestors(%(oid)s)
                      UNION SELECT relid FROM pg_catalog.pg_partition_tree(%(oid)s))
ORDER BY n.nspname, r.relname, c.conname
"""

_FK_EDGES_SQL = """
SELECT DISTINCT conrelid, confrelid FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND conrelid = ANY(%(oids)s) AND confrelid = ANY(%(oids)s) AND conrelid <> confrelid
"""

# Sequences a column of the table owns: serial ('a'uto) and identity ('i'nternal) dependencies.
_OWNED_SEQUENCES_SQL = """
SELECT s.oid, n.nspname, s.relname, a.attname, q.seqincrement
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid = %s AND d.deptype IN ('a', 'i')
ORDER BY a.attnum
"""


# -- plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferencingKey:
    """A foreign key of another (or the same) table pointing at a table being restored."""

    name: str
    schema: str
    table: str
    on_delete: str  # NO ACTION, RESTRICT, CASCADE, SET NULL, SET DEFAULT
    deferrable: bool
    on_update: str = "NO ACTION"
    referenced_columns: tuple[str, ...] = ()  # columns of the restored table it points at

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "referenced_columns": list(self.referenced_columns)}


@dataclass
class TablePlan:
    source_schema: str
    source_table: str
    schema: str
    table: str
    action: Action
    snapshot_rows: int
    live_rows: int | None
    # Columns matching snapshot rows to live rows; empty: delete all rows, then insert all.
    key: list[str]
    # Where `key` comes from: "primary key", "unique index <quoted name>" or "none".
    key_source: str = "none"
    referenced_by: list[ReferencingKey] = field(default_factory=list)
    # Foreign keys of tables outside the restore whose ON DELETE (or ON UPDATE, for columns other
    # than the key) action would change their rows if the restore deletes (updates) rows here.
    # The restore refuses when that actually happens, unless allow_cascade.
    cascade_risks: list[ReferencingKey] = field(default_factory=list)
    # Stored bytes of the table's snapshot files: the total that `progress` counts up to.
    snapshot_bytes: int = 0
    # Filled in by restore_tables once the rows were compared (None before).
    to_delete: int | None = None
    to_update: int | None = None
    to_insert: int | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def method(self) -> str:
        if self.action == "create":
            return "create table and load"
        return f"merge by {self.key_source}" if self.key else "delete all rows, insert all rows"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_schema": self.source_schema,
            "source_table": self.source_table,
            "schema": self.schema,
            "table": self.table,
            "action": self.action,
            "method": self.method,
            "snapshot_rows": self.snapshot_rows,
            "snapshot_bytes": self.snapshot_bytes,
            "live_rows": self.live_rows,
            "key": list(self.key),
            "key_source": self.key_source,
            "to_delete": self.to_delete,
            "to_update": self.to_update,
            "to_insert": self.to_insert,
            "referenced_by": [ref.to_dict() for ref in self.referenced_by],
            "cascade_risks": [ref.to_dict() for ref in self.cascade_risks],
        }


@dataclass
class RestorePlan:
    snapshot_id: str
    snapshot_created_at: datetime
    location: str
    into_schema: str | None
    tables: list[TablePlan]

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "snapshot_created_at": self.snapshot_created_at.isoformat(),
            "location": self.location,
            "into_schema": self.into_schema,
            "tables": [t.to_dict() for t in self.tables],
        }


@dataclass(frozen=True)
class _LiveColumn:
    name: str
    type: str
    type_oid: int
    typmod: int
    generated: bool
    expression: str | None
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)


def relation_of(conn: psycopg.Connection, schema: str, table: str) -> tuple[int, str] | None:
    row = conn.execute(_RELATION_SQL, (schema, table)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _live_columns(conn: psycopg.Connection, oid: int) -> list[_LiveColumn]:
    return [_LiveColumn(*row) for row in conn.execute(_LIVE_COLUMNS_SQL, (oid,)).fetchall()]


def _quote(conn: psycopg.Connection, *names: str) -> str:
    return sql.Identifier(*names).as_string(conn)


def _same_type(conn: psycopg.Connection, live: _LiveColumn, snapshot_type: str) -> bool:
    if live.type == snapshot_type:
        return True
    # The texts can differ only by schema qualification (another search_path at capture time):
    # resolve the snapshot's text to a type oid and modifier (to_regtypemod is PostgreSQL 17+).
    if conn.info.server_version < 170000:
        return False
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT pg_catalog.to_regtype(%s)::oid, pg_catalog.to_regtypemod(%s)",
                (snapshot_type, snapshot_type),
            ).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] == live.type_oid and row[1] == live.typmod


def column_differences(conn: psycopg.Connection, oid: int, tm: TableManifest) -> list[str]:
    """Why the live table cannot take the snapshot's rows (empty: the columns match).

    Names, types and which columns are generated must match; column order does not matter
    (COPY and every statement name the columns). A generated column's data is not copied, but its
    expression must match, or the restored table could not equal the snapshot.
    """
    live = {c.name: c for c in _live_columns(conn, oid)}
    snap = {c.name: c for c in tm.columns}
    problems: list[str] = []
    for name, column in snap.items():
        q = _quote(conn, name)
        found = live.get(name)
        if found is None:
            problems.append(f"column {q} ({column.type}) is missing from the live table")
        elif not _same_type(conn, found, column.type):
            problems.append(f"column {q} is {found.type} in the live table but {column.type} in the snapshot")
        elif found.generated != column.generated:
            where = "the live table" if found.generated else "the snapshot"
            problems.append(f"column {q} is generated only in {where}")
        elif column.generated and found.expression != column.default:
            problems.append(
                f"generated column {q} is computed as {found.expression} in the live table "
                f"but as {column.default} in the snapshot"
            )
    for name, found in live.items():
        if name not in snap:
            problems.append(f"column {_quote(conn, name)} ({found.type}) is not in the snapshot")
    return problems


def _match_key(conn: psycopg.Connection, oid: int, tm: TableManifest) -> tuple[list[str], str]:
    """(key columns, key_source) matching snapshot rows to live rows; ([], "none") without one.

    Called once the columns are known to match, so the types agree; the key columns must also be
    in the COPY data (not generated), since the staging table has only those.
    """
    copied = set(tm.copy_columns)
    for name, primary, columns, not_null, plain in conn.execute(_KEY_CANDIDATES_SQL, (oid,)).fetchall():
        if not_null and plain and set(columns) <= copied:
            return list(columns), "primary key" if primary else f"unique index {_quote(conn, name)}"
    return [], "none"


def _referencing_keys(conn: psycopg.Connection, oid: int) -> list[ReferencingKey]:
    return [
        ReferencingKey(
            name,
            schema,
            table,
            _FK_ACTIONS.get(on_delete) or str(on_delete),
            bool(deferrable),
            _FK_ACTIONS.get(on_update) or str(on_update),
            tuple(referenced),
        )
        for name, schema, table, on_delete, deferrable, on_update, referenced in conn.execute(
            _REFERENCING_SQL, {"oid": oid}
        ).fetchall()
    ]


def _cascade_risks(
    refs: list[ReferencingKey], key: list[str], restored: set[tuple[str, str]]
) -> list[ReferencingKey]:
    """The keys of tables outside `restored` whose actions would change their rows: ON DELETE, and
    ON UPDATE of referenced columns outside `key` (key columns are never updated by a restore)."""
    return [
        ref
        for ref in refs
        if (ref.schema, ref.table) not in restored
        and (
            ref.on_delete in _CHANGING_ACTIONS
            or (ref.on_update in _CHANGING_ACTIONS and not set(ref.referenced_columns) <= set(key))
        )
    ]


def _unmatchable(
    conn: psycopg.Connection, schema: str, table: str, outside: list[ReferencingKey]
) -> RefusedForSafety:
    keys = "; ".join(
        f"{_quote(conn, ref.name)} of {_quote(conn, ref.schema, ref.table)} (ON DELETE {ref.on_delete})"
        for ref in outside
    )
    return RefusedForSafety(
        f"{_quote(conn, schema, table)} has no primary key or usable unique index (unique, not partial, "
        "no expressions, all columns NOT NULL), so its rows cannot be matched with the snapshot's: all "
        "of them would be deleted and re-inserted, and tables that are not being restored reference it: "
        f"{keys}. Their rows would be deleted, nulled or block the restore. Restore those tables in the "
        "same restore, add a primary key, or restore side by side with --into-schema.",
        schema=schema,
        table=table,
        foreign_keys=[ref.to_dict() for ref in outside],
    )


def _row_security_refusal(conn: psycopg.Connection, schema: str, table: str) -> RefusedForSafety:
    return RefusedForSafety(
        f"Row-level security applies to {_quote(conn, schema, table)} for the restoring role: it would "
        "see, and restore, only some of the rows. Restore as the table's owner (without FORCE ROW "
        "LEVEL SECURITY), a superuser or a role with BYPASSRLS.",
        schema=schema,
        table=table,
    )


def _row_security_active(conn: psycopg.Connection, oid: int) -> bool:
    row = conn.execute("SELECT pg_catalog.row_security_active(%s::oid)", (oid,)).fetchone()
    return bool(row and row[0])


def _select_tables(manifest: SnapshotManifest, tables: list[tuple[str, str]] | None) -> list[TableManifest]:
    by_name = {(t.schema_name, t.table_name): t for t in manifest.tables}
    if tables is None:
        return list(manifest.tables)
    if len(set(tables)) != len(tables):
        raise SnapshotError("A table is listed twice")
    missing = [f"{s}.{t}" for s, t in tables if (s, t) not in by_name]
    if missing:
        held = ", ".join(f"{t.schema_name}.{t.table_name}" for t in manifest.tables)
        raise SnapshotError(
            f"Snapshot {manifest.id} does not hold {', '.join(missing)} (it holds: {held})",
            id=manifest.id,
            tables=missing,
        )
    return [by_name[key] for key in tables]


def _missing_types(conn: psycopg.Connection, tm: TableManifest) -> list[str]:
    """Column types of the snapshot that do not exist in the database (dropped enum, domain...)."""
    missing = []
    for column in tm.columns:
        try:
            with conn.transaction():
                row = conn.execute("SELECT pg_catalog.to_regtype(%s)", (column.type,)).fetchone()
        except psycopg.Error:
            row = None
        if row is None or row[0] is None:
            missing.append(f"{_quote(conn, column.name)} {column.type}")
    return missing


def plan_restore(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    tables: list[tuple[str, str]] | None,
    into_schema: str | None,
    *,
    restored_with: Iterable[tuple[str, str]] = (),
) -> RestorePlan:
    """What a restore of `tables` (default: all the snapshot holds) would do; changes nothing.

    `restored_with`: (schema, table) targets that other plans restore in the same transaction
    (restore_many), so foreign keys from them do not count as coming from outside the restore.

    Refuses (RefusedForSafety, exit 3) when a live table's columns differ from the snapshot's,
    when a target of `into_schema` already exists, when a table to create uses a type that no
    longer exists, when row-level security hides rows of a table from this role, or when a table
    without a usable key is referenced by a foreign key from a table outside the restore.
    """
    selected = _select_tables(manifest, tables)
    plans: list[TablePlan] = []
    with conn.transaction():
        for tm in selected:
            schema = into_schema if into_schema is not None else tm.schema_name
            table = tm.table_name
            found = relation_of(conn, schema, table)
            size = sum(f.bytes for f in tm.files)
            if into_schema is not None and found is not None:
                raise RefusedForSafety(
                    f"{_quote(conn, schema, table)} already exists; --into-schema only creates new "
                    "tables. Choose another schema or drop that table first.",
                    schema=schema,
                    table=table,
                )
            if found is None:
                missing = _missing_types(conn, tm)
                if missing:
                    raise RefusedForSafety(
                        f"Cannot recreate {_quote(conn, schema, table)}: column types no longer exist: "
                        f"{'; '.join(missing)}. Create them first (e.g. run the downgrade).",
                        schema=schema,
                        table=table,
                        missing_types=missing,
                    )
                plans.append(
                    TablePlan(
                        tm.schema_name,
                        table,
                        schema,
                        table,
                        "create",
                        tm.row_count,
                        None,
                        key=list(tm.primary_key),
                        key_source="primary key" if tm.primary_key else "none",
                        snapshot_bytes=size,
                    )
                )
                continue
            oid, relkind = found
            if relkind not in ("r", "p"):
                raise RefusedForSafety(
                    f"{_quote(conn, schema, table)} is not a table (relkind {relkind!r}); "
                    "not restoring over it",
                    schema=schema,
                    table=table,
                )
            differences = column_differences(conn, oid, tm)
            if differences:
                raise RefusedForSafety(
                    f"The columns of {_quote(conn, schema, table)} do not match snapshot {manifest.id}: "
                    f"{'; '.join(differences)}. Restore it side by side with --into-schema, "
                    "or run the downgrade first so the table has the snapshot's shape again.",
                    schema=schema,
                    table=table,
                    differences=differences,
                )
            if _row_security_active(conn, oid):
                raise _row_security_refusal(conn, schema, table)
            count = conn.execute(
                sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(sql.Identifier(schema, table))
            ).fetchone()
            assert count is not None
            key, key_source = _match_key(conn, oid, tm)
            plans.append(
                TablePlan(
                    tm.schema_name,
                    table,
                    schema,
                    table,
                    "replace",
                    tm.row_count,
                    int(count[0]),
                    key=key,
                    key_source=key_source,
                    referenced_by=_referencing_keys(conn, oid),
                    snapshot_bytes=size,
                )
            )
    targets = [(p.schema, p.table) for p in plans]
    if len(set(targets)) != len(targets):
        raise SnapshotError(
            f"Two tables of the selection would be restored into the same table in {into_schema}"
        )
    restored = set(targets) | set(restored_with)
    for p in plans:
        outside = [ref for ref in p.referenced_by if (ref.schema, ref.table) not in restored]
        if p.action == "replace" and not p.key and outside:
            raise _unmatchable(conn, p.schema, p.table, outside)
        p.cascade_risks = _cascade_risks(p.referenced_by, p.key, restored)
    return RestorePlan(
        snapshot_id=manifest.id,
        snapshot_created_at=manifest.created_at,
        location=store.snapshot_location(manifest.id),
        into_schema=into_schema,
        tables=plans,
    )


# -- restore ----------------------------------------------------------------------------------------


@dataclass
class SequenceSet:
    sequence: str  # schema.name
    column: str
    last_value: int | None  # after the restore
    advanced: bool  # False: it was already past the restored values, and was left alone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SkippedDefault:
    column: str
    default: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cascade:
    """A foreign key action that the restore of a table sets off in a table it does not restore."""

    constraint: str
    schema: str  # the referencing table
    table: str
    event: Literal["delete", "update"]
    action: str  # CASCADE, SET NULL, SET DEFAULT
    # Rows of the restored table deleted ("delete"), or updated with other values in the
    # referenced columns ("update"); how many referencing rows that touched is not counted.
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, conn: psycopg.Connection, restored: str) -> str:
        verb = "deletes" if self.event == "delete" else "changes the referenced columns of"
        return (
            f"restoring {restored} {verb} {self.rows} row(s), and foreign key "
            f"{_quote(conn, self.constraint)} of {_quote(conn, self.schema, self.table)} is "
            f"ON {self.event.upper()} {self.action}"
        )


@dataclass
class TableRestoreResult:
    schema: str
    table: str
    action: Action
    rows_restored: int
    deleted: int = 0
    updated: int = 0
    inserted: int = 0
    sequences_set: list[SequenceSet] = field(default_factory=list)
    skipped_defaults: list[SkippedDefault] = field(default_factory=list)
    checksum_verified: bool = False
    attempts: int = 1
    key_source: str = "none"
    # Foreign key actions it set off in tables outside the restore (only with allow_cascade).
    cascades: list[Cascade] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "action": self.action,
            "rows_restored": self.rows_restored,
            "deleted": self.deleted,
            "updated": self.updated,
            "inserted": self.inserted,
            "sequences_set": [s.to_dict() for s in self.sequences_set],
            "skipped_defaults": [s.to_dict() for s in self.skipped_defaults],
            "checksum_verified": self.checksum_verified,
            "attempts": self.attempts,
            "key_source": self.key_source,
            "cascades": [c.to_dict() for c in self.cascades],
        }


@dataclass
class RestoreTarget:
    """One table of a restore_many, with the snapshot and plan it comes from."""

    snapshot_id: str
    plan: RestorePlan
    p: TablePlan
    tm: TableManifest

    @property
    def name(self) -> tuple[str, str]:
        return (self.p.schema, self.p.table)


def _execute_single(conn: psycopg.Connection, query: sql.Composed) -> None:
    """Run one statement over the extended protocol, which refuses a second statement.

    Used for DDL that embeds type names and expressions read from a manifest: text from a
    tampered manifest cannot smuggle in another command.
    """
    with conn.cursor(binary=True) as cur:
        cur.execute(query)


def _backoff(attempt: int) -> float:
    return float(min(_BACKOFF_FIRST * 2 ** (attempt - 1), _BACKOFF_MAX))


def _corrupt(manifest: SnapshotManifest, problems: list[str]) -> SnapshotCorrupt:
    names = {entry.name for t in manifest.tables for entry in t.files}
    files = sorted({p.split(":", 1)[0] for p in problems} & names)
    return SnapshotCorrupt(
        f"Snapshot {manifest.id} is damaged; nothing was restored: " + "; ".join(problems),
        id=manifest.id,
        files=files,
        problems=problems,
    )


def _snapshots_text(ids: list[str]) -> str:
    return f"snapshot {ids[0]}" if len(ids) == 1 else f"snapshots {', '.join(ids)}"


def _failure(exc: psycopg.Error, ids: list[str], tables: list[str]) -> DbrollbackError:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    fields: dict[str, Any] = {"sqlstate": exc.sqlstate, "tables": tables}
    if diag.constraint_name:
        fields["constraint"] = diag.constraint_name
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        on = f"{diag.schema_name}.{diag.table_name}" if diag.table_name else "another table"
        text = (
            f"foreign key constraint {diag.constraint_name} on {on} would be violated: {text}. "
            "Restore the referencing table too (in the same restore), or fix the referencing rows first"
        )
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege) and "row-level security" in text:
        # row_security is off in the restore: a policy that would filter rows (on a restored
        # table, or on a table a trigger or cascade touches) is an error, not a silent subset.
        return RefusedForSafety(
            f"Restore of {_snapshots_text(ids)} refused and rolled back; the live tables are unchanged: "
            f"{text}. Row-level security would hide rows from the restoring role; restore as the "
            "table owner (without FORCE ROW LEVEL SECURITY), a superuser or a role with BYPASSRLS.",
            **fields,
        )
    return RestoreFailed(
        f"Restore of {_snapshots_text(ids)} failed and was rolled back; the live tables are "
        f"unchanged: {text}",
        **fields,
    )


def restore_tables(
    conn_url: str,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    plan: RestorePlan,
    *,
    lock_timeout: str = "5s",
    retries: int = 5,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    allow_cascade: bool = False,
) -> list[TableRestoreResult]:
    """Carry out `plan` in one transaction; returns one result per table, in plan order.

    The same as restore_many with one (manifest, plan) item; see there.
    """
    return restore_many(
        conn_url,
        store,
        [(manifest, plan)],
        lock_timeout=lock_timeout,
        retries=retries,
        progress=progress,
        sleep=sleep,
        allow_cascade=allow_cascade,
    )


def restore_many(
    conn_url: str,
    store: SnapshotStore,
    items: list[tuple[SnapshotManifest, RestorePlan]],
    *,
    lock_timeout: str = "5s",
    retries: int = 5,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    allow_cascade: bool = False,
) -> list[TableRestoreResult]:
    """Carry out the plans of one or more snapshots in ONE transaction: all tables or none.

    Returns one result per table, in item order then plan order. `progress(qualified_target, n)`
    is called while each table's data loads: n more stored (compressed) bytes of its snapshot
    files were loaded; per table they add up to TablePlan.snapshot_bytes.
    A lock that stays busy is retried `retries` times (so up to retries + 1 attempts) with
    exponential backoff, then the restore is refused (RefusedForSafety, nothing changed).
    Deleting rows that foreign keys of tables outside the restore reference with ON DELETE
    CASCADE / SET NULL / SET DEFAULT (or changing referenced columns under such an ON UPDATE) is
    refused (RefusedForSafety, nothing changed) unless `allow_cascade`; the results list it.
    Any other database error rolls everything back and raises RestoreFailed.
    Note: moving a sequence forward (setval) cannot be rolled back by PostgreSQL; it is done last,
    after the checksums matched, and only ever moves forward.
    """
    targets: list[RestoreTarget] = []
    for manifest, plan in items:
        if plan.snapshot_id != manifest.id:
            raise SnapshotError(f"The plan is for snapshot {plan.snapshot_id}, not {manifest.id}")
        held = {(t.schema_name, t.table_name): t for t in manifest.tables}
        for p in plan.tables:
            tm = held.get((p.source_schema, p.source_table))
            if tm is None:
                raise SnapshotError(
                    f"Snapshot {manifest.id} does not hold {p.source_schema}.{p.source_table}",
                    id=manifest.id,
                )
            targets.append(RestoreTarget(manifest.id, plan, p, tm))
    names = [t.name for t in targets]
    twice = sorted({f"{s}.{n}" for s, n in names if names.count((s, n)) > 1})
    if twice:
        raise SnapshotError(f"A restore cannot restore a table twice: {', '.join(twice)}", tables=twice)
    ids = list(dict.fromkeys(manifest.id for manifest, _ in items))
    verified: set[str] = set()
    for manifest, _ in items:  # every file is re-read before the database is touched
        if manifest.id not in verified:
            problems = store.verify(manifest.id)
            if problems:
                raise _corrupt(manifest, problems)
            verified.add(manifest.id)
    if not targets:
        return []
    qualified = [t.p.qualified for t in targets]
    try:
        conn = psycopg.connect(
            conn_url, autocommit=True, application_name=f"dbrollback {__version__} restore"
        )
    except psycopg.Error as exc:
        raise ConnectionFailed(f"Cannot connect for a restore: {redact(str(exc)).strip()}") from None
    with conn:
        if conn.info.server_version >= 140000:
            # A killed client is noticed even while its backend waits for a lock or runs a long
            # statement, so the transaction is rolled back promptly instead of running on.
            with contextlib.suppress(psycopg.Error):  # not supported on every platform
                conn.execute("SET client_connection_check_interval = '1s'")
        committing = False
        try:
            with conn.transaction():
                results = _restore(
                    conn, store, targets, lock_timeout, retries, progress, sleep, allow_cascade
                )
                committing = True
            return results
        except DbrollbackError:
            raise
        except psycopg.OperationalError as exc:
            if not committing:
                raise _failure(exc, ids, qualified) from None
            # The connection broke during COMMIT: the server may or may not have committed.
            raise RestoreFailed(
                f"The connection was lost while committing the restore of {_snapshots_text(ids)}; "
                "it may or may not have been applied. Compare the tables with the snapshot (verify) "
                f"before anything else: {redact(str(exc)).strip()}",
                outcome="unknown",
                tables=qualified,
            ) from None
        except psycopg.Error as exc:
            raise _failure(exc, ids, qualified) from None


def _restore(
    conn: psycopg.Connection,
    store: SnapshotStore,
    targets: list[RestoreTarget],
    lock_timeout: str,
    retries: int,
    progress: Progress | None,
    sleep: Callable[[float], None],
    allow_cascade: bool,
) -> list[TableRestoreResult]:
    """Everything inside the caller's transaction; the caller commits."""
    results: dict[tuple[str, str], TableRestoreResult] = {}
    replaces = [t for t in targets if t.p.action == "replace"]
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
    # A role subject to row-level security gets an error instead of seeing (and restoring) a
    # subset of the rows; superusers, BYPASSRLS roles and owners without FORCE are unaffected.
    conn.execute("SET LOCAL row_security = off")
    for t in targets:
        if t.p.action == "create":
            results[t.name] = create_from_snapshot(conn, store, t, progress)
    staging: dict[tuple[str, str], str] = {}
    for number, t in enumerate(replaces, start=1):
        staging[t.name] = _stage(conn, store, t, number, progress)
    if replaces:
        ordered = parents_first(conn, replaces)
        restored = {t.name for t in targets}
        attempt = 0
        while True:
            attempt += 1
            try:
                # A savepoint: a lock timeout undoes only the swap; staging data is kept.
                with conn.transaction():
                    counts = swap_in_staged_rows(conn, ordered, staging, restored, allow_cascade)
                break
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                if attempt > retries:
                    names = ", ".join(t.p.qualified for t in replaces)
                    raise RefusedForSafety(
                        f"Gave up after {attempt} attempts: {names} stayed locked by other sessions "
                        f"(lock_timeout {lock_timeout}; {exc.diag.message_primary}). Nothing was "
                        "changed; retry when the table is less busy or with a longer lock timeout.",
                        attempts=attempt,
                        tables=[t.p.qualified for t in replaces],
                    ) from None
                sleep(_backoff(attempt))
        for t in replaces:
            p = t.p
            _verify_checksum(conn, p.schema, p.table, t.tm)
            deleted, updated, inserted, cascades = counts[t.name]
            p.to_delete, p.to_update, p.to_insert = deleted, updated, inserted
            results[t.name] = TableRestoreResult(
                schema=p.schema,
                table=p.table,
                action="replace",
                rows_restored=t.tm.row_count,
                deleted=deleted,
                updated=updated,
                inserted=inserted,
                checksum_verified=True,
                attempts=attempt,
                key_source=p.key_source,
                cascades=cascades,
            )
        # Last, after every check passed: setval is not undone by a rollback.
        for t in replaces:
            results[t.name].sequences_set = advance_sequences(conn, t.p.schema, t.p.table)
    return [results[t.name] for t in targets]


def _verify_checksum(conn: psycopg.Connection, schema: str, table: str, tm: TableManifest) -> None:
    # The manifest's checksum covers every column, generated ones included, in the captured
    # order; naming the columns makes it comparable even if the live column order differs.
    # Checking the live table itself (not the staging copy, which has no generated columns)
    # also catches triggers or rules that changed rows during the swap.
    got = table_checksum(conn, schema, table, columns=[c.name for c in tm.columns])
    if got != (tm.row_count, tm.checksum):
        raise RestoreFailed(
            f"{_quote(conn, schema, table)} would hold {got[0]} rows (checksum {got[1]}) after the restore, "
            f"but the snapshot has {tm.row_count} rows (checksum {tm.checksum}); rolled back, the live "
            "table is unchanged. A trigger or rule on the table may have changed rows.",
            schema=schema,
            table=table,
            expected=[tm.row_count, tm.checksum],
            actual=list(got),
        )


def _columns(names: Iterable[str], alias: str | None = None) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)


def _load(
    conn: psycopg.Connection,
    store: SnapshotStore,
    t: RestoreTarget,
    schema: str,
    table: str,
    progress: Progress | None,
) -> int:
    """COPY the snapshot's rows of `t` into schema.table, reporting progress; checks the count.

    The table was created in this transaction, at its top level (no savepoint open): COPY FREEZE
    writes the rows already frozen, which spares the checksum scan and index build that follow
    the hint-bit writes (and VACUUM the freezing) later.
    """
    qualified = t.p.qualified
    on_bytes = None if progress is None else (lambda n: progress(qualified, n))
    rows = load_table_copy(conn, store, t.snapshot_id, t.tm, schema, table, on_bytes=on_bytes, freeze=True)
    if rows != t.tm.row_count:
        raise SnapshotCorrupt(
            f"Snapshot {t.snapshot_id}: {t.tm.schema_name}.{t.tm.table_name} loaded {rows} rows, "
            f"the manifest says {t.tm.row_count}",
            id=t.snapshot_id,
            expected=t.tm.row_count,
            actual=rows,
        )
    return rows


def _stage(
    conn: psycopg.Connection, store: SnapshotStore, t: RestoreTarget, number: int, progress: Progress | None
) -> str:
    """Load the snapshot of one table into a TEMP staging table; returns its name."""
    name = f"{STAGING_PREFIX}{number}"
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
        for c in t.tm.columns
        if not c.generated
    )
    _execute_single(
        conn,
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(sql.Identifier(name), definition),
    )
    # The staging copy has no generated columns, so its checksum cannot be compared with the
    # manifest's (which covers them); the count is checked here and the full checksum on the
    # live table after the swap, before COMMIT.
    _load(conn, store, t, "pg_temp", name, progress)
    # Temporary tables are never analyzed by autovacuum: give the planner real numbers.
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("pg_temp", name)))
    return name


def parents_first(conn: psycopg.Connection, targets: list[RestoreTarget]) -> list[RestoreTarget]:
    """The tables ordered so that a table comes after the restored tables it references."""
    for t in targets:
        if relation_of(conn, t.p.schema, t.p.table) is None:
            raise RestoreFailed(f"{_quote(conn, t.p.schema, t.p.table)} no longer exists", schema=t.p.schema)
    return order_parents_first(conn, targets, lambda t: (t.p.schema, t.p.table))


_Item = TypeVar("_Item")


def order_parents_first(
    conn: psycopg.Connection, items: list[_Item], table_of: Callable[[_Item], tuple[str, str]]
) -> list[_Item]:
    """`items` ordered so that each comes after the items whose tables its table references by a
    foreign key (a cycle keeps the given order for the rest); items of tables that do not exist
    (or several items of one table) keep their given order among themselves."""
    oids: list[int | None] = []
    for item in items:
        found = relation_of(conn, *table_of(item))
        oids.append(found[0] if found else None)
    known = [o for o in oids if o is not None]
    parents: dict[int, set[int]] = {o: set() for o in known}
    for child, parent in conn.execute(_FK_EDGES_SQL, {"oids": known}).fetchall():
        parents[child].add(parent)
    placed: set[int | None] = set()

    def ready(i: int) -> bool:
        oid = oids[i]
        return oid is None or parents[oid] <= placed

    order: list[int] = []  # indexes into items
    while len(order) < len(items):
        waiting = [i for i in range(len(items)) if i not in order]
        chosen = next((i for i in waiting if ready(i)), waiting[0])
        order.append(chosen)
        placed.add(oids[chosen])
    return [items[i] for i in order]


def _key_match(key: list[str], left: str, right: str) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in key
    )


def _count(conn: psycopg.Connection, query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return 0 if row is None else int(row[0])


def _cascades(
    conn: psycopg.Connection, p: TablePlan, oid: int, stage: str, restored: set[tuple[str, str]]
) -> list[Cascade]:
    """What deleting/updating p's rows would set off in tables outside the restore (under the lock,
    so foreign keys cannot be added meanwhile). Refuses a table without a key referenced from there."""
    refs = _referencing_keys(conn, oid)
    outside = [ref for ref in refs if (ref.schema, ref.table) not in restored]
    if outside and not p.key:
        raise _unmatchable(conn, p.schema, p.table, outside)
    target, staged = sql.Identifier(p.schema, p.table), sql.Identifier("pg_temp", stage)
    found: list[Cascade] = []
    deleted: int | None = None
    for ref in _cascade_risks(refs, p.key, restored):
        if ref.on_delete in _CHANGING_ACTIONS:
            if deleted is None:
                deleted = _count(
                    conn,
                    sql.SQL(
                        "SELECT count(*) FROM {} AS l WHERE NOT EXISTS (SELECT FROM {} AS s WHERE {})"
                    ).format(target, staged, _key_match(p.key, "s", "l")),
                )
            if deleted:
                found.append(Cascade(ref.name, ref.schema, ref.table, "delete", ref.on_delete, deleted))
        if ref.on_update in _CHANGING_ACTIONS and not set(ref.referenced_columns) <= set(p.key):
            changed = _count(
                conn,
                sql.SQL("SELECT count(*) FROM {} AS l JOIN {} AS s ON {} WHERE {}").format(
                    target,
                    staged,
                    _key_match(p.key, "l", "s"),
                    _differ(list(ref.referenced_columns)),
                ),
            )
            if changed:
                found.append(Cascade(ref.name, ref.schema, ref.table, "update", ref.on_update, changed))
    return found


def swap_in_staged_rows(
    conn: psycopg.Connection,
    ordered: list[RestoreTarget],
    staging: dict[tuple[str, str], str],
    restored: set[tuple[str, str]],
    allow_cascade: bool,
) -> dict[tuple[str, str], tuple[int, int, int, list[Cascade]]]:
    """Make the live tables equal to their staging copies; returns (deleted, updated, inserted,
    cascades) per table."""
    # SHARE ROW EXCLUSIVE: conflicts with every writer and with itself (two restores), not with
    # readers. One statement in a fixed order, so two restores cannot deadlock over the order.
    # It also keeps foreign keys from being added to the tables until COMMIT.
    names = sorted(t.name for t in ordered)
    conn.execute(
        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(s, t) for s, t in names)
        )
    )
    live: dict[tuple[str, str], list[_LiveColumn]] = {}
    cascades: dict[tuple[str, str], list[Cascade]] = {}
    for t in ordered:
        p = t.p
        found = relation_of(conn, p.schema, p.table)
        differences = (
            ["the table no longer exists"] if found is None else column_differences(conn, found[0], t.tm)
        )
        if found is not None and not differences and _match_key(conn, found[0], t.tm)[0] != p.key:
            differences = [f"its key is no longer {p.key_source} ({', '.join(p.key) or 'none'})"]
        if differences:
            raise RefusedForSafety(
                f"{_quote(conn, p.schema, p.table)} changed since the restore was planned: "
                f"{'; '.join(differences)}. Nothing was changed.",
                schema=p.schema,
                table=p.table,
                differences=differences,
            )
        assert found is not None
        if _row_security_active(conn, found[0]):
            raise _row_security_refusal(conn, p.schema, p.table)
        live[t.name] = _live_columns(conn, found[0])
        cascades[t.name] = _cascades(conn, p, found[0], staging[t.name], restored)
    blocked = [(t, c) for t in ordered for c in cascades[t.name]]
    if blocked and not allow_cascade:
        raise RefusedForSafety(
            "Refusing to change tables that are not being restored: "
            + "; ".join(c.describe(conn, _quote(conn, *t.name)) for t, c in blocked)
            + ". Their referencing rows would be deleted, nulled or reset. Restore those tables in the "
            "same restore, or allow it explicitly (--allow-cascade). Nothing was changed.",
            cascades=[{"restored_table": t.p.qualified, **c.to_dict()} for t, c in blocked],
        )
    # Deferrable constraints are checked once, after all tables are restored (then IMMEDIATE
    # below, so a violation surfaces here rather than at COMMIT).
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    counts = {t.name: [0, 0, 0] for t in ordered}
    # Children first for deletes, parents first for updates and inserts: rows that a restored
    # child stops referencing are gone before its parent's rows are deleted, and parent rows
    # exist before restored children point at them.
    for t in reversed(ordered):
        counts[t.name][0] = _delete(conn, t.p, staging[t.name])
    for t in ordered:
        columns, stage = live[t.name], staging[t.name]
        counts[t.name][1] = _update(conn, t.p, t.tm, columns, stage)
        counts[t.name][2] = _insert(conn, t.p, t.tm, columns, stage)
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return {k: (v[0], v[1], v[2], cascades[k]) for k, v in counts.items()}


def _delete(conn: psycopg.Connection, p: TablePlan, stage: str) -> int:
    target = sql.Identifier(p.schema, p.table)
    if not p.key:
        # Only reached when no table outside the restore references this one (checked above).
        cur = conn.execute(sql.SQL("DELETE FROM {}").format(target))
    else:
        cur = conn.execute(
            sql.SQL("DELETE FROM {} AS l WHERE NOT EXISTS (SELECT FROM {} AS s WHERE {})").format(
                target, sql.Identifier("pg_temp", stage), _key_match(p.key, "s", "l")
            )
        )
    return max(cur.rowcount, 0)


def _differ(names: list[str]) -> sql.Composed:
    # record_image_ne compares the stored bytes: 1.5 vs 1.50, json whitespace, -0 vs 0 all count
    # as changes (equality would not see them), and types without an equality operator (json,
    # xml, point) work too. NULLs compare equal to NULLs.
    return sql.SQL("pg_catalog.record_image_ne(ROW({}), ROW({}))").format(
        _columns(names, "l"), _columns(names, "s")
    )


def _update(
    conn: psycopg.Connection, p: TablePlan, tm: TableManifest, live: list[_LiveColumn], stage: str
) -> int:
    if not p.key:
        return 0
    identity = {c.name: c.identity for c in live}
    values = [n for n in tm.copy_columns if n not in p.key]
    if not values:
        return 0
    target = sql.Identifier(p.schema, p.table)
    staged = sql.Identifier("pg_temp", stage)

    # An identity ALWAYS column can only be UPDATEd to DEFAULT. Where such a value differs, the
    # column is switched to BY DEFAULT for this transaction and back (ACCESS EXCLUSIVE briefly).
    always = [n for n in values if identity.get(n) == "a"]
    switched: list[str] = []
    if always:
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {} AS l JOIN {} AS s ON {} WHERE {})").format(
                target, staged, _key_match(p.key, "l", "s"), _differ(always)
            )
        ).fetchone()
        if row is not None and row[0]:
            switched = always
        for name in switched:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET GENERATED BY DEFAULT").format(
                    target, sql.Identifier(name)
                )
            )
    settable = [n for n in values if identity.get(n) != "a" or n in switched]
    # Not a hash join: one too big for work_mem runs in batches, each updating rows spread over the
    # whole table, so with checkpoints in between every page is written to the WAL again and again
    # (measured on 5M rows: 158 s and 32 GB of WAL). A merge join on the key updates in key order,
    # close to physical order for most tables (1M rows, frequent checkpoints: 4.4 GB -> 0.4 GB WAL).
    conn.execute("SET LOCAL enable_hashjoin = off")
    cur = conn.execute(
        sql.SQL("UPDATE {} AS l SET {} FROM {} AS s WHERE {} AND {}").format(
            target,
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(n), sql.Identifier("s", n)) for n in settable
            ),
            staged,
            _key_match(p.key, "s", "l"),
            _differ(values),
        )
    )
    conn.execute("SET LOCAL enable_hashjoin TO DEFAULT")
    for name in switched:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET GENERATED ALWAYS").format(
                target, sql.Identifier(name)
            )
        )
    return max(cur.rowcount, 0)


def _insert(
    conn: psycopg.Connection, p: TablePlan, tm: TableManifest, live: list[_LiveColumn], stage: str
) -> int:
    columns = tm.copy_columns  # generated columns are computed by the server
    overriding = sql.SQL(" OVERRIDING SYSTEM VALUE" if any(c.identity == "a" for c in live) else "")
    query = sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} AS s").format(
        sql.Identifier(p.schema, p.table),
        _columns(columns),
        overriding,
        _columns(columns, "s"),
        sql.Identifier("pg_temp", stage),
    )
    if p.key:
        query = sql.SQL("{} WHERE NOT EXISTS (SELECT FROM {} AS l WHERE {})").format(
            query, sql.Identifier(p.schema, p.table), _key_match(p.key, "l", "s")
        )
    return max(conn.execute(query).rowcount, 0)


def advance_sequences(conn: psycopg.Connection, schema: str, table: str) -> list[SequenceSet]:
    """Move each sequence owned by a column past the restored values; never backwards."""
    found = relation_of(conn, schema, table)
    assert found is not None
    done: list[SequenceSet] = []
    for seq_oid, seq_schema, seq_name, column, increment in conn.execute(
        _OWNED_SEQUENCES_SQL, (found[0],)
    ).fetchall():
        # A descending sequence must end up at or below the smallest value instead.
        extreme = "max" if increment > 0 else "min"
        row = conn.execute(
            sql.SQL("SELECT pg_catalog.{}({}) FROM {}").format(
                sql.SQL(extreme), sql.Identifier(column), sql.Identifier(schema, table)
            )
        ).fetchone()
        restored = None if row is None or row[0] is None else int(row[0])
        state = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq_schema, seq_name))
        ).fetchone()
        assert state is not None
        last_value, is_called = int(state[0]), bool(state[1])
        behind = restored is not None and (
            (restored > last_value if increment > 0 else restored < last_value)
            or (restored == last_value and not is_called)
        )
        if behind:
            conn.execute("SELECT pg_catalog.setval(%s::oid::regclass, %s, true)", (seq_oid, restored))
        done.append(
            SequenceSet(
                sequence=f"{seq_schema}.{seq_name}",
                column=column,
                last_value=restored if behind else (last_value if is_called else None),
                advanced=behind,
            )
        )
    return done


def create_from_snapshot(
    conn: psycopg.Connection, store: SnapshotStore, t: RestoreTarget, progress: Progress | None
) -> TableRestoreResult:
    """CREATE the table from the manifest, COPY the rows in, add the primary key, verify.

    Built from the manifest rather than with CREATE TABLE ... (LIKE live): the live table may be
    gone, or have another shape (the usual reason to restore side by side), and a side-by-side
    copy must not share anything with it. So what comes back is: columns with their types,
    NOT NULL, defaults that still resolve, generated columns (as STORED), and the primary key.
    Indexes, other constraints, identity, triggers and grants are not in the manifest.
    """
    p, tm = t.p, t.tm
    target = sql.Identifier(p.schema, p.table)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(p.schema)))
    definition: list[sql.Composable] = []
    for c in tm.columns:
        parts: list[sql.Composable] = [sql.Identifier(c.name), sql.SQL(c.type)]
        if c.generated:
            parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(c.default or "NULL")))
        if not c.nullable:
            parts.append(sql.SQL("NOT NULL"))
        definition.append(sql.SQL(" ").join(parts))
    try:
        _execute_single(conn, sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(definition)))
    except psycopg.errors.DuplicateTable:
        raise RefusedForSafety(
            f"{_quote(conn, p.schema, p.table)} was created by someone else since the restore was planned",
            schema=p.schema,
            table=p.table,
        ) from None
    skipped: list[SkippedDefault] = []
    for c in tm.columns:
        if c.generated or c.default is None:
            continue
        if t.plan.into_schema is not None and "nextval(" in c.default:
            # It would draw from (and depend on) the live table's sequence.
            skipped.append(SkippedDefault(c.name, c.default, "would share the live table's sequence"))
            continue
        try:
            # SET DEFAULT resolves the expression (functions, sequences, casts) without running
            # it, so trying it consumes no sequence value.
            with conn.transaction():
                _execute_single(
                    conn,
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                        target, sql.Identifier(c.name), sql.SQL(c.default)
                    ),
                )
        except psycopg.Error as exc:
            skipped.append(SkippedDefault(c.name, c.default, exc.diag.message_primary or str(exc).strip()))
    rows = _load(conn, store, t, p.schema, p.table, progress)
    if tm.primary_key:
        # Built once over the loaded rows: faster than maintaining the index row by row.
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, _columns(tm.primary_key)))
    _verify_checksum(conn, p.schema, p.table, tm)
    p.to_delete, p.to_update, p.to_insert = 0, 0, rows
    return TableRestoreResult(
        schema=p.schema,
        table=p.table,
        action="create",
        rows_restored=rows,
        inserted=rows,
        skipped_defaults=skipped,
        checksum_verified=True,
        key_source=p.key_source,
    )


# -- picking snapshots by time ----------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    # A naive time is the local time of this machine (what a person typing it means).
    return moment if moment.tzinfo is not None else moment.astimezone()


def pick_snapshots_at(
    manifests: list[SnapshotManifest], at: datetime, tables: list[tuple[str, str]] | None
) -> dict[tuple[str, str], SnapshotManifest]:
    """For each table, the newest snapshot taken at or before `at` that holds it.

    `tables` None: every table held by some snapshot taken at or before `at`. A requested table
    without such a snapshot is an error naming the earliest time one is available.
    """
    moment = _aware(at)
    holding: dict[tuple[str, str], list[SnapshotManifest]] = {}
    for m in manifests:
        for t in m.tables:
            holding.setdefault((t.schema_name, t.table_name), []).append(m)

    def taken(m: SnapshotManifest) -> datetime:
        return m.created_at if m.created_at.tzinfo is not None else m.created_at.replace(tzinfo=timezone.utc)

    if tables is None:
        wanted = sorted(k for k, ms in holding.items() if any(taken(m) <= moment for m in ms))
        if not wanted:
            earliest = min((taken(m) for m in manifests), default=None)
            after = f"; the earliest is from {earliest.isoformat()}" if earliest else " (there are none)"
            raise SnapshotError(f"No snapshot was taken at or before {moment.isoformat()}{after}")
    else:
        wanted = list(tables)
    chosen: dict[tuple[str, str], SnapshotManifest] = {}
    for key in wanted:
        candidates = holding.get(key, [])
        before = [m for m in candidates if taken(m) <= moment]
        name = f"{key[0]}.{key[1]}"
        if not before:
            if candidates:
                earliest = min(taken(m) for m in candidates)
                raise SnapshotError(
                    f"No snapshot of {name} was taken at or before {moment.isoformat()}; the earliest "
                    f"one holding it is from {earliest.isoformat()}",
                    table=name,
                    earliest=earliest.isoformat(),
                )
            raise SnapshotError(f"No snapshot holds {name}", table=name)
        chosen[key] = max(before, key=lambda m: (taken(m), m.id))
    return chosen
