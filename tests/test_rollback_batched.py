"""`dbrollback rollback --batched`: the downgrades commit first, then values go back in batches of
their own, verified per batch and resumable after kill -9 (issue #5, item 3). The dropped-column
scenario of test_rollback runs in both modes too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from .conftest import Project
from .test_rollback import (
    DROP_LEGACY,
    _accounts,
    _args,
    _fill,
    _rollback,
    _rows,
    _table,
    _upgrade,
    _version,
    doc_run_id,
)
from .test_rollback_kill import _wait_for_its_backends_to_end, _wait_until


def _fills(db: psycopg.Connection) -> list[tuple]:
    return _rows(
        db,
        "SELECT table_schema || '.' || table_name, total_rows, done_n, batches, finished_at IS NOT NULL, "
        "to_regclass('dbrollback.' || quote_ident(work_table)) IS NOT NULL FROM dbrollback.rollback_fills "
        "ORDER BY rollback_run_id, position",
    )


def _stalling_trigger(db: psycopg.Connection, row_id: int) -> None:
    """Made before the upgrade (so the schema compared after the rollback has it too): an UPDATE of
    accounts(id = row_id) waits for advisory lock 4242, a lock wait that lock_timeout applies to,
    while a session holds it (see _stall); the downgrade's DDL is not held up."""
    db.execute(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$"
    )
    db.execute(
        f"CREATE TRIGGER stall BEFORE UPDATE ON accounts FOR EACH ROW WHEN (OLD.id = {int(row_id)}) "
        "EXECUTE FUNCTION stall()"
    )


def _stall(database_url: str) -> psycopg.Connection:
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(4242)")
    return holder


def _stopped_at_row_45(cli, db, database_url: str, store: Path):
    """A --batched rollback of the 60 accounts (already filled) whose third batch (ids 41-60) times
    out on row 45."""
    _stalling_trigger(db, 45)
    _upgrade(cli, database_url, store)
    holder = _stall(database_url)
    try:
        stopped = cli(
            "rollback", "--json", "--yes", "--batched", "--batch-rows", "20", "--lock-timeout", "200ms",
            "--lock-retries", "0", *_args(database_url, store),
        )  # fmt: skip
    finally:
        holder.close()
    assert stopped.code == 4, stopped.err
    return stopped


def test_a_batch_that_times_out_stops_resumably_and_resume_finishes(project, cli, db, database_url, tmp_path):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 60)
    stopped = _stopped_at_row_45(cli, db, database_url, store)
    assert stopped.json["error"] == "migration_failed" and stopped.json["resumable"] is True
    assert "dbrollback rollback --resume" in stopped.json["message"]
    assert "lock" in stopped.json["message"] and "Traceback" not in stopped.err
    # the downgrade and the batches of ids 1-20 and 21-40 committed; the one with id 45 did not
    assert _version(db) == [("r1",)]
    assert _rows(db, "SELECT count(legacy), min(id) FILTER (WHERE legacy IS NULL) FROM accounts") == [
        (40, 41)
    ]
    rollback_id = doc_run_id(db)
    assert _rows(db, "SELECT status FROM dbrollback.runs WHERE id = %s", (rollback_id,)) == [("failed",)]
    status = cli("status", "--json", *_args(database_url, store))
    assert status.json["unfinished_batched_rollback"] == {
        "rollback_run_id": rollback_id,
        "rows_done": 40,
        "rows": 60,
    }
    assert "rollback --resume" in cli("status", *_args(database_url, store)).out
    # nothing else runs until it is finished: not another rollback, not an upgrade, not a restore
    (snapshot,) = [s["id"] for s in cli("snapshot", "list", "--json", *_args(database_url, store)).json]
    for command in (["rollback", "--yes"], ["upgrade"], ["restore", "--snapshot", snapshot, "--yes"]):
        refused = cli(*command, *_args(database_url, store))
        assert refused.code == 3 and "--resume" in refused.err, (command, refused.err)
    assert _version(db) == [("r1",)]

    resumed = _rollback(cli, database_url, store, "--resume")
    assert resumed["verified"] and _table(resumed, "public.accounts")["restored_rows"] == 60
    assert _rows(db, "SELECT count(*) FROM accounts WHERE legacy IS DISTINCT FROM 'L' || id") == [(0,)]
    assert _rows(db, "SELECT status FROM dbrollback.runs WHERE id = %s", (rollback_id,)) == [("succeeded",)]
    assert _fills(db) == [("public.accounts", 60, 60, 3, True, False)]
    assert cli("status", "--json", *_args(database_url, store)).json["unfinished_batched_rollback"] is None
    again = cli("rollback", "--resume", *_args(database_url, store))
    assert again.code == 3 and "No batched rollback is waiting" in again.err


def test_kill_9_between_batches_resumes_without_redoing_committed_batches(
    project: Project, cli, db, database_url, tmp_path
):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 3000)
    _stalling_trigger(db, 2000)  # the process is killed while its batch waits on this row
    _upgrade(cli, database_url, store)
    holder = _stall(database_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbrollback", "rollback", "--yes", "--batched", "--batch-rows", "250",
         "--lock-timeout", "10min", *_args(database_url, store)],
        cwd=project.root, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'advisory' AND query LIKE 'UPDATE %%'"
                ).fetchone()
                == (1,)
            ),
            proc,
            "the batch waiting for the locked row",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.close()
    _wait_for_its_backends_to_end(db)

    # committed: the downgrade and the batches before the locked row's; none of the batch it died in
    assert _version(db) == [("r1",)]
    ((done,),) = _rows(db, "SELECT done_n FROM dbrollback.rollback_fills")
    assert 0 < done < 2000 and done % 250 == 0
    assert _rows(db, "SELECT count(legacy) FROM accounts") == [(done,)]
    before = _rows(db, "SELECT id, xmin::text FROM accounts WHERE legacy IS NOT NULL ORDER BY id")
    # the app goes on between the kill and the resume: one row written in the re-added column (kept
    # and reported), another row's other column (its legacy value still comes back)
    db.execute("UPDATE accounts SET legacy = 'app wrote' WHERE id = 2999")
    db.execute("UPDATE accounts SET email = 'edited' WHERE id = 2998")

    doc = _rollback(cli, database_url, store, "--resume")
    table = _table(doc, "public.accounts")
    assert doc["verified"] and table["verified"]
    assert (table["restored_rows"], table["kept_rows"], table["conflicts"]) == (2999, 1, 1)
    assert table["conflict_examples"] == [
        {"key": {"id": 2999}, "column": "legacy", "current": "app wrote", "preimage": "L2999"}
    ]
    assert _rows(db, "SELECT legacy, email FROM accounts WHERE id IN (2998, 2999) ORDER BY id") == [
        ("L2998", "edited"),
        ("app wrote", "User2999@X.org"),
    ]
    assert _rows(
        db, "SELECT count(*) FROM accounts WHERE id < 2999 AND legacy IS DISTINCT FROM 'L' || id"
    ) == [(0,)]
    # the batches committed before the kill were not applied again: same row versions
    ids = [r[0] for r in before]
    assert _rows(db, "SELECT id, xmin::text FROM accounts WHERE id = ANY(%s) ORDER BY id", (ids,)) == before
    assert _fills(db) == [("public.accounts", 3000, 3000, 12, True, False)]
    assert _rows(db, "SELECT status FROM dbrollback.runs WHERE id = %s", (doc_run_id(db),)) == [
        ("succeeded",)
    ]


def test_batched_usage_errors_and_dry_run(project, cli, db, database_url, tmp_path):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 20)
    _stalling_trigger(db, 5)
    _upgrade(cli, database_url, store)
    wrong = [
        ["--batched", "--strategy", "restore"],
        ["--batch-rows", "0"],
        ["--resume", "--dry-run"],
        ["--resume", "--steps", "1"],
        ["--batch-rows", "10"],
        ["--abandon"],
    ]
    for extra in wrong:
        result = cli("rollback", "--yes", *extra, *_args(database_url, store))
        assert result.code == 2 and "Traceback" not in result.err, (extra, result.err)
    nothing = cli("rollback", "--resume", *_args(database_url, store))
    assert nothing.code == 3 and "No batched rollback is waiting" in nothing.err
    # the preview of a batched rollback is its first transaction only: it updates no row (an UPDATE
    # of row 5 would wait for the held lock), so it does not hold the table for the whole merge
    holder = _stall(database_url)
    try:
        quick = ("--lock-timeout", "200ms", "--lock-retries", "0")
        dry = _rollback(cli, database_url, store, "--batched", "--dry-run", *quick)
        whole = cli("rollback", "--yes", "--json", "--dry-run", *quick, *_args(database_url, store))
    finally:
        holder.close()
    assert dry["dry_run"] and _table(dry, "public.accounts")["restored_rows"] == 20 and dry["verified"]
    assert whole.code == 4 and "lock" in whole.json["message"]
    assert _version(db) == [("r2",)] and _fills(db) == []


def test_a_value_a_later_write_makes_break_a_constraint_is_kept_as_a_conflict(
    project, cli, db, database_url, tmp_path
):
    _accounts(
        project,
        DROP_LEGACY[0],
        'op.add_column("accounts", sa.Column("legacy", sa.Text))\n'
        'op.execute("ALTER TABLE accounts ADD CONSTRAINT accounts_legacy_key UNIQUE (legacy) '
        'DEFERRABLE INITIALLY DEFERRED")',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    # deferred: checked at COMMIT unless the batch asks for it per statement
    db.execute(
        "ALTER TABLE accounts ADD CONSTRAINT accounts_legacy_key UNIQUE (legacy) DEFERRABLE INITIALLY DEFERRED"
    )
    _fill(db, 60)
    _stopped_at_row_45(cli, db, database_url, store)
    # between the batches the application (its previous version again) takes row 50's old value
    db.execute("INSERT INTO accounts (id, email, legacy) VALUES (1000, 'app', 'L50')")

    doc = _rollback(cli, database_url, store, "--resume")
    table = _table(doc, "public.accounts")
    assert doc["verified"] and table["verified"]
    assert (table["restored_rows"], table["kept_rows"], table["conflicts"]) == (59, 1, 1)
    (example,) = table["conflict_examples"]
    assert example["key"] == {"id": 50} and example["column"] == "legacy"
    assert example["current"].startswith("not put back: duplicate key value")
    assert _rows(db, "SELECT id, legacy FROM accounts WHERE id IN (49, 50, 51, 1000) ORDER BY id") == [
        (49, "L49"),
        (50, None),
        (51, "L51"),
        (1000, "L50"),
    ]


def test_resume_refuses_another_schema_and_abandon_gives_the_rest_up(
    project, cli, db, database_url, tmp_path
):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 60)
    _stopped_at_row_45(cli, db, database_url, store)
    rollback_id = doc_run_id(db)
    # someone moved the version behind dbrollback's back: the batches were made for r1's schema
    db.execute("UPDATE alembic_version SET version_num = 'r2'")
    moved = cli("rollback", "--resume", "--json", *_args(database_url, store))
    assert moved.code == 3 and "--abandon" in moved.json["message"]
    assert _rows(db, "SELECT count(legacy) FROM accounts") == [(40,)]
    db.execute("UPDATE alembic_version SET version_num = 'r1'")
    assert cli("rollback", "--resume", "--abandon", *_args(database_url, store)).code == 3  # no --yes

    doc = _rollback(cli, database_url, store, "--resume", "--abandon", code=1)
    table = _table(doc, "public.accounts")
    assert not doc["verified"] and not table["verified"] and table["restored_rows"] == 40
    assert _rows(db, "SELECT count(legacy) FROM accounts") == [(40,)]  # nothing more was written
    assert _fills(db) == [("public.accounts", 60, 40, 2, True, False)]
    assert _rows(db, "SELECT status FROM dbrollback.runs WHERE id = %s", (rollback_id,)) == [("failed",)]
    # given up, so nothing is held any more: the next upgrade runs
    assert cli("status", "--json", *_args(database_url, store)).json["unfinished_batched_rollback"] is None
    _upgrade(cli, database_url, store)
    assert _version(db) == [("r2",)]


def test_a_later_downgrade_changing_a_deferred_table_rolls_everything_back(
    project, cli, db, database_url, tmp_path
):
    # run 1 creates the table (its downgrade drops it), run 2 drops a column: rolled back together,
    # the batches of run 2's table would have no table to write to
    project.add_revision(
        "r1",
        None,
        'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("legacy", sa.Text))',
        'op.drop_table("accounts")',
    )
    project.add_revision("r2", "r1", *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts SELECT g, 'L' || g FROM generate_series(1, 20) g")
    _upgrade(cli, database_url, store)
    failed = cli("rollback", "--yes", "--json", "--batched", "--steps", "2", *_args(database_url, store))
    assert failed.code == 4 and "--batched" in failed.json["message"], failed.out
    assert failed.json.get("resumable") is None
    assert _version(db) == [("r2",)] and _fills(db) == []
    assert _rows(db, "SELECT count(*) FROM accounts") == [(20,)]


def test_on_a_terminal_a_batched_rollback_previews_its_first_transaction_only(
    project, cli, db, database_url, tmp_path, monkeypatch
):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 20)
    _upgrade(cli, database_url, store)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    monkeypatch.setattr("click.confirm", lambda *a, **k: True)
    done = cli("rollback", "--batched", "--batch-rows", "8", *_args(database_url, store))
    assert done.code == 0, done.err
    assert "Would roll back (dry run, nothing changed)" in done.out and "first transaction only" in done.out
    assert "Rolled back: run" in done.out
    assert _fills(db) == [("public.accounts", 20, 20, 3, True, False)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE legacy IS DISTINCT FROM 'L' || id") == [(0,)]


def test_resume_of_a_run_that_merged_two_heads(project, cli, db, database_url, tmp_path):
    """The rollback leaves the database at both heads the run started from: --resume goes on there."""
    project.add_revision(
        "base1",
        None,
        'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("legacy", sa.Text))',
    )
    for name in ("left", "right"):
        project.add_revision(name, "base1", "pass", "pass", branch_labels=(f"{name}_branch",))
    project.add_revision("merged", ("left", "right"), *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "left", *_args(database_url, store)).code == 0
    assert cli("upgrade", "right", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts SELECT g, 'L' || g FROM generate_series(1, 60) g")
    stopped = _stopped_at_row_45(cli, db, database_url, store)
    assert stopped.json["resumable"], stopped.out
    assert sorted(_version(db)) == [("left",), ("right",)]
    doc = _rollback(cli, database_url, store, "--resume")
    assert doc["verified"] and _table(doc, "public.accounts")["restored_rows"] == 60
    assert _rows(db, "SELECT count(*) FROM accounts WHERE legacy IS DISTINCT FROM 'L' || id") == [(0,)]
