"""kill -9 of real `dbrollback upgrade`, `contract` and `abort` processes working on an expansion
(issue #6): the database is left as it was, or in a state the next run finishes.

Each process is stalled deterministically where it is killed: the backfill at a known row by a
trigger waiting on an advisory lock the test holds; contract and abort waiting for a table lock
another session holds. pg_stat_activity and pg_locks tell when the process really waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Project
from tests.test_expand import (
    ROWS,
    _args,
    _columns,
    _customers,
    _describe,
    _expansions,
    _leftovers,
    _pairs,
    _run,
    _version,
    _write_both_ways,
)

STALL_KEY = 4242
STALL_ROW = 1500  # past the backfill's first batch (1,000 rows), so at least one batch committed


def _start(project: Project, database_url: str, store: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbrollback", *args, *_args(database_url, store)],
        cwd=project.root, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait(condition: Callable[[], Any], proc: subprocess.Popen[bytes] | None, what: str) -> Any:
    deadline = time.monotonic() + 120  # a guard against hanging, not a performance limit
    while not (found := condition()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.02)
    return found


def _waiting_for_table(db: psycopg.Connection, command: str, mode: str) -> int | None:
    """The backend pid of the `dbrollback COMMAND` session waiting for ``mode`` on customers."""
    row = db.execute(
        """SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
           WHERE a.datname = current_database() AND a.application_name LIKE %s
             AND a.wait_event_type = 'Lock' AND a.wait_event = 'relation'
             AND l.relation = 'customers'::regclass AND l.mode = %s AND NOT l.granted""",
        (f"dbrollback % {command}", mode),
    ).fetchone()
    return row[0] if row else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, unless it exited already (then the caller's wait has failed and says why)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()


def _gone(db: psycopg.Connection, pid: int) -> bool:
    row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row == (0,)


def _nn_checks(db: psycopg.Connection) -> list[tuple[str, bool]]:
    """The temporary NOT NULL checks contract adds: name and whether validated."""
    return db.execute(
        r"SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE '\_dbrb\_nn\_%' ORDER BY 1"
    ).fetchall()


def _backfill(db: psycopg.Connection) -> tuple[str, list[str] | None, int, int]:
    (row,) = db.execute("SELECT status, last_key, rows_updated, batches FROM dbrollback.backfills").fetchall()
    return row


def _xmins(db: psycopg.Connection) -> dict[int, str]:
    return dict(db.execute("SELECT id, xmin::text FROM customers ORDER BY id").fetchall())


def _open_expansion(project: Project, cli, db: psycopg.Connection, store: Path, database_url: str) -> dict:
    """Upgrade to r1, then to r2 (rename name -> full_name, backfilled); the shape before r2."""
    _customers(project)
    _run(cli, "upgrade", "r1", *_args(database_url, store))
    before_expansion = _describe(db, "customers")
    _run(cli, "upgrade", *_args(database_url, store))
    assert [e[3] for e in _expansions(db)] == ["open"]
    return before_expansion


def _assert_contracted(db: psycopg.Connection, expected: dict[int, str]) -> None:
    after = _describe(db, "customers")
    assert [c[:3] for c in after["columns"]] == [
        ("id", "bigint", True),
        ("note", "character varying(20)", False),
        ("created", "timestamp with time zone", False),
        ("full_name", "text", True),
    ]
    assert after["triggers"] == []
    assert _leftovers(db) == []
    assert [e[3] for e in _expansions(db)] == ["contracted"]
    assert dict(db.execute("SELECT id, full_name FROM customers").fetchall()) == expected


# -- 1. upgrade killed while backfilling the expansion it opened ---------------------------------


@pytest.mark.parametrize("finisher", ["upgrade", "backfill --resume"])
def test_kill_9_of_upgrade_mid_backfill_keeps_the_revision_and_the_next_run_finishes(
    project, cli, db, database_url, tmp_path, finisher
):
    store = tmp_path / "store"
    _customers(project)
    _run(cli, "upgrade", "r1", *_args(database_url, store))
    # Only an UPDATE of row STALL_ROW stalls: r2's DDL updates no row, and the only UPDATE before the
    # kill is the backfill's. The WHEN looks at OLD.id alone, so it does not matter whether this
    # trigger runs before or after the dual-write one (which may change NEW, never OLD).
    db.execute(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_advisory_xact_lock({STALL_KEY}); RETURN NEW; END $$"
    )
    db.execute(
        f"CREATE TRIGGER stall BEFORE UPDATE ON customers FOR EACH ROW WHEN (OLD.id = {STALL_ROW}) "
        "EXECUTE FUNCTION stall()"
    )
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (STALL_KEY,))
        # The batch's lock_timeout (2 s) may end a wait and retry the batch; the kill comes on a wait.
        proc = _start(project, database_url, store, "upgrade")

        def stalled() -> int | None:
            row = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'dbrollback %%' AND wait_event_type = 'Lock' "
                "AND wait_event = 'advisory' AND pid <> %s",
                (holder.info.backend_pid,),
            ).fetchone()
            return row[0] if row else None

        try:
            pid = _wait(stalled, proc, "the backfill stalling at its row")
        finally:
            _kill(proc)
        holder.execute("SELECT pg_advisory_unlock(%s)", (STALL_KEY,))  # the orphaned batch ends, rolled back
        _wait(lambda: _gone(db, pid), None, "the killed upgrade's session ending")
    assert proc.returncode == -signal.SIGKILL

    assert _version(db) == ["r2"]  # the revision committed before the backfill started
    assert [e[1:] for e in _expansions(db)] == [("r2", "rename_column", "open")]
    status, last_key, rows_updated, batches = _backfill(db)
    assert status == "pending" and batches >= 1
    assert last_key is not None
    last = int(last_key[0])
    assert 1000 <= last < STALL_ROW
    assert rows_updated == last
    # the committed batches are kept, the stalled one rolled back
    pairs = _pairs(db)
    assert all(full == (name if i <= last else None) for i, (name, full) in pairs.items())
    shown = _run(cli, "status", "--json", *_args(database_url, store)).json
    assert shown["lock_holder"] is None and shown["up_to_date"] is True
    (expansion,) = shown["open_expansions"]
    assert expansion["backfill"]["status"] == "pending"
    assert expansion["backfill"]["rows_updated"] == last
    assert _run(cli, "contract", "--yes", *_args(database_url, store), code=3)
    committed = _xmins(db)

    _run(cli, *finisher.split(), *_args(database_url, store))
    assert _backfill(db)[0::2] == ("done", ROWS)
    pairs = _pairs(db)
    assert len(pairs) == ROWS
    assert all(name == full == f"c{i}" for i, (name, full) in pairs.items())
    after = _xmins(db)
    assert all(after[i] == committed[i] for i in committed if i <= last)  # not redone
    assert all(after[i] != committed[i] for i in committed if i > last)
    assert _version(db) == ["r2"]

    db.execute("DROP TRIGGER stall ON customers")
    expected = {i: f"c{i}" for i in range(1, ROWS + 1)} | _write_both_ways(database_url)
    _run(cli, "contract", "--yes", *_args(database_url, store))
    _assert_contracted(db, expected)


# -- 2. contract killed while waiting for a lock -------------------------------------------------


@contextmanager
def _session(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url) as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def _kill_contract_at(
    stage: str, project: Project, db: psycopg.Connection, database_url: str, store: Path
) -> None:
    """Start `contract`, kill it while it waits at ``stage``, release the locks, wait for its session
    to end.

    A reader's open transaction (ACCESS SHARE) makes the first step (ADD ... NOT VALID, ACCESS
    EXCLUSIVE) wait. For the later steps a second session queues its LOCK TABLE behind that waiting
    request; when the reader ends, contract gets its lock, commits, and the queued session is
    granted its lock at that commit, before contract asks for the next one: SHARE UPDATE EXCLUSIVE
    blocks VALIDATE (which ACCESS SHARE would not), ACCESS SHARE blocks the final step."""
    with _session(database_url) as reader, _session(database_url) as queued:
        reader.execute("SELECT count(*) FROM customers")
        proc = _start(project, database_url, store, "contract", "--yes", "--lock-timeout", "60s")
        try:
            pid = _wait(
                lambda: _waiting_for_table(db, "contract", "AccessExclusiveLock"), proc, "the NOT VALID step"
            )
            if stage != "not valid":
                mode = "SHARE UPDATE EXCLUSIVE" if stage == "validate" else "ACCESS SHARE"
                locker = threading.Thread(
                    target=queued.execute, args=(f"LOCK TABLE customers IN {mode} MODE",)
                )
                locker.start()
                queued_pid = queued.info.backend_pid
                _wait(
                    lambda: (
                        db.execute(
                            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (queued_pid,)
                        ).fetchone()
                        == (1,)
                    ),
                    proc,
                    "the second session queued behind contract",
                )
                reader.rollback()
                locker.join()
                if stage == "validate":
                    _wait(
                        lambda: _waiting_for_table(db, "contract", "ShareUpdateExclusiveLock") == pid,
                        proc,
                        "the VALIDATE step",
                    )
                    assert [c[1] for c in _nn_checks(db)] == [False]
                else:
                    _wait(lambda: _nn_checks(db) and _nn_checks(db)[0][1], proc, "the check validated")
                    _wait(
                        lambda: _waiting_for_table(db, "contract", "AccessExclusiveLock") == pid,
                        proc,
                        "the final step",
                    )
        finally:
            _kill(proc)
    # The orphaned session gets its lock once both sessions ended, then finds its client gone and
    # rolls back.
    _wait(lambda: _gone(db, pid), None, "the killed contract's session ending")
    assert proc.returncode == -signal.SIGKILL


STAGES = ["not valid", "validate", "final"]


@pytest.mark.parametrize("then", ["contract", "abort"])
@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_of_contract_waiting_for_a_lock_then_contract_or_abort_finishes(
    project, cli, db, database_url, tmp_path, stage, then
):
    store = tmp_path / "store"
    before_expansion = _open_expansion(project, cli, db, store, database_url)
    before = _describe(db, "customers")
    values = {i: f"c{i}" for i in range(1, ROWS + 1)}

    _kill_contract_at(stage, project, db, database_url, store)

    # everything but the temporary check is as before: old column, trigger, expansion open
    after = _describe(db, "customers")
    assert after["columns"] == before["columns"]
    assert after["indexes"] == before["indexes"]
    assert after["triggers"] == before["triggers"]
    added = [c for c in after["constraints"] if c not in before["constraints"]]
    checks = _nn_checks(db)
    if stage == "not valid":
        assert added == [] and checks == []
    else:
        (name, validated) = checks[0]
        assert validated is (stage == "final")
        assert added == [
            (name, "c", "CHECK ((full_name IS NOT NULL))" + ("" if validated else " NOT VALID"), validated)
        ]
    assert [c for c in before["constraints"] if c not in after["constraints"]] == []
    assert [e[1:] for e in _expansions(db)] == [("r2", "rename_column", "open")]
    assert _version(db) == ["r2"]
    assert len([x for x in _leftovers(db) if not x.startswith("constraint ")]) == 2
    shown = _run(cli, "status", "--json", *_args(database_url, store)).json
    assert [e["change"] for e in shown["open_expansions"]] == ["name -> full_name"]
    # old and new code still write, both columns kept in step
    values |= _write_both_ways(database_url)
    assert _pairs(db) == {i: (v, v) for i, v in values.items()}

    if then == "contract":
        done = _run(cli, "contract", "--yes", "--json", *_args(database_url, store)).json
        assert [e["action"] for e in done["expansions"]] == ["contracted"]
        _assert_contracted(db, values)
        assert _nn_checks(db) == []
    else:
        _run(cli, "abort", "--yes", *_args(database_url, store))
        assert _describe(db, "customers") == before_expansion  # the check went with the new column
        assert _leftovers(db) == []
        assert [e[3] for e in _expansions(db)] == ["aborted"]
        assert dict(db.execute("SELECT id, name FROM customers").fetchall()) == values


# -- 3. abort killed while waiting for its lock --------------------------------------------------


def test_kill_9_of_abort_waiting_for_its_lock_changes_nothing_and_abort_again_works(
    project, cli, db, database_url, tmp_path
):
    store = tmp_path / "store"
    before_expansion = _open_expansion(project, cli, db, store, database_url)
    before = _describe(db, "customers")
    catalog = db.execute("SELECT id, status, closed_at FROM dbrollback.expansions").fetchall()
    backfills = db.execute("SELECT id, status FROM dbrollback.backfills").fetchall()

    with _session(database_url) as reader:
        reader.execute("SELECT count(*) FROM customers")
        proc = _start(project, database_url, store, "abort", "--yes", "--lock-timeout", "60s")
        try:
            pid = _wait(
                lambda: _waiting_for_table(db, "abort", "AccessExclusiveLock"), proc, "abort's lock wait"
            )
        finally:
            _kill(proc)
    _wait(lambda: _gone(db, pid), None, "the killed abort's session ending")
    assert proc.returncode == -signal.SIGKILL

    assert _describe(db, "customers") == before
    assert db.execute("SELECT id, status, closed_at FROM dbrollback.expansions").fetchall() == catalog
    assert db.execute("SELECT id, status FROM dbrollback.backfills").fetchall() == backfills
    assert len(_leftovers(db)) == 2  # the trigger and its function
    assert _columns(db, "customers") == ["id", "name", "note", "created", "full_name"]
    values = {i: f"c{i}" for i in range(1, ROWS + 1)} | _write_both_ways(database_url)
    assert _pairs(db) == {i: (v, v) for i, v in values.items()}

    _run(cli, "abort", "--yes", *_args(database_url, store))
    assert _describe(db, "customers") == before_expansion
    assert _leftovers(db) == []
    assert [e[3] for e in _expansions(db)] == ["aborted"]
    assert dict(db.execute("SELECT id, name FROM customers").fetchall()) == values
