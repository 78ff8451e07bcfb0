"""Real processes: a second upgrade waits then refuses; kill -9 leaves an exact journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from .conftest import Project

WAIT_IN_MIGRATION = """
import os, pathlib, time
if os.environ.get("DBRB_TEST_MARKER"):
    pathlib.Path(os.environ["DBRB_TEST_MARKER"]).write_text("inside r3")
    release = pathlib.Path(os.environ["DBRB_TEST_RELEASE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
op.execute("INSERT INTO items (id) VALUES (3)")
"""


def _project_with_blocking_r3(project: Project) -> None:
    project.add_revision(
        "r1", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))'
    )
    project.add_revision("r2", "r1", 'op.execute("INSERT INTO items (id) VALUES (2)")')
    project.add_revision("r3", "r2", WAIT_IN_MIGRATION)
    project.add_revision("r4", "r3", 'op.execute("INSERT INTO items (id) VALUES (4)")')


def _start_upgrade(
    project: Project, database_url: str, tmp_path: Path, *args: str
) -> subprocess.Popen[bytes]:
    # Snapshots off: the blocking revision must run once, in the real run, not also in the
    # analysis of a scratch copy (which runs migration code too).
    env = {**os.environ, "DBRB_TEST_MARKER": str(tmp_path / "marker"),
           "DBRB_TEST_RELEASE": str(tmp_path / "release"), "DBROLLBACK_ACTOR": "pipeline-7",
           "DBROLLBACK_SNAPSHOT": "never"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "dbrollback", "upgrade", "--database-url", database_url, *args],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"upgrade exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("migration never reached r3")
        time.sleep(0.05)


def test_second_upgrade_waits_then_exits_3_naming_the_holder(project, database_url, cli, tmp_path):
    _project_with_blocking_r3(project)
    first = _start_upgrade(project, database_url, tmp_path)
    try:
        _wait_for(tmp_path / "marker", first)
        started = time.monotonic()
        second = cli("upgrade", "--lock-wait", "1s", "--database-url", database_url)
        waited = time.monotonic() - started
        assert second.code == 3
        assert "pipeline-7" in second.err and f"pid {first.pid}" in second.err
        assert waited >= 1.0  # it waited for lock_wait before refusing
        as_json = cli("--json", "upgrade", "--lock-wait", "0.2s", "--database-url", database_url)
        assert as_json.code == 3
        holder = as_json.json["holder"]
        assert holder["actor"] == "pipeline-7" and holder["pid"] == first.pid
        assert isinstance(holder["run_id"], int)
    finally:
        (tmp_path / "release").write_text("go")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()


def test_waiting_upgrade_proceeds_when_lock_is_released(project, database_url, cli, tmp_path, db):
    _project_with_blocking_r3(project)
    first = _start_upgrade(project, database_url, tmp_path, "r3")
    _wait_for(tmp_path / "marker", first)
    threading.Timer(1.0, lambda: (tmp_path / "release").write_text("go")).start()
    second = cli("upgrade", "--lock-wait", "60s", "--database-url", database_url)
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.code == 0
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [(2,), (3,), (4,)]


def test_kill_9_during_upgrade_is_reported_interrupted_and_resumable(
    project, database_url, cli, tmp_path, db
):
    _project_with_blocking_r3(project)
    proc = _start_upgrade(project, database_url, tmp_path)
    _wait_for(tmp_path / "marker", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    # The server notices the dead client within moments; poll status, as a DBA would.
    deadline = time.monotonic() + 30
    while True:
        status = cli("status", "--json", "--database-url", database_url)
        assert status.code == 0, status.err
        doc = status.json
        if doc["interrupted_runs"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["current_heads"] == ["r2"]
    assert [p["revision"] for p in doc["pending"]] == ["r3", "r4"]
    (run,) = doc["interrupted_runs"]
    assert run["status"] == "interrupted"
    assert run["applied_revisions"] == ["r1", "r2"]
    assert run["not_applied_revisions"] == ["r3", "r4"]
    assert doc["runs"][0]["id"] == run["id"] and doc["runs"][0]["status"] == "interrupted"
    # r3's open transaction died with the process: its row is not there.
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [(2,)]
    human = cli("status", "--database-url", database_url)
    assert "INTERRUPTED" in human.out and "Not applied: r3, r4" in human.out

    resumed = cli("upgrade", "--database-url", database_url)
    assert resumed.code == 0, resumed.err
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [(2,), (3,), (4,)]
    runs = db.execute(
        "SELECT status, from_revisions, planned_revisions FROM dbrollback.runs ORDER BY id"
    ).fetchall()
    assert runs == [
        ("interrupted", [], ["r1", "r2", "r3", "r4"]),
        ("succeeded", ["r2"], ["r3", "r4"]),
    ]


def _hold_table_lock(database_url: str, table: str, seconds: float) -> threading.Thread:
    """Hold ACCESS EXCLUSIVE on ``table`` from another session for ``seconds``."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(30)
    return thread


def _lockable_project(project: Project) -> None:
    project.add_revision(
        "r1", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))'
    )
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))')


def test_lock_timeout_is_retried_with_backoff(project, database_url, cli, db):
    _lockable_project(project)
    assert cli("upgrade", "r1", "--database-url", database_url).code == 0
    _hold_table_lock(database_url, "items", 1.2)
    result = cli("upgrade", "--lock-timeout", "100ms", "--lock-retries", "6", "--database-url", database_url)
    assert result.code == 0, result.err
    assert "lock_timeout" in result.err  # it said it was retrying
    steps = db.execute(
        "SELECT revision, status, attempt FROM dbrollback.run_steps WHERE run_id = "
        "(SELECT max(id) FROM dbrollback.runs) ORDER BY seq"
    ).fetchall()
    assert steps[0][:2] == ("r2", "failed") and steps[-1][:2] == ("r2", "succeeded")
    assert steps[-1][2] == len(steps) >= 2
    assert db.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'note'"
    ).fetchone() == (1,)


def test_lock_timeout_gives_up_after_retries_exit_4(project, database_url, cli, db):
    _lockable_project(project)
    assert cli("upgrade", "r1", "--database-url", database_url).code == 0
    holder = _hold_table_lock(database_url, "items", 3)
    result = cli("upgrade", "--lock-timeout", "100ms", "--lock-retries", "1", "--database-url", database_url)
    holder.join()
    assert result.code == 4
    assert "lock timeout" in result.err.lower()
    attempts = db.execute(
        "SELECT attempt FROM dbrollback.run_steps WHERE status = 'failed' ORDER BY seq"
    ).fetchall()
    assert attempts == [(1,), (2,)]
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]


def test_one_running_run_is_a_database_invariant(project, database_url, cli, db):
    project.add_revision("r1", None, "pass")
    assert cli("upgrade", "--database-url", database_url).code == 0
    insert = ("INSERT INTO dbrollback.runs (command, status, actor, tool_version) "
              "VALUES ('upgrade', 'running', 'x', '0')")  # fmt: skip
    db.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(insert)


def test_sigterm_rolls_back_the_open_revision_and_journals_interrupted(project, database_url, tmp_path, db):
    _project_with_blocking_r3(project)
    proc = _start_upgrade(project, database_url, tmp_path)
    _wait_for(tmp_path / "marker", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    run = db.execute("SELECT status, to_revisions, finished_at IS NOT NULL FROM dbrollback.runs").fetchone()
    assert run == ("interrupted", ["r2"], True)
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [(2,)]
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r2",)]


def test_identifiers_with_quotes_spaces_semicolons_and_unicode(project, database_url, cli, db):
    name = 'we"ird; tä ble'
    project.add_revision("r1", None, f"""
        op.execute("CREATE SCHEMA " + '"Sch; é"')
        op.create_table({name!r}, sa.Column("Ünï code", sa.Text), schema="Sch; é")
    """)  # fmt: skip
    project.add_revision("r2", "r1", f"""
        op.add_column({name!r}, sa.Column("col'quote", sa.Integer), schema="Sch; é")
    """)  # fmt: skip
    result = cli("upgrade", "--database-url", database_url)
    assert result.code == 0, result.err
    cols = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'Sch; é' "
        "AND table_name = %s ORDER BY ordinal_position",
        (name,),
    ).fetchall()
    assert cols == [("Ünï code",), ("col'quote",)]
    assert cli("downgrade", "base", "--database-url", database_url).code == 0


def test_lock_retries_are_counted_per_revision(project, database_url, cli, db):
    project.add_revision(
        "r1", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))'
    )
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))')
    project.add_revision("r3", "r2", 'op.add_column("items", sa.Column("note2", sa.Text))')
    assert cli("upgrade", "r1", "--database-url", database_url).code == 0
    holder = _hold_table_lock(database_url, "items", 0.8)
    result = cli("upgrade", "--lock-timeout", "100ms", "--lock-retries", "5", "--database-url", database_url)
    holder.join()
    assert result.code == 0, result.err
    steps = db.execute(
        "SELECT revision, status, attempt FROM dbrollback.run_steps WHERE run_id = 2 ORDER BY seq"
    ).fetchall()
    assert [s for s in steps if s[0] == "r3"] == [("r3", "succeeded", 1)]  # r2's retries are r2's
    assert steps[-2][:2] == ("r2", "succeeded") and steps[-2][2] > 1
