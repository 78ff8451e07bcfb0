"""Waiting between batches, so a backfill yields to standbys and to sessions waiting for locks.

Replication lag: before a batch, the largest ``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``
over the standbys in pg_stat_replication (directly connected ones, physical or logical, while they
stream or catch up). Above the limit the backfill sleeps and polls until it is under it again,
however long that takes: a paused or slow standby holds the backfill, not the other way round. A
disconnected standby is not there to wait for. A role that is neither superuser nor member of
pg_monitor / pg_read_all_stats sees the standbys' rows with their positions NULL: that is said once
and the backfill then runs without lag throttling.

Lock waiters: other sessions waiting for a lock on the table (on the relation itself, on a row's
tuple lock, or on a transaction while holding a row's tuple lock of the table: the shape of a row
lock wait). Between batches the backfill holds no lock, so those sessions wait for someone else;
starting a batch then would queue behind them (or in front of an ALTER TABLE that waits for the
table), so the backfill lets them go first, for at most `max_wait_s` per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

_LAG_SQL = """
SELECT count(*) FILTER (WHERE state IS NULL),
       max(pg_catalog.pg_wal_lsn_diff(
             CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_current_wal_lsn() END,
             replay_lsn))
         FILTER (WHERE state IN ('streaming', 'catchup') AND replay_lsn IS NOT NULL)
FROM pg_catalog.pg_stat_replication
"""

_LOCK_WAITERS_SQL = """
SELECT count(DISTINCT w.pid)
FROM pg_catalog.pg_locks w
WHERE NOT w.granted AND w.pid <> pg_catalog.pg_backend_pid()
  AND ((w.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
        AND w.relation = ANY(%(relations)s::oid[]))
       OR (w.locktype = 'transactionid' AND EXISTS (
             SELECT FROM pg_catalog.pg_locks t
             WHERE t.pid = w.pid AND t.granted AND t.locktype = 'tuple'
               AND t.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND t.relation = ANY(%(relations)s::oid[]))))
"""

POLL_S = 0.1


def _megabytes(n: float) -> str:
    return f"{n / (1024 * 1024):,.1f} MB"


class Throttle:
    """Waits before each batch as the limits say; `waited_s` adds up the time spent waiting."""

    def __init__(
        self,
        conn: psycopg.Connection,
        name: str,
        relations: list[int],
        *,
        max_lag_bytes: int | None,
        max_lock_waiters: int | None,
        max_lock_wait_s: float,
        notify: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.conn = conn
        self.name = name
        self.relations = relations
        self.max_lag_bytes = max_lag_bytes
        self.max_lock_waiters = max_lock_waiters
        self.max_lock_wait_s = max_lock_wait_s
        self.notify = notify
        self.sleep = sleep
        self.waited_s = 0.0
        self._lag_hidden_said = False
        self._letting_waiters_go = False  # said once per stretch of batches that find waiters

    def wait(self) -> float:
        """Wait as needed before the next batch; returns the seconds waited."""
        waited = self._wait_for_standbys() + self._wait_for_lock_waiters()
        self.waited_s += waited
        return waited

    def replication_lag(self) -> int | None:
        """The largest lag in bytes of a streaming standby; None: none visible."""
        row = self.conn.execute(_LAG_SQL).fetchone()
        hidden, lag = (row[0], row[1]) if row else (0, None)
        if hidden and not self._lag_hidden_said:
            self._lag_hidden_said = True
            self.notify(
                f"{self.name}: this role cannot see the replication positions of {hidden} standby(s) "
                "(it needs pg_monitor or pg_read_all_stats): the backfill does not throttle on "
                "replication lag"
            )
        return None if lag is None else int(lag)

    def _wait_for_standbys(self) -> float:
        if self.max_lag_bytes is None:
            return 0.0
        lag = self.replication_lag()
        if lag is None or lag <= self.max_lag_bytes:
            return 0.0
        self.notify(
            f"{self.name}: replication lag {_megabytes(lag)} is over the limit of "
            f"{_megabytes(self.max_lag_bytes)}: waiting for the standbys to catch up"
        )
        started = time.monotonic()
        while lag is not None and lag > self.max_lag_bytes:
            self.sleep(POLL_S)
            lag = self.replication_lag()
        waited = time.monotonic() - started
        self.notify(f"{self.name}: replication lag back under the limit after {waited:.1f} s")
        return waited

    def lock_waiters(self) -> int:
        row = self.conn.execute(_LOCK_WAITERS_SQL, {"relations": self.relations}).fetchone()
        return int(row[0]) if row else 0

    def _wait_for_lock_waiters(self) -> float:
        if self.max_lock_waiters is None or self.max_lock_wait_s <= 0:
            return 0.0
        waiters = self.lock_waiters()
        if waiters <= self.max_lock_waiters:
            self._letting_waiters_go = False
            return 0.0
        if not self._letting_waiters_go:
            self._letting_waiters_go = True
            self.notify(
                f"{self.name}: {waiters} other session(s) waiting for locks on the table: letting them "
                f"go first (up to {self.max_lock_wait_s:g} s before each batch)"
            )
        started = time.monotonic()
        while waiters > self.max_lock_waiters and time.monotonic() - started < self.max_lock_wait_s:
            self.sleep(POLL_S)
            waiters = self.lock_waiters()
        return time.monotonic() - started
