"""Snapshot create, restore and verify against pg_dump / pg_restore, side by side (issue #3).

Starts a private embedded PostgreSQL 18 in a temporary directory (default durability settings:
fsync, synchronous_commit and full_page_writes stay on), generates a table

    bench(id bigint PRIMARY KEY, name text, amount numeric(12,2), created_at timestamptz, note text)

with generate_series (~131 bytes per row with its index: ~650 MB at 5,000,000 rows), and times, in
one run, median of --runs runs each, with the order alternating between runs:

* `dbrollback snapshot create --tables bench` against `pg_dump -Fc -t bench` (gzip) and against
  `pg_dump -Fd -Z0` and `-Fd -Z0 -j N` (just moving the bytes): time and output size (the
  embedded server's pg_dump is built without zstd and lz4, so -Fc -Z zstd cannot be compared);
* restore of the dropped table: `dbrollback restore` (create, load, add primary key) against
  `pg_restore` of the -Fc dump (table, data and primary key);
* restore of the table after every row changed: `dbrollback restore` (staging table + in-place
  merge) against `pg_restore --clean --if-exists` (drop and recreate);
* `dbrollback verify` of the unchanged table (rows/s) and with 5 changed rows (bisection).

Every command runs as its own subprocess (dbrollback as `python -m dbrollback`, as a user runs
it, interpreter start-up included); its wall time and its peak memory (ru_maxrss from wait4 of
exactly that process) are recorded, and the WAL the server wrote meanwhile. A few one-off
diagnostics (server-side COPY, zstd against zlib on the same COPY text, the checksum query, sha256,
loading a snapshot file, the primary-key build) show where the time goes; with --log-min-duration,
so does the server's log of slow statements during the first run of each dbrollback command.

    python benchmarks/snapshot_restore_verify.py [--rows 5000000] [--runs 3] [--jobs N]
                                                 [--log-min-duration MS]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from dbrollback.embedded import EmbeddedServer, binary
from dbrollback.pgtools import tool_connection
from dbrollback.snapshot.capture import ZSTD_LEVEL
from dbrollback.snapshot.checksum import checksum_query, pin_text_settings, table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.local import LocalStore

TABLE = "bench"
T = sql.Identifier(TABLE)
COLUMNS = ["id", "name", "amount", "created_at", "note"]
CHANGED_ROWS = 5
MB = 1_000_000

# Targets from the issue.
SNAPSHOT_TIME_RATIO = 0.5  # snapshot create / pg_dump -Fc
RESTORE_TIME_RATIO = 0.8  # restore / pg_restore
VERIFY_ROWS_PER_S = 2_000_000
PEAK_RSS_MB = 200

# Text lengths tuned so that a row with its primary-key entry takes ~131 bytes on disk.
_CREATE = "CREATE TABLE {t} (id bigint, name text, amount numeric(12,2), created_at timestamptz, note text)"
_FILL = """
INSERT INTO {t}
SELECT i,
       left('customer ' || md5(i::text), 16),
       ((i * 7919) %% 10000000) / 100.0,
       timestamptz '2024-01-01 00:00:00+00' + (i %% 31536000)::int * interval '1 second',
       left(md5((i * 31)::text) || md5((i * 17)::text), 30)
FROM generate_series(1, %s::bigint) AS i
"""
_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "data_checksums", "wal_level",
             "shared_buffers", "max_wal_size", "checkpoint_timeout", "maintenance_work_mem", "work_mem",
             "temp_buffers", "max_parallel_workers_per_gather",
             "max_parallel_maintenance_workers")  # fmt: skip
_DURATION = re.compile(r"duration: ([\d.]+) ms\s+(?:statement|execute [^:]*): (.*)")


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    seconds: float
    rss_kb: int
    code: int
    out: str
    err: str
    wal_bytes: int = 0


def _child_env() -> dict[str, str]:
    # No stray DBROLLBACK_* setting may change what the commands do.
    return {k: v for k, v in os.environ.items() if not k.startswith("DBROLLBACK_")}


def run(cmd: Sequence[str | Path], cwd: Path, expect: int | None = 0) -> Run:
    """Run one command; wall time and the peak RSS of exactly that process (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                cwd=cwd, env=_child_env())  # fmt: skip
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM: take the child down with us
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Run(seconds, usage.ru_maxrss, proc.returncode, out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"))  # fmt: skip
    if expect is not None and result.code != expect:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {result.code} (expected {expect}):\n{result.err}{result.out}"
        )
    return result


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def median(runs: list[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def peak_mb(runs: list[Run]) -> float:
    return max(r.rss_kb for r in runs) * 1024 / MB  # ru_maxrss is in KiB on Linux


class Bench:
    def __init__(
        self, workdir: Path, url: str, rows: int, runs: int, jobs: int, server_log: Path | None
    ) -> None:
        self.workdir, self.url, self.rows, self.runs, self.jobs = workdir, url, rows, runs, jobs
        self.server_log = server_log  # set: list the slow statements of each dbrollback command
        self.profiles: dict[str, list[str]] = {}
        self.current = ""
        self.store = workdir / "store"
        self.dump = workdir / "dump.fc"
        self.conn = psycopg.connect(url, autocommit=True)
        self.lines: list[str] = []
        self.verdicts: list[tuple[str, str, str, bool]] = []
        self.snapshot_id = ""
        self.baseline: tuple[int, Any] = (0, None)

    # -- helpers ------------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.conn.execute(sql.SQL(query).format(t=T), params)
        return cur.fetchone() if cur.description else None

    def timed(self, cmd: Sequence[str | Path], expect: int | None = 0) -> Run:
        """run(), plus the WAL the server wrote meanwhile (and its slow statements when profiling)."""
        lsn = self.sql("SELECT pg_current_wal_insert_lsn()::text")[0]
        position = self.server_log.stat().st_size if self.server_log else 0
        result = run(cmd, self.workdir, expect)
        result.wal_bytes = int(self.sql("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)",
                                        [lsn])[0])  # fmt: skip
        if self.server_log and self.current.startswith("dbrollback") and self.current not in self.profiles:
            self.profiles[self.current] = self.slow_statements(position)
        return result

    def slow_statements(self, position: int) -> list[str]:
        assert self.server_log is not None
        found, checkpoints = [], 0
        with self.server_log.open(errors="replace") as fh:
            fh.seek(position)
            for line in fh:
                checkpoints += "checkpoint starting: wal" in line
                match = _DURATION.search(line)
                if match:
                    found.append(f"    {float(match.group(1)) / 1000:7.2f} s  {match.group(2).strip()[:96]}")
        return [*found, f"    ({checkpoints} checkpoint(s) forced by WAL volume meanwhile)"]

    def dbrollback(self, *args: str, expect: int | None = 0) -> Run:
        return self.timed([sys.executable, "-m", "dbrollback", *args, "--json", "--database-url", self.url,
                           "--store", self.store.as_uri()], expect)  # fmt: skip

    def alternate(
        self, steps: dict[str, Callable[[], Run]], prepare: Callable[[], None], title: str
    ) -> dict[str, list[Run]]:
        """Each step `runs` times; the order flips every run: neither side always meets the warmer cache."""
        results: dict[str, list[Run]] = {label: [] for label in steps}
        for i in range(self.runs):
            for label in list(steps)[:: 1 if i % 2 == 0 else -1]:
                prepare()
                log(f"{title}, run {i + 1}/{self.runs}: {label}")
                self.current = label
                result = steps[label]()
                log(f"  {result.seconds:.2f} s, peak RSS {result.rss_kb * 1024 / MB:.0f} MB, "
                    f"WAL {result.wal_bytes / MB:,.0f} MB")  # fmt: skip
                results[label].append(result)
        return results

    def settle(self) -> None:
        """Same starting point for every timed run: statistics fresh, dirty buffers written."""
        self.sql("VACUUM ANALYZE {t}")
        self.sql("CHECKPOINT")

    def check_restored(self, who: str) -> None:
        """Both sides must end with the same table: all rows, same contents, a primary key."""
        count, total = self.sql("SELECT count(*), sum(amount) FROM {t}")
        pk = self.sql("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisprimary",
                      [TABLE])[0]  # fmt: skip
        if (count, total) != self.baseline or pk != 1:
            raise RuntimeError(f"after {who}: {count} rows, sum {total}, {pk} primary key(s); "
                               f"expected {self.baseline} and 1")  # fmt: skip

    def section(self, title: str, results: dict[str, list[Run]], sizes: dict[str, int] | None = None) -> None:
        heading = f"  {'':44}{'median s':>9}{'min s':>9}{'max s':>9}" + (f"{'bytes':>13}" if sizes else "")
        self.lines += ["", title, heading + f"{'peak RSS MB':>12}{'WAL MB':>8}"]
        for label, runs in results.items():
            size = f"{sizes[label]:>13,}" if sizes else ""
            wal = statistics.median(r.wal_bytes for r in runs) / MB
            self.lines.append(
                f"  {label:44}{median(runs):9.2f}{min(r.seconds for r in runs):9.2f}"
                f"{max(r.seconds for r in runs):9.2f}{size}{peak_mb(runs):12.0f}{wal:8,.0f}"
            )

    def verdict(self, name: str, value: str, target: str, ok: bool) -> None:
        self.verdicts.append((name, value, target, ok))

    # -- setup --------------------------------------------------------------------------------
    def create_table(self) -> None:
        log(f"generating {self.rows:,} rows")
        start = time.perf_counter()
        self.sql(_CREATE)
        self.sql(_FILL, [self.rows])
        self.sql("ALTER TABLE {t} ADD PRIMARY KEY (id)")
        self.settle()
        count, total = self.sql("SELECT count(*), sum(amount) FROM {t}")
        self.baseline = (count, total)
        total, heap, index = self.sql(
            "SELECT pg_total_relation_size(%s::regclass), pg_table_size(%s::regclass), "
            "pg_indexes_size(%s::regclass)", [TABLE] * 3
        )  # fmt: skip
        self.lines.append(
            f"table bench: {self.rows:,} rows, pg_total_relation_size {total:,} bytes "
            f"({total / MB:,.0f} MB, {total / self.rows:.0f} bytes/row; heap {heap / MB:,.0f} MB, "
            f"primary key {index / MB:,.0f} MB); generated in {time.perf_counter() - start:.0f} s"
        )

    # -- snapshot create vs pg_dump -----------------------------------------------------------
    def snapshot_vs_dump(self) -> None:
        pg_dump = binary("pg_dump")
        outputs = {
            "pg_dump -Fc": (self.dump, ["-Fc"]),
            "pg_dump -Fd -Z0": (self.workdir / "dump.dir", ["-Fd", "-Z0"]),
            f"pg_dump -Fd -Z0 -j {self.jobs}": (self.workdir / "dump.jdir", ["-Fd", "-Z0", f"-j{self.jobs}"]),
        }
        sizes: dict[str, int] = {}
        snapshots: list[str] = []

        def snapshot() -> Run:
            result = self.dbrollback("snapshot", "create", "--tables", TABLE, "--jobs", str(self.jobs))
            snapshot_id = json.loads(result.out)["id"]
            sizes[label_snapshot] = tree_bytes(self.store / snapshot_id)  # data files + manifest
            snapshots.append(snapshot_id)
            if len(snapshots) > 1:  # keep one snapshot for restore and verify, not the disk space
                remove(self.store / snapshot_id)
            return result

        def dump(label: str) -> Callable[[], Run]:
            path, options = outputs[label]

            def go() -> Run:
                remove(path)
                result = self.timed([pg_dump, *options, "-t", TABLE, "-f", path, "-d", self.url])
                sizes[label] = tree_bytes(path)
                if path != self.dump:
                    remove(path)
                return result

            return go

        label_snapshot = f"dbrollback snapshot create --jobs {self.jobs}"
        steps = {label_snapshot: snapshot, **{label: dump(label) for label in outputs}}
        results = self.alternate(steps, lambda: self.sql("CHECKPOINT"), "snapshot")
        self.snapshot_id = snapshots[0]
        self.section("snapshot create vs pg_dump (bytes: snapshot directory / dump file or directory)",
                     results, sizes)  # fmt: skip
        ratio = median(results[label_snapshot]) / median(results["pg_dump -Fc"])
        size_ratio = sizes[label_snapshot] / sizes["pg_dump -Fc"]
        moving = median(results[label_snapshot]) / median(results["pg_dump -Fd -Z0"])
        self.lines.append(f"  snapshot / pg_dump -Fc: time {ratio:.2f}x, size {size_ratio:.2f}x; "
                          f"snapshot / pg_dump -Fd -Z0: time {moving:.2f}x")  # fmt: skip
        self.verdict("snapshot create time / pg_dump -Fc", f"{ratio:.2f}x", f"<= {SNAPSHOT_TIME_RATIO}x",
                     ratio <= SNAPSHOT_TIME_RATIO)  # fmt: skip
        self.verdict("snapshot size / pg_dump -Fc size", f"{size_ratio:.2f}x", "<= 1.00x", size_ratio <= 1.0)
        self.verdict("peak RSS snapshot create", f"{peak_mb(results[label_snapshot]):.0f} MB",
                     f"<= {PEAK_RSS_MB} MB", peak_mb(results[label_snapshot]) <= PEAK_RSS_MB)  # fmt: skip
        toc = run([binary("pg_restore"), "-l", self.dump], self.workdir).out
        entries = [line.split(" ", 3)[-1] for line in toc.splitlines() if line and not line.startswith(";")]
        self.lines.append(f"  pg_dump -Fc TOC: {'; '.join(entries)}")

    # -- restore ------------------------------------------------------------------------------
    def restore_dropped(self) -> None:
        def prepare() -> None:
            self.sql("DROP TABLE {t}")
            self.sql("CHECKPOINT")

        def ours() -> Run:
            result = self.dbrollback("restore", "--snapshot", self.snapshot_id, "--tables", TABLE, "--yes")
            action = json.loads(result.out)["results"][0]["action"]
            assert action == "create", action
            self.check_restored("dbrollback restore")
            return result

        def theirs() -> Run:
            # The dump holds only bench (table, data, primary key), so restoring all of it restores
            # exactly that; `pg_restore -t bench` would skip the primary key.
            result = self.timed([binary("pg_restore"), "-d", self.url, self.dump])
            self.check_restored("pg_restore")
            return result

        results = self.alternate({"dbrollback restore (create, load, add PK)": ours,
                                  "pg_restore dump.fc (table, data, PK)": theirs},
                                 prepare, "restore, table dropped")  # fmt: skip
        self.settle()
        self.section("restore, table dropped", results)
        ours_s, theirs_s = (median(r) for r in results.values())
        self.lines.append(f"  dbrollback / pg_restore: {ours_s / theirs_s:.2f}x")
        self.verdict("restore (dropped) time / pg_restore", f"{ours_s / theirs_s:.2f}x",
                     f"<= {RESTORE_TIME_RATIO}x", ours_s / theirs_s <= RESTORE_TIME_RATIO)  # fmt: skip
        rss = peak_mb(results["dbrollback restore (create, load, add PK)"])
        self.verdict(
            "peak RSS restore (dropped)", f"{rss:.0f} MB", f"<= {PEAK_RSS_MB} MB", rss <= PEAK_RSS_MB
        )

    def restore_changed(self) -> None:
        def prepare() -> None:
            # Rebuilt compact first, so both tools start from the same physical table.
            self.sql("VACUUM FULL {t}")
            self.sql("UPDATE {t} SET amount = amount + 1")
            self.settle()

        def ours() -> Run:
            result = self.dbrollback("restore", "--snapshot", self.snapshot_id, "--tables", TABLE, "--yes")
            done = json.loads(result.out)["results"][0]
            assert (done["action"], done["updated"]) == ("replace", self.rows), done
            self.check_restored("dbrollback restore")
            return result

        def theirs() -> Run:
            result = self.timed([binary("pg_restore"), "--clean", "--if-exists", "-d", self.url, self.dump])
            self.check_restored("pg_restore --clean")
            return result

        results = self.alternate({"dbrollback restore (staging + merge)": ours,
                                  "pg_restore --clean --if-exists dump.fc": theirs},
                                 prepare, "restore, every row changed")  # fmt: skip
        self.sql("VACUUM FULL {t}")
        self.settle()
        self.section(f"restore, table exists and all {self.rows:,} rows changed (no target)", results)
        ours_s, theirs_s = (median(r) for r in results.values())
        self.lines.append(f"  dbrollback / pg_restore --clean: {ours_s / theirs_s:.2f}x")
        rss = peak_mb(results["dbrollback restore (staging + merge)"])
        self.verdict("peak RSS restore (all rows changed)", f"{rss:.0f} MB", f"<= {PEAK_RSS_MB} MB",
                     rss <= PEAK_RSS_MB)  # fmt: skip

    # -- verify -------------------------------------------------------------------------------
    def verify(self) -> None:
        changed = [self.rows * (n + 1) // (CHANGED_ROWS + 1) for n in range(CHANGED_ROWS)]

        def unchanged() -> Run:
            result = self.dbrollback("verify", "--snapshot", self.snapshot_id, "--tables", TABLE)
            assert json.loads(result.out)["ok"] is True
            return result

        def differing() -> Run:
            result = self.dbrollback("verify", "--snapshot", self.snapshot_id, "--tables", TABLE, expect=1)
            found = json.loads(result.out)["tables"][0]["differences"]
            keys = sorted(d["key"]["id"] for d in found)
            assert keys == changed and all(d["columns"] == ["amount"] for d in found), found
            return result

        results = self.alternate({"dbrollback verify, unchanged": unchanged}, self.settle, "verify")
        self.sql("UPDATE {t} SET amount = amount + 1 WHERE id = ANY(%s)", [changed])
        try:
            results.update(self.alternate({f"dbrollback verify, {CHANGED_ROWS} rows changed": differing},
                                          self.settle, "verify"))  # fmt: skip
        finally:
            self.sql("UPDATE {t} SET amount = amount - 1 WHERE id = ANY(%s)", [changed])
        self.settle()
        self.section("verify", results)
        fast = median(results["dbrollback verify, unchanged"])
        slow = median(results[f"dbrollback verify, {CHANGED_ROWS} rows changed"])
        self.lines.append(f"  unchanged: {self.rows / fast:,.0f} rows/s; {CHANGED_ROWS} rows changed: "
                          f"{self.rows / slow:,.0f} rows/s")  # fmt: skip
        self.verdict("verify rows/s (unchanged table)", f"{self.rows / fast:,.0f}",
                     f">= {VERIFY_ROWS_PER_S:,}", self.rows / fast >= VERIFY_ROWS_PER_S)  # fmt: skip
        rss = max(peak_mb(r) for r in results.values())
        self.verdict(
            "peak RSS verify (both cases)", f"{rss:.0f} MB", f"<= {PEAK_RSS_MB} MB", rss <= PEAK_RSS_MB
        )

    # -- where the time goes ------------------------------------------------------------------
    def diagnostics(self) -> None:
        """One-off measurements of the pieces the commands are made of (run in this process)."""
        log("diagnostics")
        found: list[tuple[str, float, str]] = []
        startup = statistics.median(
            run([sys.executable, "-m", "dbrollback", "--help"], self.workdir).seconds for _ in range(3)
        )
        found.append(("python -m dbrollback --help (interpreter + imports)", startup, ""))

        start, size = time.perf_counter(), 0
        for path in sorted((self.store / self.snapshot_id).iterdir()):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    size += len(block)
        seconds = time.perf_counter() - start
        found.append(("sha256 of the snapshot files, once", seconds, f"{size / MB / seconds:,.0f} MB/s"))

        self.sql("CHECKPOINT")
        start = time.perf_counter()
        self.sql("SELECT count(*) FROM {t}")
        seconds = time.perf_counter() - start
        found.append(("SELECT count(*) (a plain scan)", seconds, f"{self.rows / seconds:,.0f} rows/s"))

        with self.conn.transaction():
            pin_text_settings(self.conn)
            plan = self.conn.execute(
                sql.SQL("EXPLAIN (FORMAT JSON) {}").format(checksum_query(self.conn, "public", TABLE))
            ).fetchone()
        workers = _workers_planned(plan[0] if plan else [])
        start = time.perf_counter()
        table_checksum(self.conn, "public", TABLE)
        seconds = time.perf_counter() - start
        rate = f"{self.rows / seconds:,.0f} rows/s, {workers} parallel worker(s) planned"
        found.append(("checksum query alone (count + sum of row hashes)", seconds, rate))
        with self.conn.transaction():
            self.conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            start = time.perf_counter()
            table_checksum(self.conn, "public", TABLE)
            seconds = time.perf_counter() - start
        found.append(("checksum query, no parallel workers", seconds, f"{self.rows / seconds:,.0f} rows/s"))

        select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), T)
        start = time.perf_counter()
        self.conn.execute(sql.SQL("COPY ({}) TO '/dev/null'").format(select))
        seconds = time.perf_counter() - start
        found.append(
            ("COPY text, server side only (to /dev/null)", seconds, f"{self.rows / seconds:,.0f} rows/s")
        )
        found += self._psql_compress(sql.SQL("COPY ({}) TO STDOUT").format(select).as_string(self.conn))

        store = LocalStore(self.store)
        manifest = store.load(self.snapshot_id).tables[0]
        start = time.perf_counter()
        with self.conn.transaction(force_rollback=True):
            self.sql("CREATE TABLE bench_load (LIKE {t})")
            load_table_copy(self.conn, store, self.snapshot_id, manifest, "public", "bench_load", freeze=True)
        seconds = time.perf_counter() - start
        found.append(("load_table_copy into a new table (COPY FREEZE)", seconds,
                      f"{self.rows / seconds:,.0f} rows/s, zstd decompress + sha256 included"))  # fmt: skip

        start = time.perf_counter()
        self.sql("REINDEX TABLE {t}")
        seconds = time.perf_counter() - start
        found.append(("REINDEX TABLE bench (primary-key build)", seconds, ""))
        self.settle()

        self.lines += ["", "where the time goes (one run each, in the benchmark process)"]
        self.lines += [f"  {label:54}{seconds:8.2f} s  {note}" for label, seconds, note in found]
        for label, statements in self.profiles.items():
            self.lines += ["", f"server log of the first run of: {label} (statements >= the threshold)"]
            self.lines += statements

    def _psql_compress(self, copy: str) -> list[tuple[str, float, str]]:
        """One psql streams the whole table as COPY text (as each capture worker does); each 1 MiB
        block is compressed with zstd at dbrollback's level and, for comparison, with zlib level 6
        (pg_dump -Fc's default), timing each compressor on its own."""
        conninfo, env = tool_connection(self.url)
        zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        gzip = zlib.compressobj(6)
        raw = zstd_out = gzip_out = 0
        zstd_s = gzip_s = 0.0
        start = time.perf_counter()
        proc = subprocess.Popen([str(binary("psql")), "-X", "-q", "-d", conninfo, "-c", copy],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        assert proc.stdout is not None
        try:
            while block := proc.stdout.read(1 << 20):
                raw += len(block)
                t0 = time.perf_counter()
                zstd_out += len(zstd.compress(block))
                t1 = time.perf_counter()
                gzip_out += len(gzip.compress(block))
                gzip_s += time.perf_counter() - t1
                zstd_s += t1 - t0
        finally:
            if proc.wait() != 0:
                raise RuntimeError("psql COPY failed")
        zstd_out += len(zstd.flush())
        gzip_out += len(gzip.flush())
        total = time.perf_counter() - start
        return [
            ("psql COPY text -> pipe -> this process, both compressors", total, f"{raw:,} bytes COPY text"),
            (f"  zstd level {ZSTD_LEVEL} alone (1 MiB blocks, one thread)", zstd_s,
             f"{raw / MB / zstd_s:,.0f} MB/s in -> {zstd_out:,} bytes"),
            ("  zlib level 6 alone (pg_dump -Fc's compression)", gzip_s,
             f"{raw / MB / gzip_s:,.0f} MB/s in -> {gzip_out:,} bytes"),
        ]  # fmt: skip


def _workers_planned(plan: Any) -> int:
    """Largest "Workers Planned" anywhere in an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(plan, dict):
        own = int(plan.get("Workers Planned", 0))
        return max([own, *(_workers_planned(v) for v in plan.values())])
    if isinstance(plan, list):
        return max([0, *(_workers_planned(v) for v in plan)])
    return 0


def _code_version() -> str:
    """The commit of the dbrollback checkout measured, and whether its library code had local changes."""
    import dbrollback

    repo = Path(dbrollback.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "dbrollback"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return dbrollback.__version__
    return f"{dbrollback.__version__} at {commit}" + (" + local changes" if dirty else "")


def machine_lines(conn: psycopg.Connection, jobs: int) -> list[str]:
    model, ram = platform.processor() or "?", "?"
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))  # fmt: skip
    with contextlib.suppress(OSError, StopIteration, ValueError):
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))  # fmt: skip
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    version = conn.execute("SHOW server_version").fetchone()
    settings = conn.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name", [list(_SETTINGS)]
    ).fetchall()
    shown = ", ".join(f"{n}={s}{'' if not u else ' x ' + u}" for n, s, u in settings)
    return [
        f"machine: {os.cpu_count()} CPUs ({model}), {ram} RAM, {platform.system()} {platform.release()}",
        f"client: Python {platform.python_version()}, zstandard {zstandard.__version__}, "
        f"psycopg {psycopg.__version__}",
        f"server: embedded PostgreSQL {version[0] if version else '?'}, Unix socket, default settings "
        f"(durability on): {shown}",
        f"dbrollback {_code_version()}, --jobs {jobs}; every command is a separate process; wall-clock times",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="dbrollback snapshot --jobs and pg_dump -j [cores]")  # fmt: skip
    parser.add_argument("--log-min-duration", type=int, metavar="MS",
                        help="log statements taking at least MS ms and list those of the first run of "
                             "each dbrollback command (costs a little time; off by default)")  # fmt: skip
    args = parser.parse_args()

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below, like Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dbrb-bench-"))
    server = EmbeddedServer(workdir / "pgdata")
    try:
        log(f"starting the embedded server in {workdir}")
        options = {} if args.log_min_duration is None else {
            "log_min_duration_statement": str(args.log_min_duration), "log_checkpoints": "on"}  # fmt: skip
        admin_url = server.start(options).url()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        server_log = None if args.log_min_duration is None else workdir / "pgdata" / "log"
        bench = Bench(workdir, server.status().url("bench"), args.rows, args.runs, args.jobs, server_log)
        with bench.conn:
            header = machine_lines(bench.conn, args.jobs)
            bench.create_table()
            bench.snapshot_vs_dump()
            bench.restore_dropped()
            bench.restore_changed()
            bench.verify()
            bench.diagnostics()
    finally:
        log("stopping the server, removing the temporary directory")
        with contextlib.suppress(Exception):
            server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"Snapshots, restore and verify: median of {args.runs} run(s), "
          f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")  # fmt: skip
    print("\n".join(header + bench.lines))
    print("\ntargets")
    for name, value, target, ok in bench.verdicts:
        print(f"  {name:42}{value:>14}  target {target:14}{'PASS' if ok else 'MISS'}")
    print(f"\n(benchmark took {(time.perf_counter() - began) / 60:.1f} min)")


if __name__ == "__main__":
    main()
