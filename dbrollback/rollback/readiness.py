"""Whether a run can still be rolled back losslessly, and if not, why: what `status` and `history` show.

The refusals of dbrollback/rollback/plan.py, asked ahead of time and without the lock: a run is
ready when it is a completed upgrade run not rolled back yet, its snapshots were taken (no
`--no-snapshot`, no snapshot policy `never`), and for every table a lossy revision changed the
fingerprint is usable and the snapshot is in the store, not pruned, inside `rollback_window`.

Cheaper than a rollback's own checks, on purpose: the snapshot files' sha256 is not recomputed
(that reads every byte; `dbrollback snapshot verify` does it), and the order of runs is not
considered (a rollback undoes the newest run first; an older run becomes possible once the newer
ones are rolled back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from dbrollback.catalog.fingerprints import NO_KEY, TAKEN, Fingerprint, fingerprints_of_run
from dbrollback.catalog.journal import RunRecord, rolled_back_runs
from dbrollback.catalog.schema import catalog_exists, installed_version
from dbrollback.database import connect, resolve_database
from dbrollback.errors import DbrollbackError
from dbrollback.rollback.plan import (
    FINGERPRINTS_SINCE,
    SnapshotProblem,
    snapshot_problem,
    unprotected_reason,
)
from dbrollback.settings import Settings
from dbrollback.snapshot.manifest import SnapshotManifest
from dbrollback.snapshot.store import SnapshotStore

# Catalog version 4 added fingerprints: runs journaled before it have none to merge with.


@dataclass(frozen=True)
class Readiness:
    possible: bool
    reason: str | None = None  # why not; None when possible

    def to_dict(self) -> dict[str, Any]:
        return {"possible": self.possible, "reason": self.reason}


READY = Readiness(True)


def _not(reason: str) -> Readiness:
    return Readiness(False, reason)


def rollback_readiness(
    conn: psycopg.Connection, run: RunRecord, settings: Settings, *, store: SnapshotStore | None = None
) -> Readiness:
    """Can `dbrollback rollback --run RUN` still bring back what `run` destroyed? See the module doc."""
    return _Checker(conn, settings, store).check(run)


def readiness_of_runs(
    conn: psycopg.Connection, runs: Sequence[RunRecord], settings: Settings
) -> dict[int, Readiness]:
    """`rollback_readiness` of each run (run id -> readiness), reading the journal and store once."""
    checker = _Checker(conn, settings, None)
    return {run.id: checker.check(run) for run in runs}


def readiness_for(settings: Settings, runs: Sequence[RunRecord]) -> dict[int, Readiness]:
    """`readiness_of_runs` on a connection of its own, for callers holding only settings."""
    if not runs:
        return {}
    with connect(resolve_database(settings), "status") as conn:
        return readiness_of_runs(conn, runs, settings)


class _Checker:
    def __init__(self, conn: psycopg.Connection, settings: Settings, store: SnapshotStore | None) -> None:
        self.conn = conn
        self.settings = settings
        self._store = store
        self._store_error: str | None = None
        self._catalog_version = installed_version(conn) if catalog_exists(conn) else 0
        self._reverted = rolled_back_runs(conn)
        self._snapshots: dict[str, Readiness | SnapshotManifest] = {}

    def check(self, run: RunRecord) -> Readiness:
        if run.command != "upgrade":
            return _not(f"a {run.command} run, not an upgrade")
        if run.id in self._reverted:
            return _not(f"rolled back by run {self._reverted[run.id]}")
        if run.status == "running":
            return _not("still running")
        if run.status != "succeeded":
            at = f" at {run.failed_revision}" if run.failed_revision else ""
            return _not(f"{run.status}{at}: finish it with `dbrollback upgrade` (see `dbrollback status`)")
        if not run.applied_revisions:
            return _not("applied nothing")
        if self._catalog_version < FINGERPRINTS_SINCE:
            return _not("journaled by an older dbrollback that kept no post-image fingerprints")
        unprotected = unprotected_reason(self.conn, run.id)
        if unprotected is not None:
            return _not(f"{unprotected}: nothing was saved")
        fingerprints = fingerprints_of_run(self.conn, run.id)
        for fingerprint in fingerprints:
            if fingerprint.status == NO_KEY:
                return _not(f"no key on {_name(fingerprint)}: merge impossible, --strategy restore only")
        missing = self._missing_fingerprint_tables(fingerprints)
        if missing:
            return _not(f"the post-image fingerprint of {missing[0]} is gone (pruned)")
        for fingerprint in fingerprints:
            found = self._snapshot(fingerprint.snapshot_id)
            if isinstance(found, Readiness):
                return found
            tables = {(t.schema_name, t.table_name) for t in found.tables}
            if (fingerprint.schema, fingerprint.table) not in tables:
                return _not(f"snapshot {found.id} does not hold {_name(fingerprint)}")
        return READY

    def _missing_fingerprint_tables(self, fingerprints: list[Fingerprint]) -> list[str]:
        # The same to_regclass test as plan.py's _fingerprint_table_exists, for all tables at once.
        taken = {f.fp_table: _name(f) for f in fingerprints if f.status == TAKEN and f.fp_table}
        if not taken:
            return []
        rows = self.conn.execute(
            "SELECT t FROM unnest(%s::text[]) AS t "
            "WHERE to_regclass(quote_ident('dbrollback') || '.' || quote_ident(t)) IS NULL",
            (list(taken),),
        ).fetchall()
        return [taken[r[0]] for r in rows]

    def _snapshot(self, snapshot_id: str) -> Readiness | SnapshotManifest:
        if snapshot_id not in self._snapshots:
            self._snapshots[snapshot_id] = self._usable_snapshot(snapshot_id)
        return self._snapshots[snapshot_id]

    def _usable_snapshot(self, snapshot_id: str) -> Readiness | SnapshotManifest:
        store = self._open_store()
        if store is None:
            return _not(f"the snapshot store cannot be opened: {self._store_error}")
        found = snapshot_problem(self.conn, self.settings, store, snapshot_id)
        return _not(found.short) if isinstance(found, SnapshotProblem) else found

    def _open_store(self) -> SnapshotStore | None:
        if self._store is None and self._store_error is None:
            from dbrollback.snapshot_api import configured_store

            try:
                self._store = configured_store(self.settings)
            except DbrollbackError as exc:
                self._store_error = exc.message
        return self._store


def _name(fingerprint: Fingerprint) -> str:
    return f"{fingerprint.schema}.{fingerprint.table}"
