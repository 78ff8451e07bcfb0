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
from typing import Any, Literal

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
from dbrollback.snapshot.capture import primary_key_columns
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore
from dbrollback.urls import redact

STAGING_PREFIX = f"{OBJECT_PREFIX}stage_"
Action = Literal["replace", "create"]
Progress = Callable[[str, int], None]

_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
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

# conparentid = 0: a foreign key to a partitioned table is listed once, not once per partition.
_REFERENCING_SQL = """
SELECT c.conname, n.nspname, r.relname, c.confdeltype, c.condeferrable
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
WHERE c.contype = 'f' AND c.confrelid = %s AND c.conparentid = 0
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    referenced_by: list[ReferencingKey] = field(default_factory=list)
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
        return "merge by primary key" if self.key else "delete all rows, insert all rows"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_schema": self.source_schema,
            "source_table": self.source_table,
            "schema": self.schema,
            "table": self.table,
            "action": self.action,
            "method": self.method,
            "snapshot_rows": self.snapshot_rows,
            "live_rows": self.live_rows,
            "key": list(self.key),
            "to_delete": self.to_delete,
            "to_update": self.to_update,
            "to_insert": self.to_insert,
            "referenced_by": [ref.to_dict() for ref in self.referenced_by],
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


def _relation(conn: psycopg.Connection, schema: str, table: str) -> tuple[int, str] | None:
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


def _column_differences(conn: psycopg.Connection, oid: int, tm: TableManifest) -> list[str]:
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


def _referencing_keys(conn: psycopg.Connection, oid: int) -> list[ReferencingKey]:
    return [
        ReferencingKey(name, schema, table, _ON_DELETE.get(action) or str(action), bool(deferrable))
        for name, schema, table, action, deferrable in conn.execute(_REFERENCING_SQL, (oid,)).fetchall()
    ]


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
) -> RestorePlan:
    """What a restore of `tables` (default: all the snapshot holds) would do; changes nothing.

    Refuses (RefusedForSafety, exit 3) when a live table's columns differ from the snapshot's,
    when a target of `into_schema` already exists, or when a table to create uses a type that no
    longer exists.
    """
    selected = _select_tables(manifest, tables)
    plans: list[TablePlan] = []
    with conn.transaction():
        for tm in selected:
            schema = into_schema if into_schema is not None else tm.schema_name
            table = tm.table_name
            found = _relation(conn, schema, table)
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
            differences = _column_differences(conn, oid, tm)
            if differences:
                raise RefusedForSafety(
                    f"The columns of {_quote(conn, schema, table)} do not match snapshot {manifest.id}: "
                    f"{'; '.join(differences)}. Restore it side by side with --into-schema, "
                    "or run the downgrade first so the table has the snapshot's shape again.",
                    schema=schema,
                    table=table,
                    differences=differences,
                )
            count = conn.execute(
                sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(sql.Identifier(schema, table))
            ).fetchone()
            assert count is not None
            # Rows are matched by the primary key only when both sides have the same one.
            key = (
                list(tm.primary_key)
                if tm.primary_key and primary_key_columns(conn, oid) == tm.primary_key
                else []
            )
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
                    referenced_by=_referencing_keys(conn, oid),
                )
            )
    targets = [(p.schema, p.table) for p in plans]
    if len(set(targets)) != len(targets):
        raise SnapshotError(
            f"Two tables of the selection would be restored into the same table in {into_schema}"
        )
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
        }


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


def _failure(exc: psycopg.Error, plan: RestorePlan) -> RestoreFailed:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    fields: dict[str, Any] = {"sqlstate": exc.sqlstate, "tables": [t.qualified for t in plan.tables]}
    if diag.constraint_name:
        fields["constraint"] = diag.constraint_name
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        on = f"{diag.schema_name}.{diag.table_name}" if diag.table_name else "another table"
        text = (
            f"foreign key constraint {diag.constraint_name} on {on} would be violated: {text}. "
            "Restore the referencing table too (in the same restore), or fix the referencing rows first"
        )
    return RestoreFailed(
        f"Restore of snapshot {plan.snapshot_id} failed and was rolled back; the live tables are "
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
) -> list[TableRestoreResult]:
    """Carry out `plan` in one transaction; returns one result per table, in plan order.

    `progress(qualified_target, rows)` is called once per table when its rows are loaded.
    A lock that stays busy is retried `retries` times (so up to retries + 1 attempts) with
    exponential backoff, then the restore is refused (RefusedForSafety, nothing changed). Any other
    database error rolls everything back and raises RestoreFailed.
    Note: moving a sequence forward (setval) cannot be rolled back by PostgreSQL; it is done last,
    after the checksums matched, and only ever moves forward.
    """
    if plan.snapshot_id != manifest.id:
        raise SnapshotError(f"The plan is for snapshot {plan.snapshot_id}, not {manifest.id}")
    problems = store.verify(manifest.id)
    if problems:
        raise _corrupt(manifest, problems)
    if not plan.tables:
        return []
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
                results = _restore(conn, store, manifest, plan, lock_timeout, retries, progress, sleep)
                committing = True
            return results
        except DbrollbackError:
            raise
        except psycopg.OperationalError as exc:
            if not committing:
                raise _failure(exc, plan) from None
            # The connection broke during COMMIT: the server may or may not have committed.
            raise RestoreFailed(
                f"The connection was lost while committing the restore of snapshot {plan.snapshot_id}; "
                "it may or may not have been applied. Compare the tables with the snapshot (verify) "
                f"before anything else: {redact(str(exc)).strip()}",
                outcome="unknown",
                tables=[t.qualified for t in plan.tables],
            ) from None
        except psycopg.Error as exc:
            raise _failure(exc, plan) from None


def _restore(
    conn: psycopg.Connection,
    store: SnapshotStore,
    manifest: SnapshotManifest,
    plan: RestorePlan,
    lock_timeout: str,
    retries: int,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> list[TableRestoreResult]:
    """Everything inside the caller's transaction; the caller commits."""
    manifests = {(t.schema_name, t.table_name): t for t in manifest.tables}
    results: dict[tuple[str, str], TableRestoreResult] = {}
    replaces = [p for p in plan.tables if p.action == "replace"]
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
    for p in plan.tables:
        if p.action == "create":
            tm = manifests[(p.source_schema, p.source_table)]
            results[(p.schema, p.table)] = _create(conn, store, manifest.id, tm, p, plan, progress)
    staging: dict[tuple[str, str], str] = {}
    for number, p in enumerate(replaces, start=1):
        tm = manifests[(p.source_schema, p.source_table)]
        staging[(p.schema, p.table)] = _stage(conn, store, manifest.id, tm, p, number, progress)
    if replaces:
        ordered = _parents_first(conn, replaces)
        attempt = 0
        while True:
            attempt += 1
            try:
                # A savepoint: a lock timeout undoes only the swap; staging data is kept.
                with conn.transaction():
                    counts = _swap(conn, ordered, manifests, staging)
                break
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                if attempt > retries:
                    names = ", ".join(p.qualified for p in replaces)
                    raise RefusedForSafety(
                        f"Gave up after {attempt} attempts: {names} stayed locked by other sessions "
                        f"(lock_timeout {lock_timeout}; {exc.diag.message_primary}). Nothing was "
                        "changed; retry when the table is less busy or with a longer lock timeout.",
                        attempts=attempt,
                        tables=[p.qualified for p in replaces],
                    ) from None
                sleep(_backoff(attempt))
        for p in replaces:
            tm = manifests[(p.source_schema, p.source_table)]
            _verify_checksum(conn, p.schema, p.table, tm)
            deleted, updated, inserted = counts[(p.schema, p.table)]
            p.to_delete, p.to_update, p.to_insert = deleted, updated, inserted
            results[(p.schema, p.table)] = TableRestoreResult(
                schema=p.schema,
                table=p.table,
                action="replace",
                rows_restored=tm.row_count,
                deleted=deleted,
                updated=updated,
                inserted=inserted,
                checksum_verified=True,
                attempts=attempt,
            )
        # Last, after every check passed: setval is not undone by a rollback.
        for p in replaces:
            results[(p.schema, p.table)].sequences_set = _advance_sequences(conn, p.schema, p.table)
    return [results[(p.schema, p.table)] for p in plan.tables]


def _verify_checksum(conn: psycopg.Connection, schema: str, table: str, tm: TableManifest) -> None:
    # The manifest's checksum covers every column, generated ones included, in the captured
    # order; naming the columns makes it comparable even if the live column order differs.
    # Checking the live table itself (not the staging copy, which has no generated columns)
    # also catches triggers, rules or RLS policies that changed or hid rows during the swap.
    got = table_checksum(conn, schema, table, columns=[c.name for c in tm.columns])
    if got != (tm.row_count, tm.checksum):
        raise RestoreFailed(
            f"{_quote(conn, schema, table)} would hold {got[0]} rows (checksum {got[1]}) after the restore, "
            f"but the snapshot has {tm.row_count} rows (checksum {tm.checksum}); rolled back, the live "
            "table is unchanged. A trigger, rule or row-level security policy on the table may have "
            "changed or hidden rows.",
            schema=schema,
            table=table,
            expected=[tm.row_count, tm.checksum],
            actual=list(got),
        )


def _columns(names: Iterable[str], alias: str | None = None) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)


def _stage(
    conn: psycopg.Connection,
    store: SnapshotStore,
    snapshot_id: str,
    tm: TableManifest,
    p: TablePlan,
    number: int,
    progress: Progress | None,
) -> str:
    """Load the snapshot of one table into a TEMP staging table; returns its name."""
    name = f"{STAGING_PREFIX}{number}"
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
        for c in tm.columns
        if not c.generated
    )
    _execute_single(
        conn,
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(sql.Identifier(name), definition),
    )
    rows = load_table_copy(conn, store, snapshot_id, tm, "pg_temp", name)
    # The staging copy has no generated columns, so its checksum cannot be compared with the
    # manifest's (which covers them); the count is checked here and the full checksum on the
    # live table after the swap, before COMMIT.
    if rows != tm.row_count:
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id}: {tm.schema_name}.{tm.table_name} loaded {rows} rows, "
            f"the manifest says {tm.row_count}",
            id=snapshot_id,
            expected=tm.row_count,
            actual=rows,
        )
    # Temporary tables are never analyzed by autovacuum: give the planner real numbers.
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("pg_temp", name)))
    if progress is not None:
        progress(p.qualified, rows)
    return name


def _parents_first(conn: psycopg.Connection, plans: list[TablePlan]) -> list[TablePlan]:
    """The tables ordered so that a table comes after the restored tables it references."""
    oids: dict[int, TablePlan] = {}
    for p in plans:
        found = _relation(conn, p.schema, p.table)
        if found is None:
            raise RestoreFailed(f"{_quote(conn, p.schema, p.table)} no longer exists", schema=p.schema)
        oids[found[0]] = p
    parents: dict[int, set[int]] = {oid: set() for oid in oids}
    for child, parent in conn.execute(_FK_EDGES_SQL, {"oids": list(oids)}).fetchall():
        parents[child].add(parent)
    ordered: list[int] = []
    while len(ordered) < len(oids):
        ready = [o for o in oids if o not in ordered and parents[o] <= set(ordered)]
        # A cycle of foreign keys: keep the plan order for the rest.
        ordered.append(ready[0] if ready else next(o for o in oids if o not in ordered))
    return [oids[o] for o in ordered]


def _key_match(key: list[str], left: str, right: str) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in key
    )


def _swap(
    conn: psycopg.Connection,
    ordered: list[TablePlan],
    manifests: dict[tuple[str, str], TableManifest],
    staging: dict[tuple[str, str], str],
) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Make the live tables equal to their staging copies; returns (deleted, updated, inserted)."""
    # SHARE ROW EXCLUSIVE: conflicts with every writer and with itself (two restores), not with
    # readers. One statement in a fixed order, so two restores cannot deadlock over the order.
    targets = sorted((p.schema, p.table) for p in ordered)
    conn.execute(
        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(s, t) for s, t in targets)
        )
    )
    live: dict[tuple[str, str], list[_LiveColumn]] = {}
    for p in ordered:
        tm = manifests[(p.source_schema, p.source_table)]
        found = _relation(conn, p.schema, p.table)
        differences = (
            ["the table no longer exists"] if found is None else _column_differences(conn, found[0], tm)
        )
        if differences:
            raise RefusedForSafety(
                f"{_quote(conn, p.schema, p.table)} changed since the restore was planned: "
                f"{'; '.join(differences)}. Nothing was changed.",
                schema=p.schema,
                table=p.table,
                differences=differences,
            )
        assert found is not None
        live[(p.schema, p.table)] = _live_columns(conn, found[0])
    # Deferrable constraints are checked once, after all tables are restored (then IMMEDIATE
    # below, so a violation surfaces here rather than at COMMIT).
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    counts = {(p.schema, p.table): [0, 0, 0] for p in ordered}
    # Children first for deletes, parents first for updates and inserts: rows that a restored
    # child stops referencing are gone before its parent's rows are deleted, and parent rows
    # exist before restored children point at them.
    for p in reversed(ordered):
        counts[(p.schema, p.table)][0] = _delete(conn, p, staging[(p.schema, p.table)])
    for p in ordered:
        tm = manifests[(p.source_schema, p.source_table)]
        columns = live[(p.schema, p.table)]
        stage = staging[(p.schema, p.table)]
        counts[(p.schema, p.table)][1] = _update(conn, p, tm, columns, stage)
        counts[(p.schema, p.table)][2] = _insert(conn, p, tm, columns, stage)
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return {k: (v[0], v[1], v[2]) for k, v in counts.items()}


def _delete(conn: psycopg.Connection, p: TablePlan, stage: str) -> int:
    target = sql.Identifier(p.schema, p.table)
    if not p.key:
        cur = conn.execute(sql.SQL("DELETE FROM {}").format(target))
    else:
        cur = conn.execute(
            sql.SQL("DELETE FROM {} AS l WHERE NOT EXISTS (SELECT FROM {} AS s WHERE {})").format(
                target, sql.Identifier("pg_temp", stage), _key_match(p.key, "s", "l")
            )
        )
    return max(cur.rowcount, 0)


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

    def differ(names: list[str]) -> sql.Composed:
        # record_image_ne compares the stored bytes: 1.5 vs 1.50, json whitespace, -0 vs 0 all
        # count as changes (equality would not see them), and types without an equality
        # operator (json, xml, point) work too. NULLs compare equal to NULLs.
        return sql.SQL("pg_catalog.record_image_ne(ROW({}), ROW({}))").format(
            _columns(names, "l"), _columns(names, "s")
        )

    # An identity ALWAYS column can only be UPDATEd to DEFAULT. Where such a value differs, the
    # column is switched to BY DEFAULT for this transaction and back (ACCESS EXCLUSIVE briefly).
    always = [n for n in values if identity.get(n) == "a"]
    switched: list[str] = []
    if always:
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {} AS l JOIN {} AS s ON {} WHERE {})").format(
                target, staged, _key_match(p.key, "l", "s"), differ(always)
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
    cur = conn.execute(
        sql.SQL("UPDATE {} AS l SET {} FROM {} AS s WHERE {} AND {}").format(
            target,
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(n), sql.Identifier("s", n)) for n in settable
            ),
            staged,
            _key_match(p.key, "s", "l"),
            differ(values),
        )
    )
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


def _advance_sequences(conn: psycopg.Connection, schema: str, table: str) -> list[SequenceSet]:
    """Move each sequence owned by a column past the restored values; never backwards."""
    found = _relation(conn, schema, table)
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


def _create(
    conn: psycopg.Connection,
    store: SnapshotStore,
    snapshot_id: str,
    tm: TableManifest,
    p: TablePlan,
    plan: RestorePlan,
    progress: Progress | None,
) -> TableRestoreResult:
    """CREATE the table from the manifest, COPY the rows in, add the primary key, verify.

    Built from the manifest rather than with CREATE TABLE ... (LIKE live): the live table may be
    gone, or have another shape (the usual reason to restore side by side), and a side-by-side
    copy must not share anything with it. So what comes back is: columns with their types,
    NOT NULL, defaults that still resolve, generated columns (as STORED), and the primary key.
    Indexes, other constraints, identity, triggers and grants are not in the manifest.
    """
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
        if plan.into_schema is not None and "nextval(" in c.default:
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
    rows = load_table_copy(conn, store, snapshot_id, tm, p.schema, p.table)
    if rows != tm.row_count:
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id}: {tm.schema_name}.{tm.table_name} loaded {rows} rows, "
            f"the manifest says {tm.row_count}",
            id=snapshot_id,
            expected=tm.row_count,
            actual=rows,
        )
    if progress is not None:
        progress(p.qualified, rows)
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
