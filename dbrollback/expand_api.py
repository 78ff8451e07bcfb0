"""contract and abort of open expansions, and the work an upgrade does after opening them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dbrollback.catalog import audit
from dbrollback.catalog.lock import acquire, unlock
from dbrollback.catalog.schema import catalog_exists, ensure_catalog
from dbrollback.database import Database, Notify, connect, resolve_database
from dbrollback.errors import ConfigError, DbrollbackError, MigrationFailed, RefusedForSafety
from dbrollback.expand.lifecycle import (
    SYNCED_KINDS,
    Outcome,
    abort,
    contract,
    contract_problems,
    describe,
    new_shape,
    old_shape,
)
from dbrollback.expand.registry import OPEN, Expansion, list_expansions
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.settings import Settings
from dbrollback.urls import redact


def _quiet(_: str) -> None:
    pass


@dataclass
class ExpandCommandResult:
    action: str  # "contract" or "abort"
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dry_run": self.dry_run,
            "expansions": [o.to_dict() for o in self.outcomes],
            "duration_s": round(self.duration_s, 3),
        }


def _chosen(conn: psycopg.Connection, revision: str | None, ids: list[int] | None) -> list[Expansion]:
    if not catalog_exists(conn):
        raise ConfigError("This database has no dbrollback catalog, so no open expansion.")
    found = list_expansions(conn, revision=revision, ids=ids or None)
    if not found:
        closed = list_expansions(conn, revision=revision, ids=ids or None, statuses=("contracted", "aborted"))
        which = f" of revision {revision}" if revision else ""
        if closed:
            states = ", ".join(f"{e.id} {e.status}" for e in closed)
            raise RefusedForSafety(
                f"No open expansion{which}: already closed ({states}). Nothing was changed."
            )
        raise ConfigError(f"No open expansion{which}. `dbrollback status` lists the open ones.")
    return found


def open_expansions(settings: Settings, *, notify: Notify = _quiet) -> list[dict[str, Any]]:
    """Open expansions with their backfill's progress (for status)."""
    database = resolve_database(settings, notify)
    with connect(database) as conn:
        return expansion_summaries(conn)


def expansion_summaries(conn: psycopg.Connection) -> list[dict[str, Any]]:
    if not catalog_exists(conn):
        return []
    summaries = []
    for e in list_expansions(conn, statuses=(OPEN,)):
        backfill = None
        if e.backfill_id is not None:
            row = conn.execute(
                """SELECT b.status, b.rows_updated, b.rows_scanned,
                          greatest(c.reltuples, 0)::bigint
                   FROM dbrollback.backfills b
                   LEFT JOIN pg_catalog.pg_class c
                     ON c.oid = to_regclass(quote_ident(b.table_schema) || '.' || quote_ident(b.table_name))
                   WHERE b.id = %s""",
                (e.backfill_id,),
            ).fetchone()
            if row is not None:
                backfill = {
                    "id": e.backfill_id,
                    "status": row[0],
                    "rows_updated": row[1],
                    "rows_scanned": row[2],
                    "estimated_rows": row[3],
                }
        summaries.append(
            {
                "id": e.id,
                "revision": e.revision,
                "run_id": e.run_id,
                "kind": e.kind,
                "table": e.table_name,
                "change": describe(e),
                "backfill": backfill,
                "opened_at": e.created_at.isoformat(),
            }
        )
    return summaries


def _run(
    settings: Settings,
    action: str,
    revision: str | None,
    ids: list[int] | None,
    dry_run: bool,
    assume_yes: bool,
    confirm: Callable[[list[Expansion]], bool] | None,
    notify: Notify,
    body: Callable[[Database, psycopg.Connection, list[Expansion], ExpandCommandResult], None],
) -> ExpandCommandResult:
    started = time.monotonic()
    database = resolve_database(settings, notify)
    with connect(database, action) as conn:
        expansions = _chosen(conn, revision, ids)
        result = ExpandCommandResult(action, dry_run)
        if dry_run:
            body(database, conn, expansions, result)
            result.duration_s = time.monotonic() - started
            return result
        if not assume_yes and (confirm is None or not confirm(expansions)):
            raise RefusedForSafety(f"{action.capitalize()} not confirmed; nothing was changed.")
        ensure_catalog(conn)
        acquire(conn, settings.lock_wait)
        try:
            expansions = _chosen(conn, revision, ids)  # again, under the lock
            audit.record(
                conn,
                action,
                settings.actor,
                details={"status": "started", "expansions": [e.id for e in expansions]},
            )
            try:
                try:
                    body(database, conn, expansions, result)
                except psycopg.errors.LockNotAvailable:
                    raise RefusedForSafety(
                        f"{action.capitalize()} could not get its locks within lock_timeout "
                        f"{_ms(settings)}; its current step changed nothing. Try again, or raise "
                        "--lock-timeout."
                    ) from None
                except psycopg.Error as exc:
                    done = ", ".join(str(o.expansion.id) for o in result.outcomes) or "none"
                    raise MigrationFailed(
                        f"{action.capitalize()} failed and its current step was rolled back: "
                        f"{redact(str(exc)).strip().splitlines()[0]}. Expansions finished before it: {done}; "
                        f"running `dbrollback {action}` again continues.",
                        done=[o.expansion.id for o in result.outcomes],
                    ) from None
            except BaseException as exc:
                audit.record(
                    conn,
                    action,
                    settings.actor,
                    details={
                        "status": "failed",
                        "expansions": [e.id for e in expansions],
                        "done": [o.expansion.id for o in result.outcomes],
                        "error": exc.kind if isinstance(exc, DbrollbackError) else type(exc).__name__,
                    },
                )
                raise
            audit.record(
                conn,
                action,
                settings.actor,
                details={"status": "succeeded", "expansions": [o.to_dict() for o in result.outcomes]},
            )
        finally:
            unlock(conn)
    result.duration_s = time.monotonic() - started
    return result


def abort_expansions(
    settings: Settings,
    revision: str | None = None,
    *,
    ids: list[int] | None = None,
    dry_run: bool = False,
    assume_yes: bool = False,
    confirm: Callable[[list[Expansion]], bool] | None = None,
    notify: Notify = _quiet,
) -> ExpandCommandResult:
    """Drop the new shape of each open expansion (of ``revision``, or all), newest first.

    All in one transaction (an index built CONCURRENTLY is dropped CONCURRENTLY after it): the old
    shape has every write, so nothing is lost and nothing needs a snapshot."""

    def body(
        database: Database, conn: psycopg.Connection, expansions: list[Expansion], result: ExpandCommandResult
    ) -> None:
        newest_first = list(reversed(expansions))
        if dry_run:
            result.outcomes = [Outcome(e, "would abort", dropped=new_shape(e)) for e in newest_first]
            return
        indexes = [e for e in newest_first if e.kind == "index"]
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (_ms(settings),))
            for e in newest_first:
                if e.kind != "index":
                    result.outcomes.append(abort(conn, e, settings.actor))
        for e in indexes:  # DROP INDEX CONCURRENTLY cannot run in a transaction block
            result.outcomes.append(abort(conn, e, settings.actor))
        for outcome in result.outcomes:
            notify(
                f"Aborted expansion {outcome.expansion.id} ({describe(outcome.expansion)}): "
                f"dropped {', '.join(outcome.dropped) or 'nothing'}"
            )

    return _run(settings, "abort", revision, ids, dry_run, assume_yes, confirm, notify, body)


def contract_expansions(
    settings: Settings,
    revision: str | None = None,
    *,
    ids: list[int] | None = None,
    dry_run: bool = False,
    assume_yes: bool = False,
    snapshot: bool = True,
    drop_dependents: bool = False,
    confirm: Callable[[list[Expansion]], bool] | None = None,
    progress: ProgressReporter = SILENT,
    notify: Notify = _quiet,
) -> ExpandCommandResult:
    """Drop the old shape of each open expansion (of ``revision``, or all), oldest first.

    Refused (exit 3, nothing changed) unless every chosen expansion's backfill is done and every
    row's new columns match the old ones (counted now, server-side). The table is snapshotted
    before its old columns are dropped, like any lossy change."""

    def body(
        database: Database, conn: psycopg.Connection, expansions: list[Expansion], result: ExpandCommandResult
    ) -> None:
        checked: list[Outcome] = []
        problems: list[str] = []
        for e in expansions:
            found, outcome = contract_problems(conn, e, drop_dependents=drop_dependents)
            outcome.dropped = old_shape(e)
            checked.append(outcome)
            problems += [f"expansion {e.id} ({e.table_name}: {describe(e)}): {p}" for p in found]
        if problems:
            raise RefusedForSafety(
                "Cannot contract: " + "; ".join(problems) + ". Nothing was changed.",
                problems=problems,
            )
        if dry_run:
            result.outcomes = checked
            return
        for outcome in checked:
            e = outcome.expansion
            outcome.dropped = []
            if e.kind in SYNCED_KINDS and snapshot:
                outcome.snapshot_id = _snapshot(settings, database, conn, e, progress)
                notify(
                    f"Snapshot {outcome.snapshot_id} of {e.table_name} taken before contracting "
                    f"expansion {e.id}"
                )
            elif e.kind in SYNCED_KINDS:
                outcome.notes.append("no snapshot taken (--no-snapshot)")
            contract(
                conn,
                e,
                settings.actor,
                lock_timeout=settings.lock_timeout,
                retries=settings.lock_retries,
                outcome=outcome,
            )
            result.outcomes.append(outcome)
            notify(
                f"Contracted expansion {e.id} ({describe(e)}): "
                f"dropped {', '.join(outcome.dropped) or 'nothing'}"
            )

    return _run(settings, "contract", revision, ids, dry_run, assume_yes, confirm, notify, body)


def _snapshot(
    settings: Settings,
    database: Database,
    conn: psycopg.Connection,
    expansion: Expansion,
    progress: ProgressReporter,
) -> str:
    from dbrollback.snapshot_api import configured_store, take_snapshot

    store = configured_store(settings)
    store.probe()
    manifest = take_snapshot(
        settings,
        database,
        conn,
        store,
        [expansion.table],
        label=f"before contract of expansion {expansion.id}",
        progress=progress,
    )
    return manifest.id


def _ms(settings: Settings) -> str:
    from dbrollback.durations import postgres_ms

    return postgres_ms(settings.lock_timeout)


def finish_opened(
    conn: psycopg.Connection,
    run_id: int,
    *,
    lock_timeout: Any = None,
    retries: int = 0,
    progress: ProgressReporter = SILENT,
    notify: Notify = _quiet,
) -> list[dict[str, Any]]:
    """After an upgrade's revisions committed: backfill the expansions the run opened and validate
    its NOT VALID foreign keys (under ``lock_timeout``), each in short transactions of its own.
    Backfills earlier runs left unfinished (killed, or --no-backfill) are continued too, but their
    failure is only reported: it is not this run's. Returns what was done."""
    from dbrollback.backfill.engine import run_backfill
    from dbrollback.expand import schema_objects
    from dbrollback.expand.lifecycle import _in_transaction
    from dbrollback.expand.table import table_by_name

    done: list[dict[str, Any]] = []
    for e in list_expansions(conn):
        state = None
        if e.backfill_id is not None:
            row = conn.execute(
                "SELECT status FROM dbrollback.backfills WHERE id = %s", (e.backfill_id,)
            ).fetchone()
            state = row[0] if row else None
        ours = e.run_id == run_id
        if e.backfill_id is not None and state not in (None, "done", "cancelled"):
            notify(f"Backfilling expansion {e.id} ({e.table_name}: {describe(e)})")
            try:
                outcome = run_backfill(conn, e.backfill_id, progress=progress, notify=notify)
            except DbrollbackError as exc:
                if ours:
                    raise
                notify(f"Warning: the backfill of expansion {e.id} (an earlier run's) stopped: {exc.message}")
                continue
            done.append({"expansion_id": e.id, "backfill": outcome.to_dict()})
        elif ours and e.kind == "foreign_key" and not e.spec.get("validated"):
            table = table_by_name(conn, e.table)
            if table is None:
                continue

            def validate(table: Any = table, e: Expansion = e) -> None:
                schema_objects.validate_foreign_key(conn, table, e.spec["name"])
                conn.execute(
                    "UPDATE dbrollback.expansions SET spec = spec || '{\"validated\": true}' WHERE id = %s",
                    (e.id,),
                )

            _in_transaction(conn, lock_timeout, retries, validate)
            done.append({"expansion_id": e.id, "validated": e.spec["name"]})
            notify(f"Validated foreign key {e.spec['name']} on {e.table_name}")
    return done


def refuse_contracted(conn: psycopg.Connection, revisions: list[str]) -> None:
    """A rollback cannot undo a revision whose expansion was contracted: its old shape is gone."""
    if not revisions or not catalog_exists(conn):
        return
    for revision in revisions:
        contracted = [
            e
            for e in list_expansions(conn, revision=revision, statuses=("contracted",), exact=True)
            if e.revision == revision
        ]
        if contracted:
            e = contracted[0]
            raise RefusedForSafety(
                f"Revision {revision} opened expansion {e.id} ({e.table_name}: {describe(e)}), which was "
                f"contracted at {e.closed_at:%Y-%m-%d %H:%M:%S %Z}"
                + (
                    ": its old shape is gone, so the downgrade cannot bring it back. The values are in the "
                    "snapshot contract took (`dbrollback snapshot list`)."
                    if e.kind in SYNCED_KINDS
                    else ", so its downgrade would no longer undo it; write a new revision instead."
                )
                + " Nothing was changed.",
                revision=revision,
                expansion_id=e.id,
            )


def abort_for_rollback(conn: psycopg.Connection, revision: str, actor: str) -> list[Outcome]:
    """Inside a rollback's transaction, after ``revision``'s downgrade: abort whatever of its
    expansions the downgrade left open (one not written as ``expand.abort()``)."""
    if not catalog_exists(conn):
        return []
    return [
        abort(conn, e, actor)
        for e in reversed(list_expansions(conn, revision=revision, exact=True))
        if e.revision == revision
    ]


def mirrored_columns(conn: psycopg.Connection, table: tuple[str, str]) -> set[str]:
    """New columns of the table's open synced expansions: every write to them is mirrored into the
    old columns by the dual-write trigger, so a rollback has nothing of theirs to save (putting
    saved values back later would overwrite writes made to the old columns meanwhile)."""
    if not catalog_exists(conn):
        return set()
    return {
        c["name"]
        for e in list_expansions(conn)
        if e.table == table and e.kind in SYNCED_KINDS
        for c in e.spec["new"]
    }
