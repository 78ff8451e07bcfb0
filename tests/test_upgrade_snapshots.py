"""upgrade takes snapshots before lossy revisions, journals restore points, and refuses without a store."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.local import LocalStore

from .conftest import Project

ODD = 'Ödd "tab"; le'


def _lossy_project(project: Project) -> None:
    project.add_revision("r1", None, f"""
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("email", sa.Text), sa.Column("legacy", sa.Text))
        op.create_table({ODD!r}, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text))
        op.create_table("untouched", sa.Column("id", sa.Integer, primary_key=True))
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.add_column("accounts", sa.Column("note", sa.Text))')
    project.add_revision("r3", "r2", 'op.drop_column("accounts", "legacy")')
    project.add_revision("r4", "r3", f"""
        table = {ODD!r}
        op.execute(sa.text('UPDATE "' + table.replace('"', '""') + '" SET v = upper(v)'))
    """)  # fmt: skip


def _fill(db: psycopg.Connection) -> None:
    db.execute("INSERT INTO accounts SELECT g, 'U' || g || '@x', 'L' || g FROM generate_series(1, 300) g")
    db.execute('INSERT INTO "Ödd ""tab""; le" SELECT g, \'v\' || g FROM generate_series(1, 40) g')
    db.execute("INSERT INTO untouched SELECT generate_series(1, 10)")


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def test_upgrade_snapshots_each_lossy_revision_before_it_runs(project, cli, db, database_url, tmp_path):
    _lossy_project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    before_accounts = table_checksum(db, "public", "accounts")
    before_odd = table_checksum(db, "public", ODD)

    result = cli("upgrade", "--json", *_args(database_url, store))
    assert result.code == 0, result.err
    doc = result.json
    assert doc["snapshot_policy"] == "lossy"
    assert [(s["revision"], s["tables"]) for s in doc["snapshots"]] == [
        ("r3", ["public.accounts"]),
        ("r4", [f"public.{ODD}"]),
    ]
    run_id = doc["run_id"]
    snaps = {m.revision: m for m in LocalStore(store).list()}
    assert set(snaps) == {"r3", "r4"} and all(m.run_id == run_id for m in snaps.values())
    # The r3 snapshot holds accounts as it was before the column was dropped (r2 added `note`).
    (accounts,) = snaps["r3"].tables
    assert [c.name for c in accounts.columns] == ["id", "email", "legacy", "note"]
    assert accounts.row_count == 300
    (odd,) = snaps["r4"].tables
    assert (odd.row_count, odd.checksum) == before_odd  # taken just before the UPDATE
    assert accounts.checksum != before_accounts[1]  # r2 changed the shape first: a fresh capture
    assert db.execute(
        "SELECT count(*) FROM dbrollback.snapshots WHERE run_id = %s", (run_id,)
    ).fetchone() == (2,)

    # a restore point (or at least the WAL position) before every revision of the run
    points = db.execute(
        "SELECT revision, wal_lsn IS NOT NULL, created FROM dbrollback.restore_points WHERE run_id = %s ORDER BY at",
        (run_id,),
    ).fetchall()
    assert [(r, has_lsn) for r, has_lsn, _ in points] == [("r2", True), ("r3", True), ("r4", True)]
    assert all(created for _, _, created in points)  # superuser on the test server
    assert [r[0] for r in db.execute("SELECT name FROM dbrollback.restore_points WHERE run_id = %s ORDER BY at",
                                     (run_id,))] == [f"dbrollback_run{run_id}_before_r{i}" for i in (2, 3, 4)]  # fmt: skip


def test_policy_touched_and_no_snapshot_flag(project, cli, db, database_url, tmp_path):
    _lossy_project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    touched = cli("upgrade", "r2", "--snapshot", "touched", "--json", *_args(database_url, store))
    assert touched.code == 0, touched.err
    assert [(s["revision"], s["tables"]) for s in touched.json["snapshots"]] == [("r2", ["public.accounts"])]

    skipped = cli("upgrade", "--no-snapshot", "--json", *_args(database_url, store))
    assert skipped.code == 0 and skipped.json["snapshots"] == []
    run_id = skipped.json["run_id"]
    assert db.execute("SELECT snapshot_skipped FROM dbrollback.runs WHERE id = %s", (run_id,)).fetchone() == (
        True,
    )
    details = db.execute(
        "SELECT details->>'snapshot' FROM dbrollback.audit WHERE run_id = %s AND details->>'status' = 'started'",
        (run_id,),
    ).fetchone()
    assert details == ("skipped by --no-snapshot",)
    assert len(LocalStore(store).list()) == 1  # only the `touched` one


def test_unwritable_store_refuses_before_anything_changes(project, cli, db, database_url, tmp_path):
    _lossy_project(project)
    assert cli("upgrade", "r2", *_args(database_url, tmp_path / "store")).code == 0
    _fill(db)
    before = table_checksum(db, "public", "accounts")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("upgrade", *_args(database_url, blocker / "store"))
    assert result.code == 3 and "not writable" in result.err
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r2",)]
    assert table_checksum(db, "public", "accounts") == before


def test_store_running_out_of_space_mid_snapshot_refuses_exit_3(project, cli, db, database_url, tmp_path):
    """A file-size limit makes the snapshot's write fail like a full disk; the revision is not applied."""
    _lossy_project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r2", *_args(database_url, store)).code == 0
    db.execute(
        "INSERT INTO accounts SELECT g, md5(g::text), md5((g * 7)::text) FROM generate_series(1, 50000) g"
    )
    before = table_checksum(db, "public", "accounts")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "dbrollback", "upgrade", *_args(database_url, store)],
        cwd=project.root, capture_output=True, text=True, preexec_fn=limit, timeout=120,
        env={**os.environ, "DBROLLBACK_SNAPSHOT": "lossy"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Cannot write snapshot" in proc.stderr and "Traceback" not in proc.stderr
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r2",)]
    assert table_checksum(db, "public", "accounts") == before
    assert LocalStore(store).list() == []
    status = db.execute(
        "SELECT status, failed_revision FROM dbrollback.runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert status == ("failed", "r3")


@pytest.mark.timeout(180)
def test_kill_9_during_snapshot_create_lists_nothing(db, database_url, tmp_path):
    db.execute("CREATE TABLE big (id bigint PRIMARY KEY, payload text)")
    db.execute("INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g")
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbrollback", "snapshot", "create", "--jobs", "1", *_args(database_url, store)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 120
        while not any(store.glob("*/.partial/*.tmp")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the snapshot never started writing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert LocalStore(store).list() == []
    assert not list(store.glob("*/manifest.json"))
    assert db.execute("SELECT count(*) FROM big").fetchone() == (400000,)


def test_writes_during_the_snapshot_are_captured_not_lost(project, cli, db, database_url, tmp_path):
    """A writer keeps updating the column a revision drops. Every write that committed must be in
    the snapshot: writers wait from the snapshot until the revision commits."""
    import threading

    project.add_revision("r1", None, """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("legacy", sa.Text))
    """)  # fmt: skip
    # The pause between the snapshot and the DROP is where an unprotected write would be lost.
    project.add_revision(
        "r2", "r1", 'op.execute("SELECT pg_sleep(0.8)")\nop.drop_column("accounts", "legacy")'
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts VALUES (1, '0')")
    committed: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            value = 0
            while not stop.is_set():
                value += 1
                try:
                    conn.execute("UPDATE accounts SET legacy = %s WHERE id = 1", (str(value),))
                except psycopg.errors.UndefinedColumn:
                    return  # the revision committed: the column is gone
                committed.append(value)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = cli("upgrade", "--json", *_args(database_url, store))
    finally:
        stop.set()
        thread.join(30)
    assert result.code == 0, result.err
    (snap,) = result.json["snapshots"]
    manifest = LocalStore(store).load(snap["id"])
    db.execute("CREATE TABLE captured (id int, legacy text)")
    from dbrollback.snapshot.load import load_table_copy

    load_table_copy(db, LocalStore(store), manifest.id, manifest.tables[0], "public", "captured")
    assert committed, "the writer never got a write in"
    assert db.execute("SELECT legacy FROM captured WHERE id = 1").fetchone() == (str(committed[-1]),)


def test_sql_of_unknown_effect_refuses_unless_all_or_no_snapshot(project, cli, db, database_url, tmp_path):
    project.add_revision("r1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    project.add_revision("r2", "r1", """
        op.execute("DO $$ BEGIN EXECUTE 'DELETE FROM ' || quote_ident('t'); END $$")
    """)  # fmt: skip
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO t SELECT generate_series(1, 5)")

    refused = cli("upgrade", "--json", *_args(database_url, store))
    assert refused.code == 3
    assert refused.json["error"] == "refused" and refused.json["uncovered"][0]["revision"] == "r2"
    assert "--snapshot all" in refused.json["message"]
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]
    assert db.execute("SELECT count(*) FROM t").fetchone() == (5,)

    everything = cli("upgrade", "--snapshot", "all", "--json", *_args(database_url, store))
    assert everything.code == 0, everything.err
    (snap,) = everything.json["snapshots"]
    assert snap["revision"] == "r2" and snap["tables"] == ["public.t"]
    assert any("cannot be known" in w for w in everything.json["warnings"])
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_too_little_space_for_the_planned_snapshots_refuses_up_front(project, cli, db, database_url, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Snapshots before a later revision would otherwise fail after earlier revisions committed."""
    _lossy_project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    monkeypatch.setattr(LocalStore, "free_bytes", lambda self: 1000)  # a nearly full disk
    result = cli("upgrade", *_args(database_url, store))
    assert result.code == 3 and "1,000 bytes free" in result.err
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]
    assert LocalStore(store).list() == []


def test_without_a_safe_pg_dump_the_analysis_renders_offline(project, cli, db, database_url, tmp_path,
                                                             monkeypatch):  # fmt: skip
    """A server that needs TLS cannot be copied with the wheel's pg_dump: the plan falls back to
    Alembic's offline rendering and still finds the lossy revision."""
    from dbrollback.snapshot import capture

    _lossy_project(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r2", *_args(database_url, store)).code == 0
    _fill(db)
    monkeypatch.setattr(capture, "psql_can_reach", lambda url: False)
    planned = cli("plan", "--json", *_args(database_url, store))
    assert planned.code == 0, planned.err
    methods = {r["revision"]: r["method"] for r in planned.json["revisions"]}
    assert methods == {"r3": "offline", "r4": "offline"}
    assert [s["revision"] for s in planned.json["snapshots"]] == ["r3", "r4"]
