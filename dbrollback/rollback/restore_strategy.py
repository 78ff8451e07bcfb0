"""`rollback --strategy restore`: put every snapshotted table back exactly to its pre-image.

Runs on the rollback's single transaction, around each revision's downgrade, like the merge:

* :func:`prepare_restore`, before the downgrade: lock the table against writers (SHARE, until the
  rollback commits), stage the snapshot in a temp table and count the rows whose writes since the
  migration the restore will discard (`lost_writes`), by comparing the live table with the
  fingerprint and the pre-image.
* :func:`restore_tables`, after the downgrade: the in-place "every row" restore of
  :mod:`dbrollback.snapshot.restore` (DELETE / UPDATE / INSERT against the staged copy, parents
  first, foreign-key actions on other tables refused) on this same connection; a table whose shape
  is not the snapshot's (the downgrade was skipped or did not restore it) is dropped and recreated
  from the manifest. Then the whole table's checksum is compared with the snapshot's.
* :func:`downgrades_guarded`: a revision whose downgrade is missing, empty or raises is not run
  (a raise is undone to a savepoint); Alembic still moves ``alembic_version`` to its
  down_revision, as for any downgrade step, on the same connection and transaction.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.catalog import OBJECT_PREFIX, SCHEMA
from dbrollback.catalog.fingerprints import NO_KEY, TABLE_GONE, TAKEN, Fingerprint, pinned_text_settings
from dbrollback.database import Notify
from dbrollback.errors import MigrationFailed, RefusedForSafety
from dbrollback.rollback.report import SkippedDowngrade, TableReport
from dbrollback.rollback.sqlparts import Hasher, LiveColumn, count, keys_equal, live_columns
from dbrollback.snapshot import restore as snapshot_restore
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import ColumnInfo, SnapshotManifest, TableManifest
from dbrollback.snapshot.store import SnapshotStore

STAGE_PREFIX = f"{OBJECT_PREFIX}rs_pre_"

# Sequences a serial column owns ('a'uto dependency): DROP TABLE would drop them with the table.
_SERIAL_SEQUENCES_SQL = """
SELECT n.nspname, s.relname, a.attname
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s)) AND d.deptype = 'a'
"""


@dataclass
class TableRestore:
    """One snapshotted table of one revision, through prepare → downgrade → restore → verify."""

    fingerprint: Fingerprint
    tm: TableManifest
    manifest: SnapshotManifest
    number: int
    report: TableReport
    stage: str | None = None  # pg_temp table holding the pre-image, once staged
    recreated: bool = False
    added_back: list[ColumnInfo] = field(default_factory=list)  # columns added back in place

    @property
    def name(self) -> tuple[str, str]:
        return (self.fingerprint.schema, self.fingerprint.table)

    @property
    def live(self) -> sql.Identifier:
        return sql.Identifier(*self.name)

    @property
    def pre(self) -> sql.Identifier:
        assert self.stage is not None
        return sql.Identifier("pg_temp", self.stage)


def _stage(conn: psycopg.Connection, store: SnapshotStore, r: TableRestore) -> None:
    name = f"{STAGE_PREFIX}{r.number}"
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
        for c in r.tm.columns
        if not c.generated
    )
    # One statement over the extended protocol: type names come from a manifest file.
    with conn.cursor(binary=True) as cur:
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                sql.Identifier("pg_temp", name), definition
            )
        )
    rows = load_table_copy(conn, store, r.fingerprint.snapshot_id, r.tm, "pg_temp", name)
    if rows != r.tm.row_count:
        raise MigrationFailed(
            f"Snapshot {r.fingerprint.snapshot_id}: {r.report.table} loaded {rows} rows, the manifest says "
            f"{r.tm.row_count}; rolled back, nothing was changed"
        )
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("pg_temp", name)))
    r.stage = name


def prepare_restore(conn: psycopg.Connection, hasher: Hasher, store: SnapshotStore, r: TableRestore) -> None:
    """Before the revision's downgrade: lock, stage the pre-image, count the writes to be discarded."""
    columns = live_columns(conn, *r.name)
    if columns is None:  # dropped by the migration (or since): nobody wrote to it
        return
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(r.live))
    _stage(conn, store, r)
    with pinned_text_settings(conn):
        r.report.lost_writes = _lost_writes(conn, hasher, r, columns)


def _lost_writes(
    conn: psycopg.Connection, hasher: Hasher, r: TableRestore, live: dict[str, LiveColumn]
) -> int:
    """Rows written since the migration (inserted, updated or deleted), which the restore discards."""
    f = r.fingerprint
    pre = {c.name: c.type for c in r.tm.columns if not c.generated}
    if f.status == TABLE_GONE:  # the table the migration dropped exists again: someone wrote to it
        return count(conn, sql.SQL("SELECT count(*) FROM {}").format(r.live))
    if f.status == NO_KEY or f.fp_table is None:
        # Rows cannot be matched: rows now that are not in the pre-image (over the columns both have).
        # An upper bound: what the migration itself changed in those columns counts too.
        common = [(c, t) for c, t in pre.items() if c in live and live[c].type == t and not live[c].generated]
        return count(
            conn,
            sql.SQL(
                "SELECT count(*) FROM (SELECT {} FROM {} AS t EXCEPT ALL SELECT {} FROM {} AS p) AS d"
            ).format(hasher.row("t", common), r.live, hasher.row("p", common), r.pre),
        )
    assert f.status == TAKEN
    fp = sql.Identifier(SCHEMA, f.fp_table)
    key = f.key_columns
    deleted = count(
        conn,
        sql.SQL("SELECT count(*) FROM {} AS f WHERE NOT EXISTS (SELECT FROM {} AS t WHERE {})").format(
            fp, r.live, keys_equal(key, "t", "f")
        ),
    )
    inserted = count(
        conn,
        sql.SQL("SELECT count(*) FROM {} AS t WHERE NOT EXISTS (SELECT FROM {} AS f WHERE {})").format(
            r.live, fp, keys_equal(key, "t", "f")
        ),
    )
    written: list[sql.Composable] = []
    for column, hash_column in f.hashed_columns.items():
        now = live.get(column)
        if now is None or now.type != f.column_types.get(column):
            written.append(sql.SQL("true"))  # changed since the run: its writes cannot be told apart
            continue
        written.append(
            sql.SQL("{} IS DISTINCT FROM {}").format(
                hasher.value("t", column, now.type), sql.Identifier("f", hash_column)
            )
        )
    untouched = [
        c
        for c, t in pre.items()
        if c in live
        and c not in key
        and c not in f.hashed_columns
        and live[c].type == t
        and not live[c].generated
    ]
    if untouched:
        written.append(
            sql.SQL("(p.{} IS NOT NULL AND {} IS DISTINCT FROM {})").format(
                sql.Identifier(key[0]),
                hasher.row("t", [(c, live[c].type) for c in untouched]),
                hasher.row("p", [(c, pre[c]) for c in untouched]),
            )
        )
    for c in [c for c in live if c not in pre and not live[c].generated]:  # added by the migration
        added_hash = f.added_columns.get(c)
        if added_hash is None or live[c].type != f.column_types.get(c):
            # Not hashed (fingerprinted before catalog v7) or retyped since: every value counts.
            written.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", c)))
        else:  # only values written since: not the ones the migration itself put there
            written.append(
                sql.SQL("{} IS DISTINCT FROM {}").format(
                    hasher.value("t", c, live[c].type), sql.Identifier("f", added_hash)
                )
            )
    updated = 0
    if written:
        updated = count(
            conn,
            sql.SQL(
                "SELECT count(*) FROM {} AS f JOIN {} AS t ON {} LEFT JOIN {} AS p ON {} WHERE {}"
            ).format(
                fp,
                r.live,
                keys_equal(key, "t", "f"),
                r.pre,
                keys_equal(key, "p", "t"),
                sql.SQL(" OR ").join(written),
            ),
        )
    return deleted + inserted + updated


def _detach_serial_sequences(conn: psycopg.Connection, r: TableRestore) -> list[tuple[str, str, str]]:
    sequences = [
        (str(a), str(b), str(c)) for a, b, c in conn.execute(_SERIAL_SEQUENCES_SQL, r.name).fetchall()
    ]
    for schema, name, _ in sequences:
        conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY NONE").format(sql.Identifier(schema, name)))
    return sequences


def _drop_for_recreate(
    conn: psycopg.Connection, r: TableRestore, differences: list[str]
) -> list[tuple[str, str, str]]:
    sequences = _detach_serial_sequences(conn, r)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(r.live))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise RefusedForSafety(
            f"{r.report.table} does not have the snapshot's shape after the downgrade "
            f"({'; '.join(differences)}), so it would have to be dropped and recreated, but other objects "
            f"depend on it: {exc.diag.message_detail or exc.diag.message_primary}. Run its downgrade "
            "(or fix it) so the table gets its shape back. Nothing was changed.",
            table=r.report.table,
            differences=differences,
        ) from None
    r.recreated = True
    return sequences


def _reshape_in_place(conn: psycopg.Connection, r: TableRestore, differences: list[str]) -> bool:
    """When the only differences are whole columns (the migration dropped or added them and the
    downgrade was skipped): add the snapshot's missing columns, drop the columns it does not have,
    keeping the table itself. False, changing nothing, when anything else differs (types, generated
    columns) or a column cannot be dropped: the table is then recreated."""
    live = live_columns(conn, *r.name) or {}
    snap = {c.name: c for c in r.tm.columns}
    missing = [c for name, c in snap.items() if name not in live]
    extra = [name for name in live if name not in snap]
    if len(differences) != len(missing) + len(extra) or any(c.generated for c in missing):
        return False
    try:
        with conn.transaction():  # a savepoint: a column a view depends on leaves the table as it was
            for name in extra:
                conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(r.live, sql.Identifier(name)))
            for c in missing:  # values come with the rows; NOT NULL and the default once they are in
                _one_statement(
                    conn,
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        r.live, sql.Identifier(c.name), sql.SQL(c.type)
                    ),
                )
    except psycopg.errors.DependentObjectsStillExist:
        return False
    r.added_back = missing
    return True


def _one_statement(conn: psycopg.Connection, statement: sql.Composed) -> None:
    """The extended protocol takes exactly one statement: text from a manifest (a type, a default)
    cannot smuggle in another."""
    with conn.cursor(binary=True) as cur:
        cur.execute(statement)


def _finish_added_columns(conn: psycopg.Connection, r: TableRestore) -> None:
    """Defaults and NOT NULL of the columns added back, once their values are in; a serial column's
    sequence went with the column the migration dropped: made again, owned by the column."""
    sequences = _recreate_serial_sequences(conn, r.tm, r.name, only=[c.name for c in r.added_back])
    for c in r.added_back:
        column = sql.Identifier(c.name)
        if c.default is not None:
            _one_statement(
                conn,
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                    r.live, column, sql.SQL(c.default)
                ),
            )
        if not c.nullable:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(r.live, column))
    for schema, name, column_name in sequences:
        conn.execute(
            sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                sql.Identifier(schema, name), sql.Identifier(*r.name, column_name)
            )
        )


_NEXTVAL = re.compile(r"^nextval\('((?:[^']|'')+)'::regclass\)$")
_SERIAL_TYPES = {"smallint", "integer", "bigint"}


def _recreate_serial_sequences(
    conn: psycopg.Connection, tm: TableManifest, table: tuple[str, str], only: list[str] | None = None
) -> list[tuple[str, str, str]]:
    """A serial column's sequence went with its table (or column) when the migration dropped it:
    create it again (before the default that names it), to be owned by the column once it exists.
    `only`: just these columns."""
    created: list[tuple[str, str, str]] = []
    for c in tm.columns:
        if only is not None and c.name not in only:
            continue
        found = _NEXTVAL.match(c.default or "")
        if found is None or c.type not in _SERIAL_TYPES:
            continue
        row = conn.execute(
            "SELECT pg_catalog.parse_ident(%s), pg_catalog.to_regclass(%s) IS NOT NULL",
            (found.group(1).replace("''", "'"),) * 2,
        ).fetchone()
        if row is None or row[1]:
            continue
        parts = [str(x) for x in row[0]]
        schema, name = (parts[0], parts[1]) if len(parts) == 2 else (table[0], parts[-1])
        conn.execute(
            sql.SQL("CREATE SEQUENCE {} AS {}").format(sql.Identifier(schema, name), sql.SQL(c.type))
        )
        created.append((schema, name, c.name))
    return created


def restore_tables(
    conn: psycopg.Connection,
    store: SnapshotStore,
    restores: list[TableRestore],
    *,
    dry_run: bool,
    notify: Notify,
) -> None:
    """After the revision's downgrade: make each table equal to its pre-image, verify it."""
    if not restores:
        return
    names = {r.name for r in restores}
    reattach: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    targets: list[snapshot_restore.RestoreTarget] = []
    by_name: dict[tuple[str, str], TableRestore] = {}
    for r in restores:
        if r.name in by_name:
            raise MigrationFailed(
                f"{r.report.table} is snapshotted twice by one revision", table=r.report.table
            )
        by_name[r.name] = r
        found = snapshot_restore.relation_of(conn, *r.name)
        if found is not None:
            differences = snapshot_restore.column_differences(conn, found[0], r.tm)
            if differences and _reshape_in_place(conn, r, differences):
                notify(
                    f"{r.report.table} did not have the snapshot's shape after the downgrade "
                    f"({'; '.join(differences)}): columns added back / dropped in place (its indexes, "
                    "constraints, triggers and grants stay)"
                )
            elif differences:
                reattach[r.name] = _drop_for_recreate(conn, r, differences)
                notify(
                    f"{r.report.table} does not have the snapshot's shape after the downgrade "
                    f"({'; '.join(differences)}): dropped and recreated from the snapshot"
                )
        plan = snapshot_restore.plan_restore(
            conn, store, r.manifest, [r.name], None, restored_with=names - {r.name}
        )
        (p,) = plan.tables
        targets.append(snapshot_restore.RestoreTarget(r.fingerprint.snapshot_id, plan, p, r.tm))
    # A role subject to row-level security would see (and restore) only some rows.
    conn.execute("SET LOCAL row_security = off")
    for t in targets:
        if t.p.action == "create":
            reattach.setdefault(t.name, []).extend(_recreate_serial_sequences(conn, t.tm, t.name))
            # create_from_snapshot checks the whole table's checksum itself
            snapshot_restore.create_from_snapshot(conn, store, t, None)
            for schema, name, column in reattach.get(t.name, []):
                conn.execute(
                    sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                        sql.Identifier(schema, name), sql.Identifier(*t.name, column)
                    )
                )
            r = by_name[t.name]
            r.report.reinserted_rows = t.tm.row_count
    replaces = [t for t in targets if t.p.action == "replace"]
    if replaces:
        staging: dict[tuple[str, str], str] = {}
        for t in replaces:
            r = by_name[t.name]
            if r.stage is None:
                _stage(conn, store, r)
            assert r.stage is not None
            staging[t.name] = r.stage
        ordered = snapshot_restore.parents_first(conn, replaces)
        with conn.transaction():
            restored = {t.name for t in targets}
            counts = snapshot_restore.swap_in_staged_rows(conn, ordered, staging, restored, False)
        for t in replaces:
            _, updated, inserted, _ = counts[t.name]
            report = by_name[t.name].report
            report.restored_rows, report.reinserted_rows = updated, inserted
            _finish_added_columns(conn, by_name[t.name])
    for t in targets:
        report = by_name[t.name].report
        got = table_checksum(conn, *t.name, columns=[c.name for c in t.tm.columns])
        report.verified = got == (t.tm.row_count, t.tm.checksum)
        if not dry_run:  # setval is not undone by a rollback: never in a dry run
            snapshot_restore.advance_sequences(conn, *t.name)


# -- downgrades that are missing, empty or raise --------------------------------------------------------


def _is_empty(function: Callable[..., Any]) -> bool:
    """A downgrade whose body is only `pass`, `...` or a docstring."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    definition = tree.body[0] if tree.body else None
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    return all(
        isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        for node in definition.body
    )


def _guarded(
    revision: str, original: Callable[..., Any] | None, skipped: list[SkippedDowngrade], notify: Notify
) -> Callable[..., Any]:
    def downgrade(*args: Any, **kw: Any) -> Any:
        from alembic import op

        if original is None or not callable(original):
            reason = "the revision has no downgrade()"
        elif _is_empty(original):
            reason = "its downgrade() is empty"
        else:
            # A savepoint, so a downgrade that fails halfway leaves nothing behind.
            nested = op.get_bind().begin_nested()
            try:
                result = original(*args, **kw)
            except Exception as exc:
                nested.rollback()
                reason = f"its downgrade() raised {type(exc).__name__}: {str(exc).strip() or '(no message)'}"
            else:
                nested.commit()
                return result
        skipped.append(SkippedDowngrade(revision, reason))
        notify(
            f"{revision}: {reason}; not run. Its version is moved back all the same and its snapshotted "
            "tables are restored from the snapshot"
        )
        return None

    return downgrade


@contextmanager
def downgrades_guarded(
    project: AlembicProject, revisions: list[str], skipped: list[SkippedDowngrade], notify: Notify
) -> Iterator[None]:
    """While active, the downgrade of each of `revisions` that is missing, empty or raises is not run
    (and listed in `skipped`); Alembic's step still moves the version to its down_revision."""
    patched: list[tuple[Any, Any]] = []
    try:
        for revision in revisions:
            script = project.script.get_revision(revision)
            assert script is not None
            module: Any = script.module
            original = getattr(module, "downgrade", None)
            patched.append((module, original))
            module.downgrade = _guarded(revision, original, skipped, notify)
        yield
    finally:
        for module, original in patched:
            if original is None:
                delattr(module, "downgrade")
            else:
                module.downgrade = original
