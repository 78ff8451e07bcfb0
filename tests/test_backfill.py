"""`dbrollback backfill` and dbrollback.backfill: keyset batches, each committed with its position, so
every row is updated exactly once across kill -9, Ctrl-C, failures and resumes (issue #6, item 3).
The replication-lag throttle against a real standby is in test_backfill_standby.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbrollback.backfill import BackfillOptions, create_backfill, get_backfill, run_backfill
from dbrollback.backfill.engine import LOCK_SPACE
from dbrollback.backfill.keyset import BatchStatements
from dbrollback.errors import ConfigError, LockHeld, MigrationFailed, RefusedForSafety

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'ta ble.";ü'


def _quoted(db: psycopg.Connection, *parts: str) -> str:
    return sql.Identifier(*parts).as_string(db)


def _numbers(db: psycopg.Connection, table: str = "t") -> None:
    """`table` (id, orig, n): ids 10, 20, ... 10000, n = orig = id * 3."""
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, orig int NOT NULL, n int NOT NULL)")
    db.execute(f"INSERT INTO {table} SELECT g * 10, g * 30, g * 30 FROM generate_series(1, 1000) g")


def _increments(db: psycopg.Connection, table: str = "t") -> dict[int, int]:
    """How often each row was updated by a backfill of ``n = n + 1``."""
    return dict(db.execute(f"SELECT id, n - orig FROM {table} ORDER BY id").fetchall())


def _args(database_url: str) -> list[str]:
    return ["--database-url", database_url]


def _fast(**overrides: object) -> BackfillOptions:
    """No throttles: tests that want one switch it on."""
    options = BackfillOptions(max_replication_lag_bytes=None, max_lock_waiters=None)
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


def _backfills(db: psycopg.Connection) -> list[tuple]:
    if db.execute("SELECT to_regclass('dbrollback.backfills')").fetchone() == (None,):
        return []
    return db.execute(
        "SELECT id, status, last_key, rows_updated, rows_scanned, batches FROM dbrollback.backfills ORDER BY id"
    ).fetchall()


# -- whole runs ---------------------------------------------------------------------------------


def test_composite_key_every_row_updated_exactly_once(cli, db, database_url):
    db.execute("CREATE TABLE t (a int NOT NULL, b text NOT NULL, orig int, n int, PRIMARY KEY (a, b))")
    db.execute("INSERT INTO t SELECT g % 7, 'k' || g, g, g FROM generate_series(1, 3000) g")
    result = cli("backfill", "t", "--set", "n = n + 1", "--batch-rows", "100", "--batch-time", "off",
                 "--json", *_args(database_url))  # fmt: skip
    assert result.code == 0, result.err
    doc = result.json
    assert doc["status"] == "done" and doc["table"] == "public.t"
    assert doc["rows_updated"] == doc["rows_scanned"] == 3000
    assert doc["batches"] == 31 and doc["resumed"] is False  # 30 full batches, then the rest (none)
    assert db.execute("SELECT count(*), min(n - orig), max(n - orig) FROM t").fetchone() == (3000, 1, 1)
    (row,) = _backfills(db)
    last = list(db.execute("SELECT a::text, b FROM t ORDER BY a DESC, b DESC LIMIT 1").fetchone() or ())
    assert row[1:] == ("done", last, 3000, 3000, 31)
    audit = db.execute(
        "SELECT details->>'phase', details->>'status' FROM dbrollback.audit WHERE command = 'backfill' ORDER BY id"
    ).fetchall()
    assert audit == [("start", None), ("end", "done")]


def test_odd_table_and_column_names(cli, db, database_url):
    schema, table = _quoted(db, ODD_SCHEMA), _quoted(db, ODD_SCHEMA, ODD_TABLE)
    db.execute(f"CREATE SCHEMA {schema}")
    db.execute(
        f'CREATE TABLE {table} ("k ""1""" int NOT NULL, "ü;k" text NOT NULL, orig int, "n.v" int, '
        'PRIMARY KEY ("k ""1""", "ü;k"))'
    )
    db.execute(f"INSERT INTO {table} SELECT g % 3, 'é' || g, g, g FROM generate_series(1, 2000) g")
    result = cli("backfill", table, "--set", '"n.v" = "n.v" + 1', "--where", '"ü;k" <> \'é5\'',
                 "--batch-rows", "150", "--json", *_args(database_url))  # fmt: skip
    assert result.code == 0, result.err
    assert result.json["table"] == f"{ODD_SCHEMA}.{ODD_TABLE}"
    assert result.json["rows_updated"] == 1999
    counts = db.execute(f'SELECT "n.v" - orig, count(*) FROM {table} GROUP BY 1 ORDER BY 1').fetchall()
    assert counts == [(0, 1), (1, 1999)]
    assert db.execute(f'SELECT "n.v" - orig FROM {table} WHERE "ü;k" = \'é5\'').fetchone() == (0,)


def test_partitioned_table_across_its_partitions(cli, db, database_url):
    db.execute("CREATE TABLE p (id int PRIMARY KEY, orig int, n int) PARTITION BY RANGE (id)")
    db.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (500)")
    db.execute("CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (500) TO (1000)")
    db.execute("INSERT INTO p SELECT g, g, g FROM generate_series(0, 999) g")
    result = cli("backfill", "p", "--set", "n = n + 1", "--batch-rows", "70", "--batch-time", "off", "--json",
                 *_args(database_url))  # fmt: skip
    assert result.code == 0, result.err
    assert (result.json["rows_updated"], result.json["batches"]) == (1000, 15)
    assert db.execute("SELECT count(*), min(n - orig), max(n - orig) FROM p").fetchone() == (1000, 1, 1)


def test_keys_read_back_in_a_session_with_other_text_settings(database_url, db):
    """The position is text: written under German DateStyle and extra_float_digits -15, read back
    by a session with the defaults, it must still land between the same two rows."""
    db.execute(
        "CREATE TABLE t (ts timestamptz NOT NULL, f float8 NOT NULL, orig int, n int, PRIMARY KEY (ts, f))"
    )
    db.execute(
        "INSERT INTO t SELECT timestamptz '2024-03-01 10:00:00.123456+01' + (g / 3) * interval '1 day', "
        "1 + g * 1e-13, g, g FROM generate_series(1, 600) g"
    )
    options = "-c DateStyle=German,DMY -c extra_float_digits=-15 -c IntervalStyle=sql_standard -c TimeZone=Asia/Kolkata"
    with psycopg.connect(database_url, autocommit=True, options=options) as odd:
        backfill_id = create_backfill(odd, ("public", "t"), "n = n + 1")
        first = run_backfill(odd, backfill_id, _fast(initial_batch_rows=50, target_batch_ms=0, max_batches=3))
    assert first.status == "pending" and first.rows_scanned == 150
    record = get_backfill(db, backfill_id)
    assert record is not None and record.last_key is not None
    assert record.last_key[0].startswith("2024-")  # ISO, whatever the writer's DateStyle
    with psycopg.connect(database_url, autocommit=True) as plain:
        rest = run_backfill(plain, backfill_id, _fast())
    assert rest.status == "done" and rest.resumed
    assert db.execute("SELECT count(*), min(n - orig), max(n - orig) FROM t").fetchone() == (600, 1, 1)


def test_dry_run_counts_and_changes_nothing(cli, db, database_url):
    _numbers(db)
    result = cli("backfill", "t", "--set", "n = n + 1", "--where", "id <= 2500", "--dry-run", "--json",
                 *_args(database_url))  # fmt: skip
    assert result.code == 0, result.err
    assert result.json["rows_matching"] == 250 and result.json["key_columns"] == ["id"]
    assert set(_increments(db).values()) == {0}
    assert _backfills(db) == []
    human = cli("backfill", "t", "--set", "n = n + 1", "--dry-run", *_args(database_url))
    assert human.code == 0 and "would update 1,000 row(s)" in human.out


def test_where_limits_the_rows(cli, db, database_url):
    _numbers(db)
    result = cli("backfill", "public.t", "--set", "n = n + 1", "--where", "id % 20 = 0", "--batch-rows", "64",
                 "--json", *_args(database_url))  # fmt: skip
    assert result.code == 0, result.err
    assert result.json["rows_updated"] == 500 and result.json["rows_scanned"] == 1000
    assert all(v == (1 if k % 20 == 0 else 0) for k, v in _increments(db).items())


# -- refusals: nothing recorded, nothing changed ------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "table", "set_sql", "where_sql", "code", "message"),
    [
        ("CREATE TABLE nokey (id int, n int)", "nokey", "n = 1", None, 3,
         "a primary key or a unique index on NOT NULL columns"),
        ("CREATE TABLE nullable (id int UNIQUE, n int)", "nullable", "n = 1", None, 3,
         "a primary key or a unique index on NOT NULL columns"),
        ("CREATE TABLE partial (id int NOT NULL, n int); CREATE UNIQUE INDEX ON partial (id) WHERE id > 0",
         "partial", "n = 1", None, 3, "a primary key or a unique index on NOT NULL columns"),
        ("", "t", "n = n +", None, 2, "--set"),
        ("", "t", "nope = 1", None, 2, 'column "nope" of relation "t" does not exist'),
        ("", "t", "n = 'text'", None, 2, "invalid input syntax for type integer"),
        ("", "t", "n = 1", "nope > 0", 2, 'column "nope" does not exist'),
        ("", "t", "n = 1; DROP TABLE t", None, 2, "not several statements"),
        ("", "t", "n = 1", "true; DROP TABLE t", 2, "not several statements"),
        ("", "t", "n = 1 --", "false", 2, "comments"),
        ("", "t", "n = 1 /* x */", None, 2, "comments"),
        ("", "t", "n = 1", "false) OR (true", 2, "unbalanced bracket"),
        ("", "t", "n = 1 WHERE id = 10", None, 2, "WHERE"),
        ("", "t", "n = 1 FROM t AS other", None, 2, "FROM"),
        ("", "t", "n = 1 RETURNING id", None, 2, "RETURNING"),
        ("", "t", "id = id + 1", None, 2, "key column"),
        ("", "t", "", None, 2, "--set is empty"),
        ("", "t", "n = 1", " ", 2, "--where is empty"),
        ("", "missing", "n = 1", None, 2, "No such table: missing"),
        ("CREATE VIEW v AS SELECT * FROM t", "v", "n = 1", None, 2, "not a table"),
    ],
)  # fmt: skip
def test_refused_before_anything_changes(
    cli, db, database_url, setup, table, set_sql, where_sql, code, message
):
    _numbers(db)
    if setup:
        db.execute(setup)
    args = ["backfill", table, "--set", set_sql, *(["--where", where_sql] if where_sql is not None else [])]
    result = cli(*args, *_args(database_url))
    assert result.code == code, (result.out, result.err)
    assert message in result.err
    assert "Traceback" not in result.err
    assert set(_increments(db).values()) == {0}  # t is still there, unchanged
    assert _backfills(db) == []


def test_cli_usage_errors(cli, db, database_url):
    _numbers(db)
    for args, message in [
        (["t"], "needs TABLE and --set"),
        (["--id", "1"], "--id applies to --resume only"),
        (["--resume", "t"], "--resume takes no TABLE"),
        (["--list", "--resume"], "--list takes no"),
        (["--all"], "--all applies to --list only"),
        (["--resume", "--id", "99"], "No backfill 99"),
        (["t", "--set", "n = 1", "--batch-time", "soon"], "--batch-time"),
        (["t", "--set", "n = 1", "--max-lag-bytes", "lots"], "--max-lag-bytes"),
    ]:
        result = cli("backfill", *args, *_args(database_url))
        assert result.code == 2, (args, result.err)
        assert message in result.err, (args, result.err)


def test_create_backfill_uses_savepoints_in_the_callers_transaction(database_url, db):
    """As in an Alembic revision: failed checks leave the transaction usable, success commits
    nothing by itself, and run_backfill refuses a connection inside a transaction."""
    _numbers(db)
    with psycopg.connect(database_url) as conn:  # not autocommit: one open transaction
        conn.execute("CREATE TABLE made_in_the_revision (id int PRIMARY KEY)")
        with pytest.raises(ConfigError, match="does not exist"):
            create_backfill(conn, ("public", "t"), "nope = 1")
        with pytest.raises(RefusedForSafety):
            conn.execute("CREATE TABLE nokey (n int)")
            create_backfill(conn, ("public", "nokey"), "n = 1")
        backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1", actor="revision r1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(ConfigError, match="autocommit"):
            run_backfill(conn, backfill_id)
        conn.rollback()
    assert db.execute("SELECT to_regclass('made_in_the_revision')").fetchone() == (None,)
    assert _backfills(db) == []  # rolled back with the transaction (the catalog with it)
    with psycopg.connect(database_url) as conn:
        backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1", actor="revision r1")
        conn.commit()
    record = get_backfill(db, backfill_id)
    assert record is not None and (record.status, record.actor, record.key_types) == (
        "pending",
        "revision r1",
        ["integer"],
    )


# -- failures and resuming ----------------------------------------------------------------------


def test_sql_error_in_a_batch_fails_it_and_resume_goes_on_from_there(cli, db, database_url):
    _numbers(db)
    result = cli("backfill", "t", "--set", "n = n + 1 + 0 / (id - 4550)", "--batch-rows", "100",
                 "--batch-time", "off", "--json", *_args(database_url))  # fmt: skip
    assert result.code == 4, result.err
    assert result.json["resumable"] is True and result.json["error"] == "migration_failed"
    assert "division by zero" in result.json["message"] and "--resume --id" in result.json["message"]
    increments = _increments(db)
    # the batches before the one with id 4550 committed (ids up to 4000), that one rolled back
    assert all(v == (1 if k <= 4000 else 0) for k, v in increments.items())
    (row,) = _backfills(db)
    assert row[1:3] == ("failed", ["4000"])
    listed = cli("backfill", "--list", "--json", *_args(database_url))
    assert [(b["id"], b["status"], "division by zero" in b["error"]) for b in listed.json] == [
        (row[0], "failed", True)
    ]

    again = cli("backfill", "--resume", "--json", *_args(database_url))  # the cause is still there
    assert again.code == 4 and "division by zero" in again.json["message"]
    db.execute("DELETE FROM t WHERE id = 4550")  # the cause, gone
    resumed = cli("backfill", "--resume", "--json", *_args(database_url))
    assert resumed.code == 0, resumed.err
    (done,) = resumed.json
    assert done["status"] == "done" and done["resumed"] is True
    assert set(_increments(db).values()) == {1}
    assert cli("backfill", "--list", "--json", *_args(database_url)).json == []


def test_max_batches_stops_pending_and_resume_finishes_every_one_in_id_order(cli, db, database_url):
    _numbers(db, "t")
    _numbers(db, "u")
    for table in ("t", "u"):
        stopped = cli("backfill", table, "--set", "n = n + 1", "--batch-rows", "100", "--batch-time", "off",
                      "--max-batches", "2", "--json", *_args(database_url))  # fmt: skip
        assert stopped.code == 0, stopped.err
        assert (stopped.json["status"], stopped.json["rows_scanned"]) == ("pending", 200)
    assert [r[1:] for r in _backfills(db)] == [("pending", ["2000"], 200, 200, 2)] * 2
    listed = cli("backfill", "--list", *_args(database_url))
    assert listed.code == 0 and listed.out.count("pending") == 2

    resumed = cli("backfill", "--resume", "--json", *_args(database_url))
    assert resumed.code == 0, resumed.err
    assert [
        (r["table"], r["status"], r["resumed"], r["rows_scanned"], r["total_rows_updated"])
        for r in resumed.json
    ] == [
        ("public.t", "done", True, 800, 1000),
        ("public.u", "done", True, 800, 1000),
    ]
    assert set(_increments(db, "t").values()) == set(_increments(db, "u").values()) == {1}
    assert cli("backfill", "--resume", "--json", *_args(database_url)).json == []


def test_one_backfill_never_runs_twice_at_once(cli, db, database_url):
    _numbers(db)
    first = cli("backfill", "t", "--set", "n = n + 1", "--max-batches", "1", "--batch-rows", "10", "--json",
                *_args(database_url))  # fmt: skip
    backfill_id = first.json["id"]
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, backfill_id))
        held = cli("backfill", "--resume", "--id", str(backfill_id), *_args(database_url))
        assert held.code == 3
        assert f"Backfill {backfill_id} (public.t) is already running in another session" in held.err
        skipped = cli("backfill", "--resume", *_args(database_url))
        assert skipped.code == 0 and "Skipped" in skipped.err
        with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(LockHeld):
            run_backfill(conn, backfill_id)
    assert _backfills(db)[0][1] == "pending"
    assert sum(_increments(db).values()) == 10
    assert cli("backfill", "--resume", "--id", str(backfill_id), *_args(database_url)).code == 0
    assert set(_increments(db).values()) == {1}


# -- kill -9 and Ctrl-C of the real command -----------------------------------------------------


def _stall_at(db: psycopg.Connection, row_id: int) -> None:
    """An UPDATE of t's row `row_id` waits for advisory lock 4242 while a session holds it."""
    db.execute(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$"
    )
    db.execute(
        f"CREATE TRIGGER stall BEFORE UPDATE ON t FOR EACH ROW WHEN (OLD.id = {int(row_id)}) "
        "EXECUTE FUNCTION stall()"
    )


def _start(database_url: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbrollback", "backfill", "t", "--set", "n = n + 1", "--batch-rows", "20",
         "--batch-time", "off", "--lock-timeout", "10min", *_args(database_url)],
        cwd=cwd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait(condition: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 120  # a guard against hanging, not a performance limit
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"backfill exited before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.05)


def _stalled(db: psycopg.Connection) -> bool:
    """The backfill's batch waits at the stalling row, the batches before it committed."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'dbrollback % backfill' AND wait_event = 'advisory'"
    ).fetchone()
    return row == (1,)


def _its_sessions_gone(db: psycopg.Connection) -> bool:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'dbrollback % backfill'"
    ).fetchone()
    return row == (0,)


def _xmins(db: psycopg.Connection) -> dict[int, str]:
    return dict(db.execute("SELECT id, xmin::text FROM t ORDER BY id").fetchall())


def test_kill_9_mid_batch_then_resume_updates_every_row_exactly_once(cli, db, database_url, tmp_path):
    _numbers(db)
    _stall_at(db, 1550)  # in the 8th batch of 20 rows: ids 1410 .. 1600
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        proc = _start(database_url, tmp_path)
        try:
            _wait(lambda: _stalled(db), proc, "the stalling row")
            # the stalled batch has updated ids 1410 .. 1540 already, uncommitted
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
        holder.execute("SELECT pg_advisory_unlock(4242)")  # the orphaned batch finishes, then dies
        _wait(lambda: _its_sessions_gone(db), None, "the killed backfill's session ending")
    assert proc.returncode == -signal.SIGKILL
    (row,) = _backfills(db)
    assert row[1:] == ("pending", ["1400"], 140, 140, 7)
    increments = _increments(db)
    assert all(v == (1 if k <= 1400 else 0) for k, v in increments.items())  # the 8th batch rolled back
    before = _xmins(db)

    db.execute("DROP TRIGGER stall ON t")
    resumed = cli("backfill", "--resume", "--json", *_args(database_url))
    assert resumed.code == 0, resumed.err
    (done,) = resumed.json
    assert (done["status"], done["resumed"], done["rows_scanned"], done["total_rows_updated"]) == (
        "done",
        True,
        860,
        1000,
    )
    assert set(_increments(db).values()) == {1}
    after = _xmins(db)
    assert all(after[k] == before[k] for k in before if k <= 1400)  # committed batches not redone
    assert all(after[k] != before[k] for k in before if k > 1400)


def test_sigint_exits_130_keeps_progress_and_resume_finishes(cli, db, database_url, tmp_path):
    _numbers(db)
    _stall_at(db, 610)  # in the 4th batch
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        proc = _start(database_url, tmp_path)
        try:
            _wait(lambda: _stalled(db), proc, "the stalling row")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    text = err.decode()
    assert "Interrupted" in text and "dbrollback backfill --resume --id" in text
    assert "Traceback" not in text
    (row,) = _backfills(db)
    assert row[1:] == ("pending", ["600"], 60, 60, 3)
    assert all(v == (1 if k <= 600 else 0) for k, v in _increments(db).items())
    ends = db.execute(
        "SELECT details->>'status' FROM dbrollback.audit WHERE command = 'backfill' AND details->>'phase' = 'end'"
    ).fetchall()
    assert ends == [("interrupted",)]

    resumed = cli("backfill", "--resume", "--json", *_args(database_url))  # the stall is released now
    assert resumed.code == 0, resumed.err
    assert set(_increments(db).values()) == {1}


# -- adapting, locks, concurrent writers --------------------------------------------------------


def test_batch_size_shrinks_when_batches_are_slow(database_url, db):
    _numbers(db)
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$"
    )
    db.execute("CREATE TRIGGER slow BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow()")
    with psycopg.connect(database_url, autocommit=True) as conn:
        backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1")
        # 200 rows take at least 0.4 s, over the 50 ms aimed at: each next batch is half as big
        result = run_backfill(
            conn, backfill_id, _fast(initial_batch_rows=200, target_batch_ms=50, max_batches=3)
        )
    assert result.status == "pending"
    assert result.batch_rows == 50 and result.rows_scanned == 200 + 100 + 50
    record = get_backfill(db, backfill_id)
    assert record is not None and record.batch_rows == 50
    assert sum(_increments(db).values()) == 350


def test_lock_timeout_backs_off_halves_and_retries_until_the_row_is_free(database_url, db):
    _numbers(db)
    holder = psycopg.connect(database_url)  # its transaction holds a row lock
    holder.execute("SELECT 1 FROM t WHERE id = 50 FOR UPDATE")
    retried = threading.Event()
    messages: list[str] = []

    def notify(message: str) -> None:
        messages.append(message)
        if "lock timeout" in message:
            retried.set()

    def release() -> None:
        retried.wait()
        holder.rollback()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1")
            result = run_backfill(
                conn,
                backfill_id,
                _fast(initial_batch_rows=100, target_batch_ms=0, lock_timeout_ms=100),
                notify=notify,
            )
    finally:
        retried.set()
        releaser.join()
        holder.close()
    assert result.status == "done" and result.lock_retries >= 1
    assert any("retrying the batch with 50 rows" in m for m in messages)
    assert set(_increments(db).values()) == {1}


def test_lock_retries_run_out_resumable_and_pending(database_url, db):
    _numbers(db)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM t WHERE id = 10 FOR UPDATE")
        with psycopg.connect(database_url, autocommit=True) as conn:
            backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1")
            with pytest.raises(MigrationFailed) as failed:
                run_backfill(conn, backfill_id, _fast(lock_timeout_ms=20, lock_retries=2))
        holder.rollback()
    assert failed.value.exit_code == 4 and failed.value.fields["resumable"] is True
    assert "lock timeout 3 time(s)" in failed.value.message and "--resume --id" in failed.value.message
    record = get_backfill(db, backfill_id)
    assert record is not None and record.status == "pending" and "lock timeout" in (record.error or "")
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert run_backfill(conn, backfill_id, _fast()).status == "done"
    assert set(_increments(db).values()) == {1}
    record = get_backfill(db, backfill_id)
    assert record is not None and record.error is None


def test_sessions_waiting_on_the_tables_locks_go_first_for_a_bounded_time(database_url, db):
    _numbers(db)
    holder = psycopg.connect(database_url)
    holder.execute("SELECT 1 FROM t WHERE id = 10 FOR UPDATE")
    waiter = psycopg.connect(database_url, autocommit=True)
    blocked = threading.Thread(target=lambda: waiter.execute("UPDATE t SET n = n WHERE id = 10"))
    blocked.start()
    try:
        _wait(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                    (waiter.info.backend_pid,),
                ).fetchone()
                == (1,)
            ),
            None,
            "the other session waiting for the row",
        )
        messages: list[str] = []
        with psycopg.connect(database_url, autocommit=True) as conn:
            # the backfill leaves row 10 alone, so only the waiting session holds it up
            backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1", "id <> 10")
            result = run_backfill(
                conn, backfill_id, _fast(max_lock_waiters=0, max_lock_wait_ms=200, initial_batch_rows=400,
                                         target_batch_ms=0), notify=messages.append,
            )  # fmt: skip
        assert blocked.is_alive()  # it was still waiting: the backfill went on after its 200 ms
    finally:
        holder.rollback()
        blocked.join()
        holder.close()
        waiter.close()
    assert result.status == "done" and result.batches == 3
    assert result.throttled_s >= 0.2 * 3
    # said once, though it waited before each of the 3 batches
    assert [m for m in messages if "waiting for locks" in m] == [
        f"Backfill {backfill_id} (public.t): 1 other session(s) waiting for locks on the table: letting them "
        "go first (up to 0.2 s before each batch)"
    ]
    assert all(v == (0 if k == 10 else 1) for k, v in _increments(db).items())


class _Hook:
    """A progress reporter that runs `action` after the first batch commits."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.calls = 0

    def task(self, description: str, total: int | None, unit: str = "bytes") -> _Hook:
        return self

    def advance(self, amount: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.action()

    def finish(self) -> None:
        pass


def test_rows_inserted_and_deleted_while_it_runs(database_url, db):
    _numbers(db)

    def meanwhile() -> None:  # after the first batch: position 1000
        db.execute("INSERT INTO t VALUES (5, 0, 0), (995, 0, 0), (20005, 0, 0)")  # below x2, above
        db.execute("DELETE FROM t WHERE id BETWEEN 1000 AND 2000")  # the position's row, the next batch's

    with psycopg.connect(database_url, autocommit=True) as conn:
        backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1")
        result = run_backfill(conn, backfill_id, _fast(initial_batch_rows=100, target_batch_ms=0),
                              progress=_Hook(meanwhile))  # fmt: skip
    assert result.status == "done"
    increments = _increments(db)
    assert increments.pop(5) == 0 and increments.pop(995) == 0  # below the position: not covered
    assert increments.pop(20005) == 1  # above it: covered
    assert set(increments.values()) == {1} and len(increments) == 1000 - 101


def test_table_emptied_while_it_runs(database_url, db):
    _numbers(db)
    with psycopg.connect(database_url, autocommit=True) as conn:
        backfill_id = create_backfill(conn, ("public", "t"), "n = n + 1")
        result = run_backfill(conn, backfill_id, _fast(initial_batch_rows=100, target_batch_ms=0),
                              progress=_Hook(lambda: db.execute("DELETE FROM t")))  # fmt: skip
    assert (result.status, result.rows_updated, result.batches) == ("done", 100, 2)
    assert db.execute("SELECT status, finished_at IS NOT NULL FROM dbrollback.backfills").fetchone() == (
        "done",
        True,
    )


def test_batches_walk_the_key_index(db):
    """The row comparisons of both bounds are index conditions on a table too big to scan."""
    db.execute("CREATE TABLE big (a int NOT NULL, b text NOT NULL, n int, PRIMARY KEY (a, b))")
    db.execute("INSERT INTO big SELECT g % 1000, 'x' || g, g FROM generate_series(1, 200000) g")
    db.execute("VACUUM ANALYZE big")
    statements = BatchStatements(("public", "big"), ["a", "b"], ["integer", "text"], "n = n + 1", "n > 0")
    for query in (
        statements.upper(["500", "x1500"], 1000),
        statements.update(["500", "x1500"], ["505", "x5"]),
        statements.update(None, ["3", "x3"]),
        statements.count(["998", "x1"]),
    ):
        plan = "\n".join(r[0] for r in db.execute(sql.SQL("EXPLAIN {}").format(query)).fetchall())
        assert "Index" in plan and "Seq Scan" not in plan, plan
        assert "ROW(a, b)" in plan.split("Cond:")[1], plan
