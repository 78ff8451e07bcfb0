"""Expand/contract backfill while writers run, against the same change as one UPDATE (issue #6).

Starts a private embedded PostgreSQL 18 in a temporary directory (default durability settings) and
generates an Alembic project there:

* rev1 creates ``bench(id bigint PRIMARY KEY, name text, amount numeric(12,2), created_at
  timestamptz, note text)`` and fills it with generate_series (--rows, default 5,000,000), in a
  template database every phase starts from a copy of (CREATE DATABASE … TEMPLATE, FILE_COPY);
* rev2 is the expansion ``expand.change_column_type("bench", "amount", "bigint",
  up="round(amount * 100)", down="amount_cents / 100.0", new_column="amount_cents")``: a new
  column and a dual-write trigger, and a pending backfill.

"The writers" are pgbench (the embedded server's own binary) with a custom script: one
transaction updates a random existing row's ``amount`` (the old column) and inserts a new row,
--writers-clients clients at --writer-rate transactions per second in all (0: as fast as they
can), prepared statements. Their figures come from pgbench's per-transaction log: throughput is
transactions completed inside the window / its length; latencies (p50, p99, max) are those of
the transactions *scheduled* inside the window, measured by pgbench from their scheduled start
(so a transaction held up by a lock, and the queue behind it, count in full). Their lock waits
come from the server log: the writers run with ``log_lock_waits = on`` and ``deadlock_timeout =
10ms`` (their sessions only, through PGOPTIONS), so every wait of 10 ms or more is logged with
its length when it ends. Writer errors are failed transactions (deadlocks, serialization) and
aborted clients (any other error), over the whole pgbench run of that phase.

Per run (median of --runs):

1. one ``UPDATE bench SET amount_cents = CAST(round(amount * 100) AS bigint)`` on a copy of the
   table with the column added and no trigger, alone and then (on another copy) while the
   writers run;
2. on a third copy: the writers alone for --writer-seconds; ``dbrollback upgrade --no-backfill``
   (the expansion's DDL, timed on its own); the writers alone again (trigger on); then
   ``dbrollback backfill --resume --json`` while the writers run (its statements are logged with
   their durations: where the time goes), and a check that every row has
   ``amount_cents = round(amount * 100)``; with --variant OPTS, the backfill runs again with
   those options on a copy of the table taken right after the DDL (same state), writers running,
   and is reported beside the default one;
3. the dual-write trigger's cost: ``UPDATE bench SET amount = amount + 1`` of the first
   1,000,000 rows (all of them with fewer) on two copies of the backfilled table, one with the
   trigger disabled (order alternating between runs).

Every dbrollback command is its own subprocess (``python -m dbrollback``); wall time and peak RSS
are recorded. The load average is printed: other work on the machine skews the figures.

    python benchmarks/expand_backfill.py [--rows 5000000] [--writers-clients 2] [--writer-rate 200]
                                         [--writer-seconds 30] [--runs 1] [--backfill-option OPT]
                                         [--variant "OPTS"] [--server-setting NAME=VALUE] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot_restore_verify import _DURATION, Run, _child_env, log, machine_lines, peak_mb, run

from dbrollback.embedded import EmbeddedServer, binary

TABLE = "bench"
T = sql.Identifier(TABLE)
TEMPLATE = "bench_template"
TRIGGER_ROWS = 1_000_000  # rows the trigger-cost UPDATE changes (all of them on a smaller table)
SLOW_MS = 50  # the server logs the writers' statements taking this long (which part of them is slow)

# Targets from the issue.
WRITER_P99_MS = 50.0
BACKFILL_ROWS_PER_S = 100_000
BACKFILL_VS_UPDATE = 0.5  # backfill rows/s / single UPDATE rows/s
TRIGGER_RATIO = 2.0

SET_SQL = "amount_cents = CAST(round(amount * 100) AS bigint)"

_REV1 = '''\
"""bench table"""
from alembic import op

revision = "rev1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE bench (id bigint PRIMARY KEY, name text, amount numeric(12,2), "
               "created_at timestamptz, note text)")
    op.execute("""
        INSERT INTO bench
        SELECT i, left('customer ' || md5(i::text), 16), ((i * 7919) % 10000000) / 100.0,
               timestamptz '2024-01-01 00:00:00+00' + (i % 31536000)::int * interval '1 second',
               left(md5((i * 31)::text) || md5((i * 17)::text), 30)
        FROM generate_series(1, {rows}::bigint) AS i
    """)
    # The writers' new rows take their keys from here, above the generated ones.
    op.execute("CREATE SEQUENCE bench_writer_ids START {next_id}")


def downgrade():
    op.execute("DROP SEQUENCE bench_writer_ids")
    op.drop_table("bench")
'''
_REV2 = '''\
"""amount in cents, as bigint, by expand/contract"""
from dbrollback import expand

revision = "rev2"
down_revision = "rev1"
branch_labels = None
depends_on = None


def upgrade():
    expand.change_column_type("bench", "amount", "bigint", up="round(amount * 100)",
                              down="amount_cents / 100.0", new_column="amount_cents")


def downgrade():
    expand.abort()
'''
# One writer transaction: the old code updating the old column of a random row, and inserting.
_WRITER_SCRIPT = """\
\\set id random(1, :rows)
BEGIN;
UPDATE bench SET amount = amount + 0.01 WHERE id = :id;
INSERT INTO bench (id, name, amount, created_at, note)
  VALUES (nextval('bench_writer_ids'), 'writer', 1.00, now(), 'written during the benchmark');
END;
"""
_ACQUIRED = re.compile(r"\[(\d+)\].*process \d+ acquired (.+?) after ([\d.]+) ms")
_STILL_WAITING = re.compile(r"\[(\d+)\].*process \d+ still waiting for (.+?) after ([\d.]+) ms")
_PROGRESS_LAG = re.compile(r"^progress: .* lag ([\d.]+) ms")


def _pct(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Window:
    """What the writers saw while one thing ran."""

    label: str
    seconds: float = 0.0
    completed: int = 0  # transactions that ended inside the window
    latencies_ms: list[float] = field(default_factory=list)  # of those scheduled inside the window
    service_ms: list[float] = field(default_factory=list)  # the same without their schedule lag
    failed: int = 0  # failed transactions (deadlock, serialization), whole pgbench run
    aborted: int = 0  # clients aborted by an error, whole pgbench run
    error_lines: list[str] = field(default_factory=list)
    lock_waits_ms: list[float] = field(default_factory=list)  # writers' waits >= 10 ms, ended
    still_waiting_ms: float = 0.0  # longest wait logged as still going and never logged as ended
    slow: dict[str, list[float]] = field(default_factory=dict)  # writers' statements >= SLOW_MS, by kind
    pgbench_exit: int = 0

    @property
    def tps(self) -> float:
        return self.completed / self.seconds if self.seconds else float("nan")

    @property
    def errors(self) -> int:
        # pgbench exits 2 when a client aborted; any other failure without an abort line counts once.
        unexplained = 1 if self.pgbench_exit != 0 and not self.aborted else 0
        return self.failed + self.aborted + unexplained

    @property
    def longest_wait_ms(self) -> float:
        return max([*self.lock_waits_ms, self.still_waiting_ms, 0.0])


class Writers:
    """pgbench writing into one database in the background; `begin`/`end` mark the window."""

    def __init__(self, bench: Bench, database: str, label: str) -> None:
        self.bench, self.database, self.label = bench, database, label
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
        self.prefix = bench.workdir / "pgbench" / f"{bench.run_number}-{slug}"
        self.prefix.parent.mkdir(exist_ok=True)
        self.window = Window(label)
        self.stderr: list[tuple[float, str]] = []
        self.t0 = self.t1 = 0.0
        self.log_from = 0
        self.pids: set[int] = set()

    def __enter__(self) -> Writers:
        b = self.bench
        rate = ["--rate", str(b.writer_rate)] if b.writer_rate > 0 else []
        cmd = [str(binary("pgbench")), "-n", "-M", "prepared", "-c", str(b.clients), "-j", str(b.clients),
               "-T", "86400", *rate, "-P", "1", "-f", str(b.writer_script), "-D", f"rows={b.rows}",
               "--log", "--log-prefix", str(self.prefix), b.server.status().url(self.database)]  # fmt: skip
        env = _child_env()
        env["PGOPTIONS"] = (
            f"-c log_lock_waits=on -c deadlock_timeout=10ms -c log_min_duration_statement={SLOW_MS}"
        )
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=b.workdir)  # fmt: skip
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        with psycopg.connect(b.server.status().url(self.database), autocommit=True) as conn:
            for _ in range(200):
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' "
                    "AND datname = current_database()"
                ).fetchall()
                if len(rows) >= b.clients:
                    self.pids = {int(r[0]) for r in rows}
                    break
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        if len(self.pids) < b.clients:
            self.stop()
            raise RuntimeError(f"pgbench did not start: {self.proc.returncode} {self.stderr}")
        time.sleep(2)  # warm-up: connections, prepared statements, the trigger function compiled
        return self

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append((time.time(), line.rstrip("\n")))

    def begin(self) -> None:
        self.log_from = self.bench.server_log.stat().st_size
        self.t0 = time.time()

    def end(self) -> None:
        self.t1 = time.time()

    def _drained(self) -> bool:
        """The writers caught up with their schedule after the window: a progress report from at
        least a second after the end shows a schedule lag under 20 ms (no lag shown: no --rate)."""
        for stamp, line in self.stderr:
            if stamp > self.t1 + 1 and line.startswith("progress:"):
                lag = _PROGRESS_LAG.match(line)
                if lag is None or float(lag.group(1)) < 20:
                    return True
        return False

    def stop(self) -> None:
        deadline = time.monotonic() + 300
        while self.proc.poll() is None and not self._drained() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGALRM)  # pgbench's -T timer: it stops and writes its logs
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        self.reader.join(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.t1 == 0.0:
            self.t1 = time.time()
        self._collect()

    def _collect(self) -> None:
        w = self.window
        w.seconds = self.t1 - self.t0
        w.pgbench_exit = self.proc.returncode or 0
        for path in self.prefix.parent.glob(self.prefix.name + ".*"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) < 6:
                    continue
                ended = int(parts[4]) + int(parts[5]) / 1e6
                if parts[2] in ("failed", "serialization", "deadlock", "other"):
                    w.failed += 1
                    continue
                if parts[2] == "skipped":
                    continue
                latency_s = int(parts[2]) / 1e6
                lag_s = int(parts[6]) / 1e6 if len(parts) > 6 else 0.0
                if self.t0 <= ended <= self.t1:
                    w.completed += 1
                if self.t0 <= ended - latency_s <= self.t1:
                    w.latencies_ms.append(latency_s * 1000)
                    w.service_ms.append((latency_s - lag_s) * 1000)
        for _, line in self.stderr:
            if line.startswith("progress:"):
                continue
            if "aborted" in line:
                w.aborted += 1
            if "error" in line.lower() or "aborted" in line:
                w.error_lines.append(line)
        open_waits: dict[int, float] = {}
        with self.bench.server_log.open(errors="replace") as fh:
            fh.seek(self.log_from)
            for line in fh:
                hit = _ACQUIRED.search(line)
                if hit and int(hit.group(1)) in self.pids:
                    w.lock_waits_ms.append(float(hit.group(3)))
                    open_waits.pop(int(hit.group(1)), None)
                    continue
                hit = _STILL_WAITING.search(line)
                if hit and int(hit.group(1)) in self.pids:
                    open_waits[int(hit.group(1))] = float(hit.group(3))
                    continue
                slow = _DURATION.search(line)
                pid = re.search(r"\[(\d+)\]", line)
                if slow and pid and int(pid.group(1)) in self.pids:
                    kind = slow.group(2).split()[0].upper().rstrip(";") if slow.group(2).split() else "?"
                    w.slow.setdefault(kind, []).append(float(slow.group(1)))
        w.still_waiting_ms = max(open_waits.values(), default=0.0)


@dataclass
class BackfillFigures:
    """One `dbrollback backfill --resume` while the writers run."""

    options: list[str]
    command: Run
    doc: dict[str, Any]
    writers: Window | None  # None: run without the writers
    profile: dict[str, tuple[int, float]]
    check: str
    server: str  # WAL, checkpoints and autovacuums while it ran

    @property
    def label(self) -> str:
        return " ".join(self.options) or "defaults"

    @property
    def name(self) -> str:
        return f"backfill ({self.label}), " + ("writers on" if self.writers else "no writers")


@dataclass
class RunFigures:
    single_quiet: tuple[float, int] = (0.0, 0)  # seconds, rows
    single_busy: tuple[float, int] = (0.0, 0)
    single_busy_writers: Window | None = None
    single_trigger: tuple[float, int] = (0.0, 0)  # the backfill's SET as one UPDATE, trigger on
    wal: dict[str, int] = field(default_factory=dict)  # WAL bytes of the single UPDATEs
    alone_before: Window | None = None
    alone_trigger: Window | None = None
    upgrade: Run | None = None
    backfills: list[BackfillFigures] = field(default_factory=list)  # the main one, then --variant ones
    trigger_on: float = 0.0
    trigger_off: float = 0.0
    trigger_rows: int = 0


class Bench:
    def __init__(self, workdir: Path, server: EmbeddedServer, args: argparse.Namespace) -> None:
        self.workdir, self.server = workdir, server
        self.rows: int = args.rows
        self.clients: int = args.writers_clients
        self.writer_rate: int = args.writer_rate
        self.writer_seconds: float = args.writer_seconds
        self.backfill_options: list[str] = list(args.backfill_option or [])
        self.variants: list[list[str]] = [v.split() for v in args.variant or []]
        self.server_log = workdir / "pgdata" / "log"
        self.store = workdir / "store"
        self.project = workdir / "project"
        self.writer_script = workdir / "writers.sql"
        self.writer_script.write_text(_WRITER_SCRIPT)
        self.run_number = 0
        self.runs: list[RunFigures] = []
        self.loads: list[str] = [_load("start")]
        self.header = ""

    # -- helpers ------------------------------------------------------------------------------
    def url(self, database: str) -> str:
        return self.server.status().url(database)

    def admin(self, query: sql.Composed) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(query)

    def copy(self, database: str, template: str = TEMPLATE) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        self.admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(database), sql.Identifier(template)
            )
        )

    def drop(self, database: str) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def dbrollback(self, database: str, *args: str, pgoptions: str | None = None) -> Run:
        cmd: list[str | Path] = [sys.executable, "-m", "dbrollback", *args, "--database-url",
                                 self.url(database), "--store", self.store.as_uri(),
                                 "-c", self.project / "alembic.ini"]  # fmt: skip
        # run() hands the children this process's environment (minus DBROLLBACK_*).
        before = os.environ.get("PGOPTIONS")
        if pgoptions is not None:
            os.environ["PGOPTIONS"] = pgoptions
        try:
            return run(cmd, self.workdir)
        finally:
            if pgoptions is not None:
                if before is None:
                    os.environ.pop("PGOPTIONS", None)
                else:
                    os.environ["PGOPTIONS"] = before

    @contextlib.contextmanager
    def connect(self, database: str) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            yield conn

    @staticmethod
    def settle(conn: psycopg.Connection) -> None:
        """Statistics fresh, no dirty buffers left from the step before."""
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(T))
        conn.execute("CHECKPOINT")

    @staticmethod
    def timed_sql(conn: psycopg.Connection, query: sql.Composed) -> tuple[float, int]:
        start = time.perf_counter()
        cur = conn.execute(query)
        return time.perf_counter() - start, cur.rowcount

    # -- setup --------------------------------------------------------------------------------
    def create_project(self) -> None:
        from alembic import command
        from alembic.config import Config

        with contextlib.redirect_stdout(sys.stderr):  # alembic init's messages: not part of the figures
            command.init(Config(str(self.project / "alembic.ini")), str(self.project / "migrations"))
        versions = self.project / "migrations" / "versions"
        (versions / "rev1.py").write_text(_REV1.format(rows=self.rows, next_id=self.rows + 1))
        (versions / "rev2.py").write_text(_REV2)

    def create_template(self) -> None:
        log(f"rev1: generating {self.rows:,} rows")
        start = time.perf_counter()
        self.dbrollback(TEMPLATE, "upgrade", "rev1", "--json")
        with self.connect(TEMPLATE) as conn:
            self.settle(conn)
            found = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [TABLE]).fetchone()
            size = int(found[0]) if found else 0
        self.header = (
            f"table bench: {self.rows:,} rows, {size:,} bytes ({size / self.rows:.0f} bytes/row with its "
            f"primary key), generated in {time.perf_counter() - start:.0f} s"
        )

    # -- one run ------------------------------------------------------------------------------
    def one_run(self, number: int) -> None:
        self.run_number = number
        figures = RunFigures()
        self.runs.append(figures)
        steps = [self.single_update, self.expand_and_backfill]
        for step in steps if number % 2 else steps[::-1]:
            step(figures)
        self.trigger_cost(figures, disabled_first=number % 2 == 0)
        self.drop(TABLE)

    def single_update(self, figures: RunFigures) -> None:
        """The change as one statement, on a copy with the column added and no trigger."""
        update = sql.SQL("UPDATE {} SET {}").format(T, sql.SQL(SET_SQL))
        for busy in (False, True):
            database = "bench_update"
            self.copy(database)
            with self.connect(database) as conn:
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN amount_cents bigint").format(T))
                self.settle(conn)
                if not busy:
                    log("one UPDATE, no writers …")
                    lsn = self.wal_position(conn)
                    figures.single_quiet = self.timed_sql(conn, update)
                    figures.wal["one UPDATE, no trigger"] = self.wal_position(conn) - lsn
                    log(f"  {figures.single_quiet[0]:.2f} s")
                else:
                    log("one UPDATE, writers running …")
                    with Writers(self, database, "one UPDATE") as writers:
                        writers.begin()
                        figures.single_busy = self.timed_sql(conn, update)
                        writers.end()
                        log(f"  {figures.single_busy[0]:.2f} s; waiting for the writers to catch up")
                    figures.single_busy_writers = writers.window
            self.drop(database)

    def expand_and_backfill(self, figures: RunFigures) -> None:
        self.copy(TABLE)
        with self.connect(TABLE) as conn:
            self.settle(conn)
        log(f"writers alone, before the expansion, {self.writer_seconds:.0f} s …")
        with Writers(self, TABLE, "alone, no trigger") as writers:
            writers.begin()
            time.sleep(self.writer_seconds)
            writers.end()
        figures.alone_before = writers.window

        with self.connect(TABLE) as conn:
            conn.execute("CHECKPOINT")
        log("dbrollback upgrade --no-backfill (the expansion's DDL) …")
        figures.upgrade = self.dbrollback(TABLE, "upgrade", "--no-backfill", "--json")
        log(f"  {figures.upgrade.seconds:.2f} s")
        with self.connect(TABLE) as conn:
            pending = conn.execute(
                "SELECT count(*) FROM dbrollback.backfills WHERE status = 'pending'"
            ).fetchone()
            if not pending or pending[0] != 1:
                raise RuntimeError(f"expected one pending backfill after the upgrade, found {pending}")

        log(f"writers alone, trigger on, {self.writer_seconds:.0f} s …")
        with Writers(self, TABLE, "alone, trigger on") as writers:
            writers.begin()
            time.sleep(self.writer_seconds)
            writers.end()
        figures.alone_trigger = writers.window

        # The variants and the decomposition start from the same state: expanded, nothing backfilled.
        for number in range(len(self.variants)):
            self.copy(f"bench_variant_{number}", template=TABLE)
        self.copy("bench_quiet", template=TABLE)
        self.copy("bench_one_update", template=TABLE)
        figures.backfills.append(self.backfill(TABLE, self.backfill_options))
        for number, options in enumerate(self.variants):
            database = f"bench_variant_{number}"
            figures.backfills.append(self.backfill(database, options))
            self.drop(database)
        # Where the time goes: the same backfill without the writers, and its SET as one UPDATE
        # with the trigger on (what each batch does, in one statement).
        figures.backfills.append(self.backfill("bench_quiet", self.backfill_options, writers_on=False))
        self.drop("bench_quiet")
        with self.connect("bench_one_update") as conn:
            self.settle(conn)
            log("one UPDATE, trigger on, no writers …")
            lsn = self.wal_position(conn)
            figures.single_trigger = self.timed_sql(
                conn, sql.SQL("UPDATE {} SET {}").format(T, sql.SQL(SET_SQL))
            )
            figures.wal["one UPDATE, trigger on"] = self.wal_position(conn) - lsn
            log(f"  {figures.single_trigger[0]:.2f} s")
        self.drop("bench_one_update")

    @staticmethod
    def wal_position(conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
        return int(row[0]) if row else 0

    def backfill(self, database: str, options: list[str], *, writers_on: bool = True) -> BackfillFigures:
        with self.connect(database) as conn:
            conn.execute("CHECKPOINT")
        log(f"dbrollback backfill --resume --json {' '.join(options)}, "
            + ("writers running …" if writers_on else "no writers …"))  # fmt: skip
        writers = Writers(self, database, f"backfill {' '.join(options)}") if writers_on else None
        with writers if writers else contextlib.nullcontext():
            if writers:
                writers.begin()
            position = self.server_log.stat().st_size
            before = self.server_counters(database)
            command = self.dbrollback(
                database, "backfill", "--resume", "--json", *options,
                pgoptions="-c log_min_duration_statement=0",
            )  # fmt: skip
            after = self.server_counters(database)
            if writers:
                writers.end()
                log(f"  {command.seconds:.2f} s; waiting for the writers to catch up")
            else:
                log(f"  {command.seconds:.2f} s")
        docs = json.loads(command.out)
        if len(docs) != 1 or docs[0]["status"] != "done":
            raise RuntimeError(f"backfill did not finish: {command.out}")
        with self.connect(database) as conn:
            rows, wrong, written = conn.execute(
                sql.SQL(
                    "SELECT count(*), "
                    "count(*) FILTER (WHERE amount_cents IS DISTINCT FROM round(amount * 100)), "
                    "count(*) FILTER (WHERE id > %s) FROM {}"
                ).format(T),
                [self.rows],
            ).fetchone() or (0, 0, 0)
        check = (
            f"run {self.run_number}, backfill ({' '.join(options) or 'defaults'}), "
            f"{'writers on' if writers_on else 'no writers'}: "
            f"{'OK' if wrong == 0 else 'WRONG'}: {rows:,} rows ({written:,} inserted by the writers), "
            f"amount_cents <> round(amount * 100) in {wrong:,}"
        )
        if wrong:
            raise RuntimeError(check)
        profile = self.profile(position, writers.pids if writers else set())
        wal = int(after[0] - before[0])
        server = (
            f"WAL written meanwhile {wal / 1e6:,.0f} MB ({wal / max(docs[0]['rows_scanned'], 1):,.0f} "
            f"bytes/row), checkpoints {after[1] - before[1]} timed + {after[2] - before[2]} requested "
            f"(WAL volume), autovacuums of bench {after[3] - before[3]}"
        )
        window = writers.window if writers else None
        return BackfillFigures(options, command, docs[0], window, profile, check, server)

    def server_counters(self, database: str) -> tuple[int, int, int, int]:
        with self.connect(database) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, c.num_timed, c.num_requested, "
                "(SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = %s::regclass) "
                "FROM pg_stat_checkpointer c",
                [TABLE],
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), int(row[3] or 0)

    def profile(self, position: int, writer_pids: set[int]) -> dict[str, tuple[int, float]]:
        """The backfill's statements from the server log (it alone logs every statement)."""
        kinds: dict[str, tuple[int, float]] = {}
        with self.server_log.open(errors="replace") as fh:
            fh.seek(position)
            for line in fh:
                hit = _DURATION.search(line)
                pid = re.search(r"\[(\d+)\]", line)
                if not hit or (pid and int(pid.group(1)) in writer_pids):
                    continue
                text = hit.group(2)
                if 'UPDATE "public"."bench"' in text:
                    kind = "UPDATE of the batch's rows (the trigger fires per row)"
                elif "OFFSET" in text:
                    kind = "SELECT the batch's upper key (index scan, OFFSET n - 1)"
                elif "dbrollback.backfills" in text and text.lstrip().startswith("UPDATE"):
                    kind = "UPDATE dbrollback.backfills (the saved position)"
                elif text.strip().upper() == "COMMIT":
                    kind = "COMMIT"
                elif "pg_locks" in text or "pg_stat_replication" in text:
                    kind = "throttle checks (lock waiters, standbys)"
                else:
                    kind = "everything else (BEGIN, set_config, catalog reads, …)"
                count, total = kinds.get(kind, (0, 0.0))
                kinds[kind] = (count + 1, total + float(hit.group(1)) / 1000)
        return kinds

    def trigger_cost(self, figures: RunFigures, *, disabled_first: bool) -> None:
        """UPDATE amount of the first TRIGGER_ROWS rows with and without the dual-write trigger."""
        limit = min(self.rows, TRIGGER_ROWS)
        update = sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id <= %s").format(T)
        order = [True, False] if disabled_first else [False, True]
        for disabled in order:
            database = "bench_trigger_off" if disabled else "bench_trigger_on"
            self.copy(database, template=TABLE)
            with self.connect(database) as conn:
                if disabled:
                    triggers = conn.execute(
                        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        [TABLE],
                    ).fetchall()
                    if len(triggers) != 1:
                        raise RuntimeError(f"expected one trigger on bench, found {triggers}")
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(T, sql.Identifier(triggers[0][0]))
                    )
                self.settle(conn)
                log(f"UPDATE amount of {limit:,} rows, trigger {'disabled' if disabled else 'on'} …")
                start = time.perf_counter()
                cur = conn.execute(update, [limit])
                seconds = time.perf_counter() - start
                log(f"  {seconds:.2f} s")
                if cur.rowcount != limit:
                    raise RuntimeError(f"the UPDATE changed {cur.rowcount} rows, expected {limit}")
                stale = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} "
                        "WHERE id <= %s AND amount_cents IS DISTINCT FROM round(amount * 100)"
                    ).format(T),
                    [limit],
                ).fetchone()
                # With the trigger the new column follows; disabled, every changed row is left stale.
                expected = limit if disabled else 0
                if not stale or stale[0] != expected:
                    raise RuntimeError(
                        f"trigger {'off' if disabled else 'on'}: {stale} stale rows, expected {expected}"
                    )
            if disabled:
                figures.trigger_off = seconds
            else:
                figures.trigger_on = seconds
            figures.trigger_rows = limit
            self.drop(database)

    # -- report -------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        runs = self.runs

        def med(values: Sequence[float]) -> float:
            clean = [v for v in values if v == v]
            return statistics.median(clean) if clean else float("nan")

        def writer_cells(ws: list[Window]) -> str:
            return (
                f"{med([w.seconds for w in ws]):8.1f}{med([w.tps for w in ws]):9.1f}"
                f"{med([_pct(w.latencies_ms, 0.5) for w in ws]):8.1f}"
                f"{med([_pct(w.latencies_ms, 0.99) for w in ws]):9.1f}"
                f"{med([max(w.latencies_ms, default=float('nan')) for w in ws]):9.1f}"
                f"{med([w.longest_wait_ms for w in ws]):10.1f}{max(w.errors for w in ws):7d}"
            )

        def windows(name: str) -> list[Window]:
            return [getattr(r, name) for r in runs if getattr(r, name) is not None]

        configs = [[r.backfills[i] for r in runs] for i in range(len(runs[0].backfills))]
        quiet_rps = med([r.single_quiet[1] / r.single_quiet[0] for r in runs])
        busy_rps = med([r.single_busy[1] / r.single_busy[0] for r in runs])
        rate = f"{self.writer_rate} tps scheduled" if self.writer_rate else "unthrottled"
        out = [
            self.header,
            f"writers: pgbench, {self.clients} client(s), {rate}, each transaction an UPDATE of a random "
            "row's amount + an INSERT",
            "",
            f"  {'':46}{'rows/s':>9}{'s':>8}{'w. tps':>9}{'p50 ms':>8}{'p99 ms':>9}{'max ms':>9}"
            f"{'lock ms':>10}{'errors':>7}",
            f"  {'writers alone, before the expansion':46}{'':9}{writer_cells(windows('alone_before'))}",
            f"  {'writers alone, trigger on':46}{'':9}{writer_cells(windows('alone_trigger'))}",
        ]
        for config in configs:
            rps = med([b.doc["rows_per_s"] for b in config])
            windows_on = [b.writers for b in config if b.writers]
            cells = (
                writer_cells(windows_on) if windows_on else f"{med([b.command.seconds for b in config]):8.1f}"
            )
            out.append(f"  {config[0].name:46}{rps:9,.0f}{cells}")
        out += [
            f"  {'one UPDATE, writers on (no trigger)':46}{busy_rps:9,.0f}"
            f"{writer_cells(windows('single_busy_writers'))}",
            f"  {'one UPDATE, no writers (no trigger)':46}{quiet_rps:9,.0f}"
            f"{med([r.single_quiet[0] for r in runs]):8.1f}",
            f"  {'one UPDATE, no writers, trigger on':46}"
            f"{med([r.single_trigger[1] / r.single_trigger[0] for r in runs]):9,.0f}"
            f"{med([r.single_trigger[0] for r in runs]):8.1f}",
            "",
            "  rows/s: the backfill's JSON rows_per_s (rows walked / its duration_s), the UPDATE's rows /",
            "  its time; s: the window (the backfill command's wall time, the UPDATE statement's time);",
            "  w. tps: writer transactions completed in the window per second; p50/p99/max: latency of",
            "  the writer transactions scheduled in the window, from their scheduled start; lock ms:",
            "  the writers' longest lock wait (server log, waits >= 10 ms); errors: failed transactions",
            "  + aborted clients in that pgbench run",
            "",
            f"the writers' slow transactions (last run): over {SLOW_MS} ms (of all scheduled in the window);",
            "p99 without the schedule lag (the transaction's own time, not the queue behind a slow one);",
            f"lock waits >= 10 ms; their statements that took >= {SLOW_MS} ms in the server (count, longest)",
        ]
        last_run = runs[-1]
        named = [("writers alone, before the expansion", last_run.alone_before),
                 ("writers alone, trigger on", last_run.alone_trigger),
                 *((b.name, b.writers) for b in last_run.backfills if b.writers),
                 ("one UPDATE, writers on (no trigger)", last_run.single_busy_writers)]  # fmt: skip
        for name, window in named:
            if window is None:
                continue
            over = sum(1 for v in window.latencies_ms if v > SLOW_MS)
            slow = ", ".join(f"{kind} {len(v)} ({max(v):.0f} ms)" for kind, v in sorted(window.slow.items()))
            out.append(
                f"  {name:46}{over:6,d}/{len(window.latencies_ms):<7,d}"
                f"p99 {_pct(window.service_ms, 0.99):7.1f} ms  waits {len(window.lock_waits_ms):4d}  "
                f"{slow or 'none'}"
            )
        out += [
            "",
            f"dbrollback upgrade --no-backfill (DDL: column, trigger, pending backfill): "
            f"{med([r.upgrade.seconds for r in runs if r.upgrade]):.2f} s, "
            f"peak RSS {peak_mb([r.upgrade for r in runs if r.upgrade]):.0f} MB",
        ]
        keys = ("rows_updated", "rows_scanned", "batches", "duration_s", "rows_per_s", "batch_rows",
                "throttled_s", "lock_retries")  # fmt: skip
        for config in configs:
            wall = med([b.command.seconds for b in config])
            last = config[-1]
            out += [
                "",
                f"dbrollback backfill --resume --json {' '.join(last.options)}".rstrip()
                + ("" if last.writers else " (no writers)")
                + f": wall {wall:.2f} s ({last.doc['rows_scanned'] / wall:,.0f} rows/s over the wall time), "
                f"peak RSS {peak_mb([b.command for b in config]):.0f} MB",
                "  JSON (last run): " + ", ".join(f"{k} {last.doc.get(k)}" for k in keys),
                f"  server: {last.server}",
                "  where its time goes (last run; its statements as the server logged them):",
            ]
            logged = sum(t for _, t in last.profile.values())
            for kind, (count, total) in sorted(last.profile.items(), key=lambda kv: -kv[1][1]):
                out.append(f"    {kind:60}{count:7,d} x {total:8.2f} s")
            rest = "client side, round trips, sleeps (duration_s - logged)"
            out.append(f"    {rest:60}{'':10}{float(last.doc['duration_s']) - logged:8.2f} s")

        on = med([r.trigger_on for r in runs])
        off = med([r.trigger_off for r in runs])
        ratio = on / off
        out += [
            "",
            f"dual-write trigger: UPDATE bench SET amount = amount + 1 of {runs[-1].trigger_rows:,} rows: "
            f"{on:.2f} s with the trigger, {off:.2f} s with it disabled: {ratio:.2f}x",
            "",
            "correctness",
            *(f"  {b.check}" for r in runs for b in r.backfills),
            *(f"  writer error: {line}" for r in runs
              for x in [r.alone_trigger, *(b.writers for b in r.backfills)] if x
              for line in x.error_lines[:5]),
            "",
            "WAL of the single UPDATEs (last run): "
            + ", ".join(f"{k} {v / 1e6:,.0f} MB ({v / self.rows:,.0f} bytes/row)"
                        for k, v in runs[-1].wal.items()),
        ]  # fmt: skip
        for i, config in enumerate(configs):
            if config[0].writers is None:
                continue
            ws = [b.writers for b in config if b.writers]
            rps = med([b.doc["rows_per_s"] for b in config])
            p99 = med([_pct(w.latencies_ms, 0.99) for w in ws])
            errors = sum(w.errors for w in ws)
            if i == 0:
                errors += sum(w.errors for w in windows("alone_trigger"))
            out += [
                "",
                f"targets, backfill with {config[0].label}" + ("" if i == 0 else " (a variant)"),
                _verdict("writer errors (trigger on, backfill)" if i == 0 else "writer errors (backfill)",
                         f"{errors}", "0", errors == 0),
                _verdict("writers' p99 during the backfill", f"{p99:.1f} ms", f"<= {WRITER_P99_MS:.0f} ms",
                         p99 <= WRITER_P99_MS),
                _verdict("backfill rows/s", f"{rps:,.0f}", f">= {BACKFILL_ROWS_PER_S:,}",
                         rps >= BACKFILL_ROWS_PER_S),
                _verdict("backfill / one UPDATE (no writers)", f"{rps / quiet_rps:.2f}x",
                         f">= {BACKFILL_VS_UPDATE}x", rps / quiet_rps >= BACKFILL_VS_UPDATE),
                f"  (backfill / one UPDATE with writers on: {rps / busy_rps:.2f}x)",
            ]  # fmt: skip
        out += [
            "",
            _verdict("bulk UPDATE with / without trigger", f"{ratio:.2f}x", f"<= {TRIGGER_RATIO}x",
                     ratio <= TRIGGER_RATIO),
            "",
            "load average: " + "; ".join(self.loads),
        ]  # fmt: skip
        return out


def _verdict(name: str, value: str, target: str, ok: bool) -> str:
    return f"  {name:40}{value:>12}  target {target:12}{'PASS' if ok else 'MISS'}"


def _load(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"{when} {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--writers-clients", type=int, default=2, metavar="N", help="pgbench clients [2]")
    parser.add_argument("--writer-rate", type=int, default=200, metavar="TPS",
                        help="writer transactions per second, all clients together; "
                             "0: unthrottled [200]")  # fmt: skip
    parser.add_argument("--writer-seconds", type=float, default=30, metavar="S",
                        help="length of each writers-alone window [30]")  # fmt: skip
    parser.add_argument("--backfill-option", action="append", metavar="OPT",
                        help="passed to `dbrollback backfill --resume` (repeat; e.g. "
                             "--backfill-option=--max-batch-rows=200000)")  # fmt: skip
    parser.add_argument("--variant", action="append", metavar="OPTS",
                        help="also run the backfill with these options (one string, e.g. "
                             "--variant='--batch-time 50ms'), on a copy of the same expanded table, "
                             "writers running; repeatable")  # fmt: skip
    parser.add_argument("--server-setting", action="append", metavar="NAME=VALUE", default=[],
                        help="start the server with this setting (repeat; e.g. max_wal_size=8GB): "
                             "a production-like configuration instead of the defaults")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server stopped): pgbench and server "
                             "logs, the project")  # fmt: skip
    args = parser.parse_args()

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dbrb-bench-expand-"))
    server = EmbeddedServer(workdir / "pgdata")
    try:
        log(f"starting the embedded server in {workdir}")
        settings = dict(item.split("=", 1) for item in args.server_setting)
        admin_url = server.start(settings).url()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
            header = machine_lines(admin, 0)
        bench = Bench(workdir, server, args)
        bench.create_project()
        bench.create_template()
        for number in range(1, args.runs + 1):
            log(f"run {number}/{args.runs}")
            bench.one_run(number)
            bench.loads.append(_load(f"after run {number}"))
    finally:
        if args.keep:
            log(f"stopping the server; keeping {workdir}")
            with contextlib.suppress(Exception):
                server.stop()
        else:
            log("stopping the server, removing the temporary directory")
            with contextlib.suppress(Exception):
                server.destroy()
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"Expand/contract backfill against one UPDATE, writers running: median of {args.runs} run(s), "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    print("\n".join([line.replace(", --jobs 0", "") for line in header] + bench.lines()))
    print(f"\n(benchmark took {(time.perf_counter() - began) / 60:.1f} min)")


if __name__ == "__main__":
    main()
