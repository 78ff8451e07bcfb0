"""`status` and `history` say per run whether it can still be rolled back losslessly, or why not
(issue #5 item 7) — and every "not possible" is a rollback that really refuses (exit 3)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbrollback.catalog.journal import list_runs
from dbrollback.rollback.readiness import Readiness, rollback_readiness
from dbrollback.settings import load_settings
from dbrollback.snapshot.local import LocalStore

from .conftest import Project

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'Ödd "tab"; le'


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _accounts(project: Project, *, schema: str = "public", table: str = "accounts", key: bool = True) -> None:
    create = "" if schema == "public" else f"op.execute(sa.schema.CreateSchema({schema!r}))\n"
    id_column = 'sa.Column("id", sa.Integer, primary_key=True)' if key else 'sa.Column("id", sa.Integer)'
    project.add_revision(
        "r1", None,
        create + f'op.create_table({table!r}, {id_column}, sa.Column("legacy", sa.Text), schema={schema!r})',
    )  # fmt: skip
    project.add_revision(
        "r2", "r1",
        f'op.drop_column({table!r}, "legacy", schema={schema!r})',
        f'op.add_column({table!r}, sa.Column("legacy", sa.Text), schema={schema!r})',
    )  # fmt: skip


def _upgraded(project, cli, db, database_url, store, *extra: str, **accounts: object) -> dict:
    """r1, 20 rows, then r2 (drops a column: lossy) as its own run; returns r2's upgrade document."""
    _accounts(project, **accounts)  # type: ignore[arg-type]
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    schema, table = str(accounts.get("schema", "public")), str(accounts.get("table", "accounts"))
    db.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'L' || g FROM generate_series(1, 20) g").format(
            sql.Identifier(schema, table)
        )
    )
    result = cli("upgrade", "--json", *extra, *_args(database_url, store))
    assert result.code == 0, result.err
    return result.json


def _readiness(cli, database_url: str, store: Path, run_id: int) -> dict:
    """The run's `rollback` object, which status and history must agree on."""
    status = cli("status", "--json", *_args(database_url, store))
    history = cli("history", "--json", *_args(database_url, store))
    assert status.code == 0 and history.code == 0, status.err + history.err
    (in_status,) = [r for r in status.json["runs"] if r["id"] == run_id]
    (in_history,) = [r for r in history.json["runs"] if r["id"] == run_id]
    assert in_status["rollback"] == in_history["rollback"]
    if status.json["last_run"]["id"] == run_id:
        assert status.json["last_run"]["rollback"] == in_status["rollback"]
    return in_status["rollback"]


def _refused(cli, database_url: str, store: Path, run_id: int, db: psycopg.Connection) -> dict:
    """The rollback itself refuses (exit 3) and changes nothing."""
    before = db.execute("SELECT version_num FROM alembic_version").fetchall()
    refused = cli("rollback", "--dry-run", "--json", "--run", str(run_id), *_args(database_url, store))
    assert refused.code == 3, refused.out + refused.err
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == before
    return refused.json


def test_a_lossy_run_is_possible_until_it_is_rolled_back(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    run_id = doc["run_id"]
    assert _readiness(cli, database_url, store, run_id) == {"possible": True, "reason": None}
    assert _readiness(cli, database_url, store, run_id - 1) == {"possible": True, "reason": None}
    human = cli("history", *_args(database_url, store))
    assert human.code == 0 and "rollback" in human.out and "possible" in human.out

    rolled = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert rolled.code == 0 and rolled.json["verified"] is True, rolled.err
    runs = cli("history", "--json", *_args(database_url, store)).json["runs"]
    rollback_run = runs[0]
    assert rollback_run["command"] == "rollback"
    assert rollback_run["rollback"] == {"possible": False, "reason": "a rollback run, not an upgrade"}
    assert _readiness(cli, database_url, store, run_id) == {
        "possible": False,
        "reason": f"rolled back by run {rollback_run['id']}",
    }
    _refused(cli, database_url, store, run_id, db)
    human = cli("status", *_args(database_url, store))
    assert f"rolled back by run {rollback_run['id']}" in " ".join(human.out.split())


def test_no_snapshot_and_policy_never(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store, "--no-snapshot")
    assert _readiness(cli, database_url, store, doc["run_id"]) == {
        "possible": False,
        "reason": "applied with --no-snapshot: nothing was saved",
    }
    _refused(cli, database_url, store, doc["run_id"], db)
    # policy `never` saves nothing either; a rollback would only run the downgrade, losing the column
    assert cli("downgrade", "r1", *_args(database_url, store)).code == 0
    never = cli("upgrade", "--json", "--snapshot", "never", *_args(database_url, store))
    assert never.code == 0, never.err
    assert _readiness(cli, database_url, store, never.json["run_id"]) == {
        "possible": False,
        "reason": "applied with snapshot policy 'never': nothing was saved",
    }
    _refused(cli, database_url, store, never.json["run_id"], db)  # not a silent plain downgrade


def test_snapshot_pruned_missing_or_outside_the_window(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    run_id = doc["run_id"]
    (snapshot,) = doc["snapshots"]
    snapshot_id = snapshot["id"]

    moved = tmp_path / "moved"
    (store / snapshot_id).rename(moved)
    reason = _readiness(cli, database_url, store, run_id)["reason"]
    assert reason == f"snapshot {snapshot_id} missing from the store ({store})"
    assert snapshot_id in _refused(cli, database_url, store, run_id, db)["message"]
    moved.rename(store / snapshot_id)

    manifest_path = store / snapshot_id / "manifest.json"
    original = manifest_path.read_text()
    manifest = LocalStore(store).load(snapshot_id)
    taken = datetime.now(timezone.utc) - timedelta(days=8)  # the default window is 7 days
    manifest_path.write_text(manifest.model_copy(update={"created_at": taken}).model_dump_json())
    ended = (taken + timedelta(days=7)).strftime("%Y-%m-%d")
    assert _readiness(cli, database_url, store, run_id) == {
        "possible": False,
        "reason": f"outside the 7-day rollback window (ended {ended})",
    }
    assert "rollback window" in _refused(cli, database_url, store, run_id, db)["message"]
    manifest_path.write_text(original)
    assert _readiness(cli, database_url, store, run_id)["possible"] is True

    db.execute("UPDATE dbrollback.snapshots SET deleted_at = now() WHERE id = %s", (snapshot_id,))
    today = db.execute("SELECT to_char(now(), 'YYYY-MM-DD')").fetchone()[0]
    assert _readiness(cli, database_url, store, run_id) == {
        "possible": False,
        "reason": f"snapshot {snapshot_id} pruned on {today}",
    }
    assert "pruned" in _refused(cli, database_url, store, run_id, db)["message"]


def test_a_shorter_window_setting_is_used(project, cli, db, database_url, tmp_path, monkeypatch):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    monkeypatch.setenv("DBROLLBACK_ROLLBACK_WINDOW", "1ms")
    reason = _readiness(cli, database_url, store, doc["run_id"])["reason"]
    assert reason is not None and reason.startswith("outside the 1ms rollback window (ended ")
    _refused(cli, database_url, store, doc["run_id"], db)


def test_fingerprint_table_gone(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store, schema=ODD_SCHEMA, table=ODD_TABLE)
    (fp_table,) = db.execute("SELECT fp_table FROM dbrollback.fingerprints").fetchone()
    db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("dbrollback", fp_table)))
    assert _readiness(cli, database_url, store, doc["run_id"]) == {
        "possible": False,
        "reason": f"the post-image fingerprint of {ODD_SCHEMA}.{ODD_TABLE} is gone (pruned)",
    }
    _refused(cli, database_url, store, doc["run_id"], db)


def test_table_without_a_key(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store, schema=ODD_SCHEMA, table=ODD_TABLE, key=False)
    assert _readiness(cli, database_url, store, doc["run_id"]) == {
        "possible": False,
        "reason": f"no key on {ODD_SCHEMA}.{ODD_TABLE}: merge impossible, --strategy restore only",
    }
    assert "--strategy restore" in _refused(cli, database_url, store, doc["run_id"], db)["message"]


def test_failed_and_interrupted_runs(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _accounts(project)
    project.add_revision("r3", "r2", 'op.execute("SELECT 1/0")')
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    failed = cli("upgrade", "--json", *_args(database_url, store))
    assert failed.code == 4
    (run,) = [r for r in cli("history", "--json", *_args(database_url, store)).json["runs"] if r["id"] != 1]
    assert run["rollback"]["possible"] is False
    assert run["rollback"]["reason"].startswith("failed at r3: finish it with `dbrollback upgrade`")
    _refused(cli, database_url, store, run["id"], db)
    db.execute("UPDATE dbrollback.runs SET status = 'interrupted' WHERE id = %s", (run["id"],))
    assert _readiness(cli, database_url, store, run["id"])["reason"].startswith("interrupted at r3")
    _refused(cli, database_url, store, run["id"], db)


def test_a_run_that_applied_nothing(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    project.add_revision("r1", None, "pass")
    assert cli("upgrade", *_args(database_url, store)).code == 0
    assert cli("upgrade", *_args(database_url, store)).code == 0  # nothing pending: a run applying nothing
    runs = cli("history", "--json", *_args(database_url, store)).json["runs"]
    assert [r["rollback"] for r in runs] == [
        {"possible": False, "reason": "applied nothing"},
        {"possible": True, "reason": None},
    ]


@pytest.mark.parametrize("break_it", [False, True])
def test_library_call_agrees_with_the_rollback(project, cli, db, database_url, tmp_path, break_it):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    settings = load_settings(
        {"database_url": database_url, "store": str(store), "alembic_config": str(project.ini)}
    )
    if break_it:
        db.execute("UPDATE dbrollback.snapshots SET deleted_at = now()")
    (run,) = [r for r in list_runs(db, None) if r.id == doc["run_id"]]
    readiness = rollback_readiness(db, run, settings)
    assert isinstance(readiness, Readiness) and readiness.possible is not break_it
    dry = cli("rollback", "--dry-run", "--json", *_args(database_url, store))
    assert dry.code == (3 if break_it else 0), dry.err
