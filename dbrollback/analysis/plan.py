"""What each pending revision does to existing tables, and the snapshot `upgrade` will take.

:func:`build_plan` captures the SQL of every pending revision (:mod:`.migration_sql`), classifies
it (:mod:`.classify`), resolves each table against the target database (unqualified names through
its search_path), follows tables created, dropped and renamed earlier in the same run, and lays out
the snapshots the chosen policy calls for, with the target's columns and size estimates.

Snapshot policies: ``lossy`` (default) — one snapshot per lossy revision, of the tables that existed
before the run and that it changes lossily; ``touched`` — per revision, every existing table it
changes in any way; ``all`` — every user table once, before the first revision; ``never``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.enums import ObjectType
from psycopg import sql

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.alembic_bridge.runner import PlannedStep, Timeouts
from dbrollback.analysis.classify import SAFE_FUNCTIONS, StatementEffect, TableRef, classify_sql
from dbrollback.analysis.migration_sql import (
    OFFLINE,
    UNAVAILABLE,
    CapturedSQL,
    RevisionSQL,
    capture_revision_sql,
)
from dbrollback.analysis.pg_tree import walk_nodes
from dbrollback.database import Database, connect, resolve_database
from dbrollback.errors import ConfigError
from dbrollback.settings import Settings

__all__ = [
    "POLICIES",
    "MigrationPlan",
    "RevisionAnalysis",
    "SnapshotColumn",
    "SnapshotPlan",
    "SnapshotTablePlan",
    "TableUse",
    "analyse",
    "build_plan",
]

POLICIES = ("lossy", "touched", "all", "never")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
_EXCLUDED_SCHEMAS = (*_SYSTEM_SCHEMAS, "dbrollback")
_TABLE_KINDS = ("r", "p")  # ordinary and partitioned tables: what a snapshot can capture
# Effects that concern every column of the rows they touch.
_WHOLE_ROW_KINDS = ("drop_table", "truncate", "delete", "insert", "other", "drop_schema")

Notify = Callable[[str], None]
Key = tuple[str, str]  # (schema, table)
_Wanted = dict[Key, set[str] | None]  # table as named when the revision runs -> affected columns (None = all)


def _quiet(_: str) -> None:
    pass


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableUse:
    """One table a revision uses, resolved to its schema."""

    schema: str
    table: str
    operations: tuple[str, ...]  # effect kinds, in order of first use
    columns: tuple[str, ...]
    lossy: bool
    exists_before: bool  # the table existed in the target database before the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "operations": list(self.operations),
            "columns": list(self.columns),
            "lossy": self.lossy,
            "exists_before": self.exists_before,
        }


@dataclass
class RevisionAnalysis:
    revision: str
    doc: str
    method: str  # executed | offline | unavailable
    effects: list[StatementEffect]
    lossy: bool
    opaque: bool
    tables: list[TableUse]
    reason: str = ""  # why the method is not "executed"
    # Effects no snapshot covers because nobody can tell which tables they change (empty under "all").
    uncovered: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "doc": self.doc,
            "method": self.method,
            "reason": self.reason,
            "lossy": self.lossy,
            "opaque": self.opaque,
            "uncovered": list(self.uncovered),
            "tables": [t.to_dict() for t in self.tables],
            "effects": [_effect_dict(e) for e in self.effects],
        }


@dataclass(frozen=True)
class SnapshotColumn:
    name: str
    type: str
    affected: bool  # changed or destroyed by the revision(s) this snapshot protects

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "affected": self.affected}


@dataclass
class SnapshotTablePlan:
    """A table to capture just before a revision, named as it is then; columns and estimates are
    read from the database as it is now (before the run), under ``name_before_run`` if an earlier
    revision of the run renames it."""

    schema: str
    table: str
    columns: list[SnapshotColumn]
    estimated_rows: int
    estimated_bytes: int
    name_before_run: Key | None = None

    @property
    def affected_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.affected]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "columns": [c.to_dict() for c in self.columns],
            "affected_columns": self.affected_columns,
            "estimated_rows": self.estimated_rows,
            "estimated_bytes": self.estimated_bytes,
            "name_before_run": (
                None
                if self.name_before_run is None
                else {"schema": self.name_before_run[0], "table": self.name_before_run[1]}
            ),
        }


@dataclass
class SnapshotPlan:
    revision: str  # taken just before this revision runs
    tables: list[SnapshotTablePlan]

    @property
    def estimated_rows(self) -> int:
        return sum(t.estimated_rows for t in self.tables)

    @property
    def estimated_bytes(self) -> int:
        return sum(t.estimated_bytes for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "tables": [t.to_dict() for t in self.tables],
            "estimated_rows": self.estimated_rows,
            "estimated_bytes": self.estimated_bytes,
        }


@dataclass
class MigrationPlan:
    database: str
    target: str
    current_heads: list[str]
    policy: str
    pending: list[PlannedStep]
    revisions: list[RevisionAnalysis]
    snapshots: list[SnapshotPlan]
    warnings: list[str] = field(default_factory=list)
    scratch: str | None = None  # where the revisions were executed to capture their SQL

    def snapshot_before(self, revision: str) -> SnapshotPlan | None:
        return next((s for s in self.snapshots if s.revision == revision), None)

    @property
    def lossy_revisions(self) -> list[str]:
        return [r.revision for r in self.revisions if r.lossy]

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "target": self.target,
            "current_heads": list(self.current_heads),
            "policy": self.policy,
            "pending": [{"revision": s.revision, "doc": s.doc} for s in self.pending],
            "scratch": self.scratch,
            "revisions": [r.to_dict() for r in self.revisions],
            "snapshots": [s.to_dict() for s in self.snapshots],
            "warnings": list(self.warnings),
        }


def _effect_dict(effect: StatementEffect) -> dict[str, Any]:
    table = None if effect.table is None else {"schema": effect.table.schema, "name": effect.table.name}
    return {
        "sql": effect.sql,
        "kind": effect.kind,
        "table": table,
        "columns": list(effect.columns),
        "lossy": effect.lossy,
        "opaque": effect.opaque,
        "reason": effect.reason,
    }


# -- entry point --------------------------------------------------------------------------------


def build_plan(settings: Settings, target: str = "heads", *, policy: str | None = None,
               database: Database | None = None, notify: Notify = _quiet) -> MigrationPlan:  # fmt: skip
    """Analyse the pending upgrade to ``target``; nothing in the target database changes."""
    chosen = policy or settings.snapshot
    if chosen not in POLICIES:
        raise ConfigError(f"Unknown snapshot policy {chosen!r}; expected one of {', '.join(POLICIES)}",
                          policy=chosen)  # fmt: skip
    AlembicProject(settings.alembic_config)  # a missing alembic.ini fails before any connection
    database = database or resolve_database(settings, notify)
    project = AlembicProject(settings.alembic_config, database.sqlalchemy_url)
    timeouts = Timeouts(settings.lock_timeout, settings.statement_timeout, settings.lock_retries)
    with connect(database, "plan") as conn:
        captured = capture_revision_sql(project, database.sqlalchemy_url, target, timeouts, notify=notify)
        return analyse(conn, captured, chosen)


def analyse(conn: psycopg.Connection, captured: CapturedSQL, policy: str = "lossy") -> MigrationPlan:
    """Classify captured SQL against the target database (read only) and lay out snapshots."""
    catalog = _Catalog(conn)
    tracker = _RunTracker(catalog)
    plan = MigrationPlan(
        database=captured.database,
        target=captured.target,
        current_heads=list(captured.current_heads),
        policy=policy,
        pending=list(captured.pending),
        revisions=[],
        snapshots=[],
        scratch=captured.scratch,
    )
    needs: list[tuple[str, _Wanted, dict[Key, Key]]] = []  # per revision: its snapshot's tables
    for revision_sql in captured.revisions:
        analysis, wanted, origins = _analyse_revision(catalog, tracker, revision_sql, policy, plan.warnings)
        plan.revisions.append(analysis)
        needs.append((analysis.revision, wanted, origins))

    if policy == "all" and plan.revisions:
        affected: _Wanted = {}  # keyed by the name before the run: this snapshot comes first
        for _, wanted, origins in needs:
            for key, columns in wanted.items():
                _merge(affected, origins[key], columns)
        version_key = catalog.version_table_key(captured.version_table)
        tables = [
            catalog.table_plan(key, key, affected.get(key, set()))
            for key in catalog.user_tables()
            if key != version_key
        ]
        plan.snapshots.append(SnapshotPlan(plan.revisions[0].revision, tables))
    elif policy in ("lossy", "touched"):
        for revision, wanted, origins in needs:
            if wanted:
                tables = [catalog.table_plan(key, origins[key], columns) for key, columns in wanted.items()]
                plan.snapshots.append(SnapshotPlan(revision, tables))
    elif policy == "never" and plan.lossy_revisions:
        plan.warnings.append(
            f"snapshot policy is 'never': lossy revision(s) {', '.join(plan.lossy_revisions)} "
            "will run without a snapshot"
        )
    return plan


# -- one revision -------------------------------------------------------------------------------


def _analyse_revision(catalog: _Catalog, tracker: _RunTracker, captured: RevisionSQL, policy: str,
                      warnings: list[str]) -> tuple[RevisionAnalysis, _Wanted, dict[Key, Key]]:  # fmt: skip
    revision = captured.revision
    if captured.method == UNAVAILABLE:
        effects = [StatementEffect("", "other", None, (), False, opaque=True,
                                   reason=f"its SQL could not be captured: {captured.reason}")]  # fmt: skip
    else:
        effects = []
        for statement in captured.statements:
            effects.extend(catalog.refine(e) for e in classify_sql(statement.sql))
    if captured.method == OFFLINE:
        warnings.append(
            f"revision {revision}: its SQL was rendered in Alembic offline mode ({captured.reason}), "
            "which does not show SQL built from database queries"
        )

    tracker.begin_revision()
    uses: dict[Key, dict[str, Any]] = {}
    wanted: _Wanted = {}  # keyed by the names the tables have when this revision starts
    origins: dict[Key, Key] = {}  # the same tables' names before the run
    unknown_reasons: list[str] = []
    for effect in effects:
        if effect.kind == "drop_schema" and effect.lossy:
            for key in tracker.tables_in_schemas(_dropped_schemas(effect.sql)):
                existed = tracker.exists_before(key)
                _use(uses, key, effect, existed)
                if existed:
                    _merge(wanted, tracker.start_name(key), None)
                    origins[tracker.start_name(key)] = tracker.origin(key)
                tracker.dropped(key)
            continue
        if effect.table is None:
            if effect.opaque:
                unknown_reasons.append(effect.reason)
            elif effect.lossy:
                warnings.append(f"revision {revision} {effect.reason}; this is not covered by a snapshot")
            continue
        key = catalog.resolve(effect.table)
        if key[0] in _SYSTEM_SCHEMAS:
            continue  # reads of the system catalogs (SQLAlchemy checks, reflection)
        existed = tracker.exists_before(key)
        _use(uses, key, effect, existed)
        if effect.lossy and not existed and catalog.relation(key) is not None and not catalog.is_table(key):
            warnings.append(f"revision {revision} {effect.reason}, which is not a table; the tables "
                            "beneath it are not covered by a snapshot")  # fmt: skip
        if existed and _wants(policy, effect):
            _merge(wanted, tracker.start_name(key), _affected_columns(effect))
            origins[tracker.start_name(key)] = tracker.origin(key)
            if effect.opaque and policy != "all":
                warnings.append(f"revision {revision}: {effect.reason}; only {key[0]}.{key[1]} is covered "
                                "by the snapshot")  # fmt: skip
        tracker.apply(key, effect)

    opaque = any(e.opaque for e in effects)
    if unknown_reasons:
        detail = "; ".join(dict.fromkeys(unknown_reasons))
        if policy == "all":
            warnings.append(f"revision {revision} runs SQL whose effect cannot be known ({detail}); "
                            "the snapshot of every table is taken before it")  # fmt: skip
        else:
            warnings.append(f"revision {revision} runs SQL whose effect cannot be known; "
                            f"it is not covered by a snapshot: {detail}")  # fmt: skip
    tables = [
        TableUse(key[0], key[1], tuple(u["operations"]), tuple(u["columns"]), u["lossy"], u["exists_before"])
        for key, u in uses.items()
    ]
    analysis = RevisionAnalysis(
        revision=revision,
        doc=captured.doc,
        method=captured.method,
        effects=effects,
        lossy=any(e.lossy for e in effects),
        opaque=opaque,
        tables=tables,
        reason=captured.reason,
        uncovered=list(dict.fromkeys(unknown_reasons)) if policy not in ("all", "never") else [],
    )
    return analysis, wanted, origins


def _use(uses: dict[Key, dict[str, Any]], key: Key, effect: StatementEffect,
         existed: bool) -> None:  # fmt: skip
    use = uses.setdefault(key, {"operations": [], "columns": [], "lossy": False, "exists_before": existed})
    if effect.kind not in use["operations"]:
        use["operations"].append(effect.kind)
    for column in effect.columns:
        if column not in use["columns"]:
            use["columns"].append(column)
    use["lossy"] = use["lossy"] or effect.lossy


def _wants(policy: str, effect: StatementEffect) -> bool:
    """Whether this effect on an existing table puts the table in the policy's snapshot."""
    if policy == "touched":
        return effect.kind != "select" or effect.lossy or effect.opaque
    # An effect we cannot see through may change the rows it names: snapshot them too.
    return effect.lossy or effect.opaque


def _affected_columns(effect: StatementEffect) -> set[str] | None:
    if effect.columns and effect.kind not in _WHOLE_ROW_KINDS:
        return set(effect.columns)
    if effect.lossy or effect.opaque:
        return None  # every column of the rows
    return set(effect.columns)


def _merge(into: _Wanted, key: Key,
           columns: set[str] | None) -> None:  # fmt: skip
    if key not in into:
        into[key] = None if columns is None else set(columns)
    elif into[key] is not None:
        current = into[key]
        into[key] = None if columns is None else (current or set()) | columns


def _dropped_schemas(statement: str) -> list[str]:
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError:
        return []
    names: list[str] = []
    for raw in parsed:
        stmt = raw.stmt
        if isinstance(stmt, ast.DropStmt) and stmt.removeType == ObjectType.OBJECT_SCHEMA:
            for obj in stmt.objects or ():
                if isinstance(obj, ast.String) and obj.sval:
                    names.append(obj.sval)
    return names


def _renamed_to(statement: str) -> str | None:
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError:
        return None
    for raw in parsed:
        if isinstance(raw.stmt, ast.RenameStmt) and raw.stmt.newname:
            return str(raw.stmt.newname)
    return None


# -- the target database ------------------------------------------------------------------------

_RELATION_SQL = """
SELECT c.oid, c.relkind FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_UNQUALIFIED_SQL = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(quote_ident(%s))
"""
_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_SIZE_SQL = """
SELECT c.oid, c.reltuples::float8, pg_catalog.pg_table_size(c.oid)
FROM pg_catalog.pg_class c
WHERE c.oid = %s AND c.relkind <> 'p'
UNION ALL
SELECT t.relid, c.reltuples::float8, pg_catalog.pg_table_size(t.relid)
FROM pg_catalog.pg_partition_tree(%s) t JOIN pg_catalog.pg_class c ON c.oid = t.relid
WHERE t.isleaf AND t.relid <> %s
"""
_USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""
_FUNCTION_SQL = """
SELECT count(*) FILTER (WHERE n.nspname = 'pg_catalog'),
       count(*) FILTER (WHERE n.nspname = 'pg_catalog' AND p.provolatile NOT IN ('i', 's')),
       count(*) FILTER (WHERE n.nspname <> 'pg_catalog')
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = %s
"""


class _Catalog:
    """Read-only lookups in the target database, cached."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        row = conn.execute("SELECT current_schema()").fetchone()
        self.default_schema = str(row[0]) if row and row[0] else "public"
        self._resolved: dict[TableRef, Key] = {}
        self._relations: dict[Key, tuple[int, str] | None] = {}
        self._functions: dict[tuple[str | None, str], bool] = {}

    def resolve(self, ref: TableRef) -> Key:
        """(schema, table): unqualified names as the search_path finds them, else the first schema."""
        if ref.schema:
            return ref.schema, ref.name
        if ref not in self._resolved:
            row = self.conn.execute(_UNQUALIFIED_SQL, (ref.name,)).fetchone()
            self._resolved[ref] = (str(row[0]), str(row[1])) if row else (self.default_schema, ref.name)
        return self._resolved[ref]

    def relation(self, key: Key) -> tuple[int, str] | None:
        """(oid, relkind) of an existing relation."""
        if key not in self._relations:
            row = self.conn.execute(_RELATION_SQL, key).fetchone()
            self._relations[key] = (int(row[0]), str(row[1])) if row else None
        return self._relations[key]

    def is_table(self, key: Key) -> bool:
        found = self.relation(key)
        return found is not None and found[1] in _TABLE_KINDS

    def tables_in(self, schema: str) -> list[Key]:
        rows = self.conn.execute(
            """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 2""",
            (schema,),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def user_tables(self) -> list[Key]:
        rows = self.conn.execute(_USER_TABLES_SQL, (list(_EXCLUDED_SCHEMAS),)).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def version_table_key(self, version_table: tuple[str | None, str]) -> Key | None:
        schema, name = version_table
        key = self.resolve(TableRef(schema, name))
        return key if self.relation(key) else None

    def table_plan(self, key: Key, now: Key, affected: set[str] | None) -> SnapshotTablePlan:
        """The snapshot of ``key`` (its name when the revision runs), read from ``now``."""
        found = self.relation(now)
        assert found is not None, now
        oid, _ = found
        columns = [
            SnapshotColumn(str(name), str(type_), affected is None or name in affected)
            for name, type_ in self.conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
        ]
        rows = 0
        size = 0
        for part_oid, reltuples, part_size in self.conn.execute(_SIZE_SQL, (oid, oid, oid)).fetchall():
            size += int(part_size or 0)
            if reltuples is not None and reltuples >= 0:
                rows += int(reltuples)
            else:  # never vacuumed or analysed: no estimate, count instead
                rows += self._count(int(part_oid))
        return SnapshotTablePlan(key[0], key[1], columns, rows, size, None if now == key else now)

    def _count(self, oid: int) -> int:
        row = self.conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
            (oid,),
        ).fetchone()
        assert row is not None
        counted = self.conn.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(row[0], row[1]))
        ).fetchone()
        return int(counted[0]) if counted else 0

    # -- functions --------------------------------------------------------------------------------
    def refine(self, effect: StatementEffect) -> StatementEffect:
        """Clear ``opaque`` where the only unknown functions are stable or immutable built-ins.

        SQLAlchemy and Alembic send catalog queries (e.g. ``pg_type_is_visible`` when creating an
        enum) that classify_sql cannot vouch for; PostgreSQL promises that functions marked STABLE
        or IMMUTABLE do not modify the database.
        """
        if not effect.opaque or "unknown function" not in effect.reason:
            return effect
        functions = _called_functions(effect.sql)
        if functions is None or not all(self._builtin_read_only(f) for f in functions):
            return effect
        reason = effect.reason.split("; calls unknown function", 1)[0]
        return replace(effect, opaque=False, reason=reason)

    def _builtin_read_only(self, function: tuple[str | None, str]) -> bool:
        schema, name = function
        if schema is None and name.lower() in SAFE_FUNCTIONS:
            return True
        if schema not in (None, "pg_catalog"):
            return False
        if function not in self._functions:
            row = self.conn.execute(_FUNCTION_SQL, (name,)).fetchone()
            builtin, volatile, elsewhere = row if row else (0, 0, 0)
            # Unqualified: a user function of the same name could be the one called.
            shadowed = schema is None and bool(elsewhere)
            self._functions[function] = bool(builtin) and not volatile and not shadowed
        return self._functions[function]


def _called_functions(statement: str) -> set[tuple[str | None, str]] | None:
    """The functions a plain query or DML statement calls; None for anything else."""
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError:
        return None
    found: set[tuple[str | None, str]] = set()
    for raw in parsed:
        stmt = raw.stmt
        if not isinstance(stmt, (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt,
                                 ast.CreateTableAsStmt)):  # fmt: skip
            return None
        for node in walk_nodes(stmt):
            if isinstance(node, ast.FuncCall):
                parts = [p.sval or "" for p in node.funcname or () if isinstance(p, ast.String)]
                if not parts:
                    return None
                found.add((parts[-2] if len(parts) > 1 else None, parts[-1]))
    return found


# -- tables through the run ---------------------------------------------------------------------


class _RunTracker:
    """Which tables exist as the revisions run: created, dropped and renamed ones are followed."""

    def __init__(self, catalog: _Catalog) -> None:
        self.catalog = catalog
        self._state: dict[Key, str] = {}  # "created" | "dropped"
        self._origin: dict[Key, Key] = {}  # renamed -> name before the run
        self._start: dict[Key, Key] = {}  # renamed within the current revision -> name at its start

    def begin_revision(self) -> None:
        self._start = {}

    def start_name(self, key: Key) -> Key:
        """The table's name when the current revision started (its snapshot is taken then)."""
        return self._start.get(key, key)

    def exists_before(self, key: Key) -> bool:
        """The data of this table (under this name now) existed before the run."""
        if self._state.get(key) in ("created", "dropped"):
            return False
        if key in self._origin:
            return True
        return self.catalog.is_table(key)

    def origin(self, key: Key) -> Key:
        """The table's name in the target database before the run."""
        return self._origin.get(key, key)

    def dropped(self, key: Key) -> None:
        self._state[key] = "dropped"
        self._origin.pop(key, None)

    def tables_in_schemas(self, schemas: list[str]) -> list[Key]:
        keys = [k for schema in schemas for k in self.catalog.tables_in(schema)]
        keys += [k for k, state in self._state.items() if state == "created" and k[0] in schemas]
        keys += [k for k in self._origin if k[0] in schemas]
        return list(dict.fromkeys(k for k in keys if self._state.get(k) != "dropped"))

    def apply(self, key: Key, effect: StatementEffect) -> None:
        if effect.kind == "create_table":
            self._state[key] = "created"
            self._origin.pop(key, None)
        elif effect.kind == "drop_table":
            self.dropped(key)
        elif effect.kind == "rename_table":
            new_name = _renamed_to(effect.sql)
            if new_name is None:
                return
            new_key = (key[0], new_name)
            existed = self.exists_before(key)
            origin = self.origin(key)
            self._start[new_key] = self._start.pop(key, key)
            self.dropped(key)
            if existed:
                self._state.pop(new_key, None)
                self._origin[new_key] = origin
            else:
                self._state[new_key] = "created"
