"""Replication-lag throttling against a real streaming standby.

A primary of its own (the embedded server's binaries, in the test's directory) and a standby made
from it with pg_basebackup, streaming over the primary's Unix socket. With the standby's replay
paused, a backfill waits before its next batch once the standby is further behind than the limit,
and goes on when replay resumes. A role that cannot see the standby's positions is told so and
is not throttled.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dbrollback.backfill import BackfillOptions, create_backfill, get_backfill, run_backfill
from dbrollback.embedded import EmbeddedServer, binary

ROWS = 3000


@dataclass
class Pair:
    primary_url: str
    standby_url: str
    primary_socket: Path


def _url(socket_dir: Path, user: str = "postgres") -> str:
    return f"host={socket_dir} port=5432 user={user} dbname=postgres"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    primary = EmbeddedServer(tmp_path / "primary")
    standby = EmbeddedServer(tmp_path / "standby")
    started = primary.start({"fsync": "off", "synchronous_commit": "off"})
    try:
        assert started.socket_dir is not None
        subprocess.run(
            [str(binary("pg_basebackup")), "-D", str(standby.pgdata), "-R", "-X", "stream", "-c", "fast",
             "-d", _url(started.socket_dir)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
        )  # fmt: skip
        # The primary's socket is in its data directory: pg_basebackup copies the socket's lock
        # file (not the socket), which would stop the standby from opening its own there.
        (standby.pgdata / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
        # The standby reports what it has replayed every second (10 s by default), not only when
        # WAL arrives: a throttled backfill sends none.
        on_standby = standby.start({"fsync": "off", "wal_receiver_status_interval": "1s"})
        assert on_standby.socket_dir is not None
        yield Pair(_url(started.socket_dir), _url(on_standby.socket_dir), started.socket_dir)
    finally:
        standby.stop()
        primary.stop()


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120  # a guard against hanging, not a performance limit
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.05)


def _streaming_and_caught_up(primary: psycopg.Connection) -> bool:
    row = primary.execute(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
        "AND replay_lsn >= pg_current_wal_lsn()"
    ).fetchone()
    return row == (1,)


def _updated(conn: psycopg.Connection) -> list[tuple[int, int]]:
    return conn.execute("SELECT n - orig, count(*) FROM t GROUP BY 1 ORDER BY 1").fetchall()


class _Run(threading.Thread):
    def __init__(self, url: str, backfill_id: int, options: BackfillOptions) -> None:
        super().__init__()
        self.url, self.backfill_id, self.options = url, backfill_id, options
        self.messages: list[str] = []
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                self.result = run_backfill(conn, self.backfill_id, self.options, notify=self.messages.append)
        except BaseException as exc:
            self.error = exc


def test_backfill_waits_for_a_paused_standby_and_goes_on_when_it_replays(pair):
    options = BackfillOptions(
        max_replication_lag_bytes=16 * 1024, max_lock_waiters=None, initial_batch_rows=100, target_batch_ms=0
    )
    with (
        psycopg.connect(pair.primary_url, autocommit=True) as primary,
        psycopg.connect(pair.standby_url, autocommit=True) as standby,
    ):
        # ~250 bytes of WAL per updated row: one batch of 100 puts the standby over 16 kB behind
        primary.execute("CREATE TABLE t (id int PRIMARY KEY, orig int NOT NULL, n int NOT NULL, pad text)")
        primary.execute(f"INSERT INTO t SELECT g, g, g, repeat('p', 200) FROM generate_series(1, {ROWS}) g")
        primary.execute("CHECKPOINT")
        backfill_id = create_backfill(primary, ("public", "t"), "n = n + 1")
        _wait(lambda: _streaming_and_caught_up(primary), "the standby streaming and caught up")
        standby.execute("SELECT pg_wal_replay_pause()")
        _wait(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() == ("paused",),
              "replay paused")  # fmt: skip

        run = _Run(pair.primary_url, backfill_id, options)
        run.start()
        try:
            _wait(lambda: any("waiting for the standbys" in m for m in run.messages) or not run.is_alive(),
                  "the backfill throttling")  # fmt: skip
            assert run.error is None and run.is_alive(), run.messages
            record = get_backfill(primary, backfill_id)
            assert record is not None and record.status == "pending" and record.rows_scanned < ROWS
            lag = primary.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication"
            ).fetchone()
            assert lag is not None and lag[0] > 16 * 1024
            assert _updated(standby) == [(0, ROWS)]  # the standby has replayed none of it
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
            run.join()
        assert run.error is None, run.error
        result = run.result
        assert result is not None and result.status == "done", run.messages  # type: ignore[attr-defined]
        assert result.throttled_s > 0 and result.rows_updated == ROWS  # type: ignore[attr-defined]
        assert any("replication lag back under the limit" in m for m in run.messages)
        assert _updated(primary) == [(1, ROWS)]
        _wait(lambda: _updated(standby) == [(1, ROWS)], "the standby replaying the whole backfill")


def test_a_role_that_cannot_see_the_lag_is_told_and_not_throttled(pair):
    with (
        psycopg.connect(pair.primary_url, autocommit=True) as primary,
        psycopg.connect(pair.standby_url, autocommit=True) as standby,
    ):
        primary.execute("CREATE TABLE t (id int PRIMARY KEY, orig int NOT NULL, n int NOT NULL, pad text)")
        primary.execute(f"INSERT INTO t SELECT g, g, g, repeat('p', 200) FROM generate_series(1, {ROWS}) g")
        backfill_id = create_backfill(primary, ("public", "t"), "n = n + 1")
        primary.execute("CREATE ROLE app LOGIN")
        primary.execute("GRANT USAGE ON SCHEMA dbrollback TO app")
        primary.execute("GRANT SELECT, UPDATE ON dbrollback.backfills, t TO app")
        _wait(lambda: _streaming_and_caught_up(primary), "the standby streaming and caught up")
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            options = BackfillOptions(
                max_replication_lag_bytes=1, max_lock_waiters=None, initial_batch_rows=100
            )
            messages: list[str] = []
            with psycopg.connect(_url(pair.primary_socket, "app"), autocommit=True) as app:
                result = run_backfill(app, backfill_id, options, notify=messages.append)
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        assert result.status == "done" and result.throttled_s == 0
        assert [m for m in messages if "replication" in m] == [
            f"Backfill {backfill_id} (public.t): this role cannot see the replication positions of 1 "
            "standby(s) (it needs pg_monitor or pg_read_all_stats): the backfill does not throttle on "
            "replication lag"
        ]
        assert _updated(primary) == [(1, ROWS)]
