"""Closing an expansion: abort (drop the new shape) and contract (drop the old shape), per kind.

Abort runs inside the caller's transaction (the command's own, or a revision's downgrade, or a
rollback's single transaction) and is idempotent: everything is dropped IF EXISTS, so a downgrade
that already dropped the new column by hand still ends with the trigger gone and the old default
back. Contract runs on an autocommit connection in short transactions (NOT VALID, VALIDATE, then
one transaction that drops the old shape), each safe to repeat after a kill.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.durations import postgres_ms
from dbrollback.errors import RefusedForSafety
from dbrollback.expand import not_null, schema_objects, synced
from dbrollback.expand.registry import ABORTED, CONTRACTED, Expansion, list_expansions, mark_closed
from dbrollback.expand.sqlexpr import referenced_columns
from dbrollback.expand.table import LiveTable, dependents, table_by_name

SYNCED_KINDS = frozenset({"synced_column", "rename_column", "change_column_type", "split_column"})


@dataclass
class Outcome:
    """What closing (or checking) one expansion did."""

    expansion: Expansion
    action: str  # "aborted", "contracted", or with dry_run "would abort"/"would contract"
    checked_rows: int | None = None
    out_of_sync_rows: int | None = None
    dropped: list[str] = field(default_factory=list)
    snapshot_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        e = self.expansion
        return {
            "id": e.id,
            "revision": e.revision,
            "kind": e.kind,
            "table": e.table_name,
            "action": self.action,
            "checked_rows": self.checked_rows,
            "out_of_sync_rows": self.out_of_sync_rows,
            "dropped": self.dropped,
            "snapshot_id": self.snapshot_id,
            "notes": self.notes,
        }


def describe(expansion: Expansion) -> str:
    spec = expansion.spec
    if expansion.kind in SYNCED_KINDS:
        new = ", ".join(c["name"] for c in spec["new"])
        return f"{', '.join(spec['old'])} -> {new}"
    if expansion.kind == "not_null_column":
        return f"{spec['column']} (NOT NULL at contract)"
    if expansion.kind == "foreign_key":
        return f"foreign key {spec['name']}"
    return f"index {spec['name']}"


def new_shape(expansion: Expansion) -> list[str]:
    """What abort drops, for reports and prompts."""
    spec = expansion.spec
    if expansion.kind in SYNCED_KINDS:
        return [f"column {c['name']}" for c in spec["new"]]
    if expansion.kind == "not_null_column":
        return [f"column {spec['column']}"]
    if expansion.kind == "foreign_key":
        return [f"constraint {spec['name']}"]
    return [f"index {spec['name']}"]


def old_shape(expansion: Expansion) -> list[str]:
    """What contract drops."""
    if expansion.kind in SYNCED_KINDS:
        return [f"column {c}" for c in expansion.spec["old"]]
    return []


def columns_read(expansion: Expansion) -> set[str]:
    """Columns the expansion's trigger, constraint or index uses: dropping one of them while the
    expansion is open would break it (a trigger's PL/pgSQL leaves no dependency PostgreSQL sees)."""
    spec = expansion.spec
    if expansion.kind in SYNCED_KINDS:
        found = set(spec["old"]) | {c["name"] for c in spec["new"]}
        for expression in [*(c["up"] for c in spec["new"]), *spec.get("down", {}).values()]:
            found.update(referenced_columns(expression))
        return found
    if expansion.kind == "not_null_column":
        return {spec["column"], *referenced_columns(spec["backfill"])}
    if expansion.kind == "foreign_key":
        return set(spec["local_cols"])
    return {*spec["columns"], *(referenced_columns(spec["where"]) if spec.get("where") else [])}


def read_by_others(conn: psycopg.Connection, expansion: Expansion, columns: list[str]) -> list[str]:
    """Why ``columns`` cannot be dropped: other open expansions of the table that use them."""
    return [
        f"expansion {other.id} ({describe(other)}) uses {', '.join(sorted(used))}; contract or abort it first"
        for other in list_expansions(conn)
        if other.id != expansion.id and other.table == expansion.table
        for used in [columns_read(other) & set(columns)]
        if used
    ]


# -- abort ---------------------------------------------------------------------------------------


def abort(conn: psycopg.Connection, expansion: Expansion, actor: str) -> Outcome:
    """Drop the expansion's new shape and its trigger; the old shape has every write."""
    table = table_by_name(conn, expansion.table)
    spec = expansion.spec
    new_columns = [s.removeprefix("column ") for s in new_shape(expansion) if s.startswith("column ")]
    blocked = read_by_others(conn, expansion, new_columns)
    if blocked:
        raise RefusedForSafety(
            f"Cannot abort expansion {expansion.id} ({describe(expansion)}): "
            + "; ".join(blocked)
            + ". Nothing was changed."
        )
    dropped: list[str] = []
    if expansion.kind in SYNCED_KINDS or expansion.kind == "not_null_column":
        synced.drop_trigger(conn, table, expansion.table[0], synced.trigger_name(expansion))
        dropped.append(f"trigger {synced.trigger_name(expansion)}")
        columns = [c["name"] for c in spec["new"]] if expansion.kind in SYNCED_KINDS else [spec["column"]]
        if table is not None:
            for column in columns:
                if column in table.columns:
                    _alter(conn, table, sql.SQL("DROP COLUMN {}").format(sql.Identifier(column)))
                    dropped.append(f"column {column}")
            for old, default in spec.get("moved_defaults", {}).items():
                if old in table.columns:
                    _alter(
                        conn,
                        table,
                        sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(
                            sql.Identifier(old), sql.SQL(default)
                        ),
                    )
    elif expansion.kind == "foreign_key" and table is not None:
        _alter(conn, table, sql.SQL("DROP CONSTRAINT IF EXISTS {}").format(sql.Identifier(spec["name"])))
        dropped.append(f"constraint {spec['name']}")
    elif expansion.kind == "index":
        concurrently = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and conn.autocommit
        conn.execute(
            sql.SQL("DROP INDEX {}IF EXISTS {}").format(
                sql.SQL("CONCURRENTLY " if concurrently else ""),
                sql.Identifier(expansion.table[0], spec["name"]),
            )
        )
        dropped.append(f"index {spec['name']}")
    if expansion.backfill_id is not None:
        conn.execute(
            """UPDATE dbrollback.backfills SET status = 'cancelled', finished_at = clock_timestamp(),
               updated_at = clock_timestamp() WHERE id = %s AND status <> 'done'""",
            (expansion.backfill_id,),
        )
    mark_closed(conn, expansion.id, ABORTED, actor)
    return Outcome(expansion, "aborted", dropped=dropped)


def _alter(conn: psycopg.Connection, table: LiveTable, action: sql.Composable) -> None:
    conn.execute(sql.SQL("ALTER TABLE {} {}").format(table.ident, action))


# -- contract ------------------------------------------------------------------------------------


def contract_problems(
    conn: psycopg.Connection, expansion: Expansion, *, drop_dependents: bool
) -> tuple[list[str], Outcome]:
    """Why ``expansion`` cannot be contracted now (empty: it can), with the rows checked."""
    outcome = Outcome(expansion, "would contract")
    problems: list[str] = []
    table = table_by_name(conn, expansion.table)
    if table is None:
        return [f"table {expansion.table_name} no longer exists"], outcome
    if expansion.backfill_id is not None:
        row = conn.execute(
            "SELECT status, rows_updated FROM dbrollback.backfills WHERE id = %s", (expansion.backfill_id,)
        ).fetchone()
        if row is None or row[0] != "done":
            problems.append(
                f"its backfill {expansion.backfill_id} is {row[0] if row else 'missing'}"
                f" ({row[1] if row else 0:,} rows so far); finish it with "
                f"`dbrollback backfill --resume --id {expansion.backfill_id}`"
            )
    spec = expansion.spec
    if expansion.kind in SYNCED_KINDS:
        sync = synced.SyncSpec.from_dict(spec)
        missing = [c for c in [*sync.old, *(n.name for n in sync.new)] if c not in table.columns]
        if missing:
            return [f"column(s) {', '.join(missing)} no longer exist"], outcome
        columns = list(table.columns)
        checked, bad = _count(conn, table, f"NOT ({synced.consistent(conn, sync, columns)})")
        outcome.checked_rows, outcome.out_of_sync_rows = checked, bad
        if bad:
            problems.append(f"{bad:,} of {checked:,} rows have new column(s) that do not match the old ones")
        problems += read_by_others(conn, expansion, sync.old)
        for column in not_null_columns(expansion):
            _, nulls = _count(
                conn, table, sql.SQL("{} IS NULL").format(sql.Identifier(column)).as_string(conn)
            )
            if nulls:
                problems.append(
                    f"{nulls:,} rows have {column} NULL, so it cannot become NOT NULL as {sync.old[0]} is"
                )
        for old in sync.old:
            used_by = dependents(conn, table, old)
            # Another table's foreign key or a view cannot go with the column: always refused.
            views = [d for d in used_by if d.startswith(("view ", "foreign key "))]
            if views or (used_by and not drop_dependents):
                problems.append(
                    f"column {old} is used by {', '.join(used_by)}; dropping it would drop "
                    + ("or break them" if views else "them")
                    + ". Recreate them on the new column (expand.create_index, expand.add_foreign_key) "
                    + ("and move those off it first" if views else "and pass --drop-dependents")
                )
    elif expansion.kind == "not_null_column":
        if spec["column"] not in table.columns:
            return [f"column {spec['column']} no longer exists"], outcome
        checked, bad = _count(
            conn, table, sql.SQL("{} IS NULL").format(sql.Identifier(spec["column"])).as_string(conn)
        )
        outcome.checked_rows, outcome.out_of_sync_rows = checked, bad
        if bad:
            problems.append(f"{bad:,} of {checked:,} rows still have {spec['column']} NULL")
    elif expansion.kind == "foreign_key":
        checked, bad = schema_objects.orphan_rows(conn, table, spec)
        outcome.checked_rows, outcome.out_of_sync_rows = checked, bad
        if bad:
            problems.append(
                f"{bad:,} of {checked:,} rows reference no row of {'.'.join(spec['referent'])}, so "
                f"{spec['name']} cannot be validated; fix or delete them first"
            )
    elif expansion.kind == "index":
        state = schema_objects.index_state(conn, expansion.table[0], spec["name"])
        if state is not True:
            problems.append(f"index {spec['name']} is {'missing' if state is None else 'INVALID'}")
    return problems, outcome


def _count(conn: psycopg.Connection, table: LiveTable, bad_when: str) -> tuple[int, int]:
    row = conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(sql.SQL(bad_when), table.ident)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def not_null_columns(expansion: Expansion) -> list[str]:
    """Columns contract makes NOT NULL."""
    if expansion.kind == "not_null_column":
        return [expansion.spec["column"]]
    if expansion.kind in SYNCED_KINDS and expansion.spec.get("not_null"):
        return [c["name"] for c in expansion.spec["new"]]
    return []


def contract(
    conn: psycopg.Connection,
    expansion: Expansion,
    actor: str,
    *,
    lock_timeout: Any,
    retries: int,
    outcome: Outcome,
) -> Outcome:
    """Contract on an autocommit connection; every step can be repeated after an interruption."""
    table = table_by_name(conn, expansion.table)
    assert table is not None
    checks = [
        (column, not_null.check_name(expansion.id, i)) for i, column in enumerate(not_null_columns(expansion))
    ]
    for column, name in checks:  # NOT VALID: no scan, brief lock
        if not _constraint_exists(conn, table, name):
            _in_transaction(
                conn,
                lock_timeout,
                retries,
                lambda c=column, n=name: _alter(  # type: ignore[misc]
                    conn,
                    table,
                    sql.SQL("ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                        sql.Identifier(n), sql.Identifier(c)
                    ),
                ),
            )
    try:
        for _column, name in checks:  # scans, but SHARE UPDATE EXCLUSIVE lets writes go on
            _in_transaction(
                conn,
                lock_timeout,
                retries,
                lambda n=name: _alter(  # type: ignore[misc]
                    conn, table, sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(n))
                ),
            )
    except psycopg.errors.CheckViolation:
        # A NULL written since the checks: the NOT VALID CHECK would go on refusing old code's
        # NULL writes, so it goes (the expansion stays open; contract refuses until fixed).
        _in_transaction(conn, lock_timeout, retries, lambda: _drop_checks(conn, table, checks))
        raise
    if expansion.kind == "foreign_key":
        _in_transaction(
            conn,
            lock_timeout,
            retries,
            lambda: schema_objects.validate_foreign_key(conn, table, expansion.spec["name"]),
        )

    def finish() -> None:
        spec = expansion.spec
        if expansion.kind in SYNCED_KINDS or expansion.kind == "not_null_column":
            synced.drop_trigger(conn, table, expansion.table[0], synced.trigger_name(expansion))
            outcome.dropped.append(f"trigger {synced.trigger_name(expansion)}")
        for column, name in checks:
            _alter(conn, table, sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(column)))
            _alter(conn, table, sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(name)))
        if expansion.kind in SYNCED_KINDS:
            if len(spec["old"]) == len(spec["new"]) == 1:
                _move_owned_sequence(conn, table, spec["old"][0], spec["new"][0]["name"])
            for old in spec["old"]:
                _alter(conn, table, sql.SQL("DROP COLUMN {}").format(sql.Identifier(old)))
                outcome.dropped.append(f"column {old}")
            if spec.get("new_default"):
                _alter(
                    conn,
                    table,
                    sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(
                        sql.Identifier(spec["new"][0]["name"]), sql.SQL(spec["new_default"])
                    ),
                )
        mark_closed(conn, expansion.id, CONTRACTED, actor)

    _in_transaction(conn, lock_timeout, retries, finish)
    outcome.action = "contracted"
    return outcome


def _move_owned_sequence(conn: psycopg.Connection, table: LiveTable, old: str, new: str) -> None:
    """A serial column's sequence is dropped with the column it is OWNED BY; the renamed column's
    DEFAULT (nextval of it) needs it, so it moves to the new column first."""
    row = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (table.ident.as_string(conn), old)).fetchone()
    if row and row[0]:
        conn.execute(
            sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                sql.SQL(row[0]), table.ident, sql.Identifier(new)
            )
        )


def _drop_checks(conn: psycopg.Connection, table: LiveTable, checks: list[tuple[str, str]]) -> None:
    for _column, name in checks:
        _alter(conn, table, sql.SQL("DROP CONSTRAINT IF EXISTS {}").format(sql.Identifier(name)))


def _constraint_exists(conn: psycopg.Connection, table: LiveTable, name: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint WHERE conrelid = %s AND conname = %s)",
        (table.oid, name),
    ).fetchone()
    return bool(row and row[0])


def _in_transaction(
    conn: psycopg.Connection, lock_timeout: Any, retries: int, fn: Callable[[], None]
) -> None:
    """Run ``fn`` in its own transaction under lock_timeout, retrying lock timeouts with backoff."""
    for attempt in range(retries + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (postgres_ms(lock_timeout),))
                fn()
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == retries:
                raise RefusedForSafety(
                    f"Could not get the locks needed after {retries + 1} attempt(s) (lock_timeout "
                    f"{postgres_ms(lock_timeout)}); other sessions hold them. Try again later; what "
                    "was done so far is kept and the next attempt continues from there."
                ) from None
            time.sleep(min(10.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2))
