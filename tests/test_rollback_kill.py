"""kill -9 of a real `dbrollback rollback` process in the middle of its transaction: the database is
exactly as before the rollback, `status` says so, and the next rollback succeeds and verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dbrollback.catalog.journal import rolled_back_runs
from dbrollback.snapshot.checksum import table_checksum

from .conftest import Project

# r2's downgrade runs after r3's downgrade and merge, inside the rollback's one transaction. When the
# test asks it to, it records what that transaction sees and then hangs until it is killed. Not in
# an offline (recording) context: only the real downgrade may stall.
STALLING_DOWNGRADE = """
import os, pathlib, time
marker = os.environ.get("DBRB_TEST_MARKER")
if marker and not op.get_context().as_sql:
    bind = op.get_bind()
    version = bind.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    amount = bind.exec_driver_sql("SELECT amount::text FROM accounts WHERE id = 3").scalar()
    pathlib.Path(marker).write_text(f"{version} {amount}")
    time.sleep(3600)
op.add_column("notes", sa.Column("legacy", sa.Text))
"""


def _project(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("amount", sa.Numeric(10, 2)), sa.Column("email", sa.Text))
        op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("legacy", sa.Text),
                        sa.Column("body", sa.Text))
        """,
    )
    project.add_revision("r2", "r1", 'op.drop_column("notes", "legacy")', STALLING_DOWNGRADE)
    project.add_revision(
        "r3",
        "r2",
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))',
    )


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _state(db: psycopg.Connection) -> tuple:
    """Everything a rollback could change: data and shape of both tables, the version, the marks."""
    return (
        table_checksum(db, "public", "accounts"),
        table_checksum(db, "public", "notes"),
        db.execute("SELECT version_num FROM alembic_version").fetchall(),
        db.execute(
            "SELECT attrelid::regclass::text, attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid IN ('accounts'::regclass, 'notes'::regclass) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY 1, attnum"
        ).fetchall(),
        rolled_back_runs(db),
    )


def _start_rollback(
    project: Project, database_url: str, store: Path, marker: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DBRB_TEST_MARKER": str(marker)}
    return subprocess.Popen(
        [sys.executable, "-m", "dbrollback", "rollback", "--yes", "--lock-timeout", "10min", *extra,
         *_args(database_url, store)],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_until(condition, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120  # a guard against hanging, not a performance limit
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"rollback exited before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"rollback never reached {what}"
        time.sleep(0.05)


def _wait_for_its_backends_to_end(db: psycopg.Connection) -> None:
    deadline = time.monotonic() + 120
    while db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchone() != (0,):
        assert time.monotonic() < deadline, "the killed rollback's sessions never ended"
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["in a downgrade", "waiting for a lock", "in a downgrade, batched"])
def test_kill_9_mid_rollback_changes_nothing_and_the_next_rollback_verifies(
    project, cli, db, database_url, tmp_path, where
):
    _project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts SELECT g, g + 0.25, 'a' || g FROM generate_series(1, 50) g")
    db.execute("INSERT INTO notes SELECT g, 'L' || g, 'b' || g FROM generate_series(1, 50) g")
    upgraded = cli("upgrade", "--json", *_args(database_url, store))
    assert upgraded.code == 0, upgraded.err
    run_id = upgraded.json["run_id"]
    # the app writes after the release
    db.execute("UPDATE accounts SET email = 'changed' WHERE id <= 5")
    db.execute("UPDATE notes SET body = 'edited' WHERE id <= 5")
    db.execute("INSERT INTO accounts VALUES (51, 7, 'new')")
    before = _state(db)

    marker = tmp_path / "marker"
    if where.startswith("in a downgrade"):
        batched = where.endswith("batched")
        proc = _start_rollback(project, database_url, store, marker, *(["--batched"] if batched else []))
        _wait_until(marker.exists, proc, "r2's downgrade")
        # r3 was downgraded and its column merged back, uncommitted, when the process died (with
        # --batched: its rows set aside for the batches, which run only after the commit)
        assert marker.read_text() == ("r2 3.00" if batched else "r2 3.25")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        # A writer holds a row lock on notes: the rollback, having downgraded and merged r3, waits for
        # its SHARE lock on notes (r2's table), and is killed there. Its server session keeps waiting
        # until the writer is done, then finds its client gone and rolls back.
        with psycopg.connect(database_url) as writer:
            writer.execute("UPDATE notes SET body = 'writer' WHERE id = 6")
            proc = _start_rollback(project, database_url, store, tmp_path / "unused")

            def waiting_for_notes() -> bool:
                row = db.execute(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'notes'::regclass AND NOT granted"
                ).fetchone()
                return row is not None and row[0] > 0

            _wait_until(waiting_for_notes, proc, "the lock on notes")
            # the same session already holds r3's table: it is past r3's downgrade and merge
            holding = db.execute(
                "SELECT count(*) FROM pg_locks a JOIN pg_locks n USING (pid) "
                "WHERE a.relation = 'accounts'::regclass AND a.mode = 'ShareLock' AND a.granted "
                "AND n.relation = 'notes'::regclass AND NOT n.granted"
            ).fetchone()
            assert holding == (1,)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            writer.rollback()
    assert proc.returncode == -signal.SIGKILL
    _wait_for_its_backends_to_end(db)

    assert _state(db) == before  # data, shape, alembic_version, no run marked reverted
    # nothing set aside for batches either: no fill recorded, no work table left
    assert db.execute("SELECT count(*) FROM dbrollback.rollback_fills").fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'dbrollback' AND c.relname LIKE '\\_dbrb\\_fill\\_%%'"
    ).fetchone() == (0,)
    assert db.execute("SELECT status FROM dbrollback.runs WHERE command = 'rollback'").fetchall() == [
        ("running",)
    ]
    status = cli("status", "--json", *_args(database_url, store))
    assert status.code == 0, status.err
    doc = status.json
    assert doc["lock_holder"] is None and doc["current_heads"] == ["r3"]
    (interrupted,) = doc["interrupted_runs"]
    assert interrupted["command"] == "rollback" and interrupted["status"] == "interrupted"
    (upgrade_run,) = [r for r in doc["runs"] if r["id"] == run_id]
    assert upgrade_run["rollback"] == {"possible": True, "reason": None}
    assert _state(db) == before

    again = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert again.code == 0, again.err
    assert again.json["run_id"] == run_id and again.json["verified"] is True
    assert again.json["reverted_revisions"] == ["r3", "r2"]
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]
    assert db.execute(
        "SELECT amount::text, email FROM accounts WHERE id IN (5, 7, 51) ORDER BY id"
    ).fetchall() == [
        ("5.25", "changed"),
        ("7.25", "a7"),
        ("7.00", "new"),
    ]
    assert db.execute("SELECT count(*) FROM notes WHERE legacy IS DISTINCT FROM 'L' || id").fetchone() == (0,)
    assert db.execute("SELECT body FROM notes WHERE id IN (5, 6) ORDER BY id").fetchall() == [
        ("edited",),
        ("b6",),
    ]
    statuses = db.execute(
        "SELECT status FROM dbrollback.runs WHERE command = 'rollback' ORDER BY id"
    ).fetchall()
    assert statuses == [("interrupted",), ("succeeded",)]
