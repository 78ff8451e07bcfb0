"""Rollback of a dropped column after the application wrote to the table (issue #5), side by side.

Starts a private embedded PostgreSQL 18 in a temporary directory (default durability settings)
and generates an Alembic project there:

* rev1 creates ``bench(id bigint PRIMARY KEY, name text, amount numeric(12,2), created_at
  timestamptz, note text)`` and fills it with generate_series (--rows, default 5,000,000);
* rev2 drops ``note`` (its downgrade adds it back, empty).

Then, per run (median of --runs):

1. ``dbrollback snapshot create --tables bench`` on its own: the time a snapshot of the table takes
   (the baseline of the target: rollback <= 2x the snapshot);
2. ``dbrollback upgrade`` (rev2: snapshot + drop + post-image fingerprint); the fingerprint's
   CREATE TABLE AS is timed from the server's statement log, its size read from
   ``dbrollback.fingerprints.bytes``;
3. "the app" updates 1% of the rows and inserts 1% new ones;
4. baselines on a copy of that database (CREATE DATABASE … TEMPLATE, so they leave the table
   alone): the floor of the merge as plain SQL in one psql transaction (the downgrade's ADD
   COLUMN, a server-side COPY of (id, note) into a temp table, ANALYZE, one UPDATE … FROM by
   merge join, as dbrollback plans it), and
   ``pg_restore`` of a ``pg_dump -Fc -t bench`` taken before the upgrade into an empty database
   (what a whole-table restore costs; it would lose the 1% writes);
5. ``dbrollback rollback --yes --json``, then a correctness check: every note is back, the app's
   updated values and inserted rows are kept.

Every command is its own subprocess (dbrollback as ``python -m dbrollback``); wall time and peak
RSS (ru_maxrss from wait4 of exactly that process) are recorded. The server logs statements of at
least --log-min-duration ms; the slow statements of the first upgrade and rollback are listed
(where the time goes). The load average is printed: other work on the machine skews the figures.

    python benchmarks/rollback_merge.py [--rows 5000000] [--runs 3] [--log-min-duration 200]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.sql import Composed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot_restore_verify import _DURATION, MB, Run, log, machine_lines, median, peak_mb, run

from dbrollback.embedded import EmbeddedServer, binary

TABLE = "bench"
T = sql.Identifier(TABLE)
ROLLBACK_TIME_RATIO = 2.0  # rollback / snapshot
PEAK_RSS_MB = 200
APP_SHARE = 100  # the app updates one row in APP_SHARE and inserts as many new rows


def _note(i: str) -> str:
    """The pre-image's note of row `i`: recomputable, so the check needs no copy of it."""
    return f"left(md5(({i} * 31)::text) || md5(({i} * 17)::text), 30)"


_REV1 = '''\
"""bench table"""
import sqlalchemy as sa
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
               {note}
        FROM generate_series(1, {rows}::bigint) AS i
    """)


def downgrade():
    op.drop_table("bench")
'''
_REV2 = '''\
"""drop bench.note"""
import sqlalchemy as sa
from alembic import op

revision = "rev2"
down_revision = "rev1"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_column("bench", "note")


def downgrade():
    op.add_column("bench", sa.Column("note", sa.Text))
'''


class Bench:
    def __init__(self, workdir: Path, server: EmbeddedServer, rows: int, runs: int, server_log: Path) -> None:
        self.workdir, self.server, self.rows, self.runs, self.server_log = (
            workdir,
            server,
            rows,
            runs,
            server_log,
        )
        self.url = server.status().url("bench")
        self.admin_url = server.status().url("postgres")
        self.store = workdir / "store"
        self.dump = workdir / "bench.fc"
        self.notes = workdir / "pgdata" / "bench_notes.copy"  # the server may write only there
        self.project = workdir / "project"
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.results: dict[str, list[Run]] = {}
        self.fingerprint: list[tuple[float, int, int]] = []  # seconds, bytes, rows
        self.reports: list[dict[str, Any]] = []
        self.checks: list[str] = []
        self.batched_checks: list[str] = []
        self.profiles: dict[str, list[str]] = {}
        self.loads: list[str] = [_load("start")]

    # -- helpers ------------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.conn.execute(sql.SQL(query).format(t=T), params)
        return cur.fetchone() if cur.description else None

    def admin(self, query: Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(query)

    def timed(self, label: str, cmd: Sequence[str | Path], expect: int | None = 0) -> Run:
        self.sql("CHECKPOINT")  # every timed command starts with no dirty buffers of the one before
        position = self.server_log.stat().st_size
        log(f"{label} …")
        result = run(cmd, self.workdir, expect)
        log(f"  {result.seconds:.2f} s, peak RSS {result.rss_kb * 1024 / MB:.0f} MB")
        self.results.setdefault(label, []).append(result)
        if label.startswith("dbrollback") and label not in self.profiles:
            self.profiles[label] = self.slow_statements(position)
        return result

    def slow_statements(self, position: int, match: str | None = None) -> list[str]:
        found = []
        with self.server_log.open(errors="replace") as fh:
            fh.seek(position)
            for line in fh:
                hit = _DURATION.search(line)
                if hit and (match is None or match in hit.group(2)):
                    found.append(f"    {float(hit.group(1)) / 1000:7.2f} s  {hit.group(2).strip()[:100]}")
        return found

    def dbrollback(self, label: str, *args: str, url: str | None = None) -> Run:
        return self.timed(
            label,
            [
                sys.executable,
                "-m",
                "dbrollback",
                *args,
                "--database-url",
                url or self.url,
                "--store",
                self.store.as_uri(),
                "-c",
                self.project / "alembic.ini",
            ],
        )

    # -- setup --------------------------------------------------------------------------------
    def create_project(self) -> None:
        from alembic import command
        from alembic.config import Config

        with contextlib.redirect_stdout(sys.stderr):  # alembic init's messages: not part of the figures
            command.init(Config(str(self.project / "alembic.ini")), str(self.project / "migrations"))
        versions = self.project / "migrations" / "versions"
        (versions / "rev1.py").write_text(_REV1.format(note=_note("i"), rows=self.rows))
        (versions / "rev2.py").write_text(_REV2)

    def create_table(self) -> None:
        log(f"rev1: generating {self.rows:,} rows")
        start = time.perf_counter()
        run(
            [
                sys.executable,
                "-m",
                "dbrollback",
                "upgrade",
                "rev1",
                "--json",
                "--database-url",
                self.url,
                "--store",
                self.store.as_uri(),
                "-c",
                self.project / "alembic.ini",
            ],
            self.workdir,
        )
        self.sql("VACUUM ANALYZE {t}")
        size = self.sql("SELECT pg_total_relation_size(%s::regclass)", [TABLE])[0]
        self.header = (
            f"table bench: {self.rows:,} rows, {size:,} bytes ({size / self.rows:.0f} bytes/row "
            f"with its primary key), generated in {time.perf_counter() - start:.0f} s"
        )
        # The pre-image outside dbrollback, for the baselines: a pg_dump of the table, and (id, note)
        # as a server-side COPY file for the floor.
        run([binary("pg_dump"), "-Fc", "-t", TABLE, "-f", self.dump, "-d", self.url], self.workdir)
        self.sql(f"COPY (SELECT id, note FROM {{t}}) TO '{self.notes}'")

    # -- one run ------------------------------------------------------------------------------
    def one_run(self, number: int) -> None:
        self.sql("VACUUM ANALYZE {t}")
        snapshot = self.dbrollback(
            "dbrollback snapshot create (baseline)", "snapshot", "create", "--tables", TABLE, "--json"
        )
        shutil.rmtree(self.store / json.loads(snapshot.out)["id"], ignore_errors=True)  # disk space only

        position = self.server_log.stat().st_size
        self.dbrollback("dbrollback upgrade (snapshot + drop + fingerprint)", "upgrade", "--json")
        fp_log = self.slow_statements(position, "_dbrb_fp_")
        fp_seconds = float(fp_log[0].split()[0]) if fp_log else float("nan")
        size, fp_rows = self.sql(
            "SELECT bytes, row_count FROM dbrollback.fingerprints ORDER BY id DESC LIMIT 1"
        )
        self.fingerprint.append((fp_seconds, int(size), int(fp_rows)))

        self.app_writes(number)
        self.floor()
        self.whole_table_restore()
        self.batched()
        result = self.dbrollback("dbrollback rollback --yes --json", "rollback", "--yes", "--json")
        self.reports.append(json.loads(result.out))
        self.check(number)
        # Back to the state before the run, except the app's updated values (the next run changes them
        # again): its inserted rows go, so every run starts from --rows rows.
        self.sql(f"DELETE FROM {{t}} WHERE id > {self.rows}")

    def app_writes(self, number: int) -> None:
        log("the app: 1% of rows updated, 1% inserted")
        self.sql(
            f"UPDATE {{t}} SET name = 'app {number} ' || id, amount = amount + {number} "
            f"WHERE id % {APP_SHARE} = 7"
        )
        self.sql(
            "INSERT INTO {t} (id, name, amount, created_at) SELECT i, 'new ' || i, 1, now() "
            f"FROM generate_series({self.rows + 1}, {self.rows + self.rows // APP_SHARE}) AS i"
        )
        self.sql("VACUUM ANALYZE {t}")

    def floor(self) -> None:
        """The merge as plain SQL, in one transaction, on a copy of the database."""
        self.conn.close()
        copy = sql.Identifier("bench_floor")
        self.admin(sql.SQL("CREATE DATABASE {} TEMPLATE bench STRATEGY FILE_COPY").format(copy))
        script = self.workdir / "floor.sql"
        script.write_text(
            textwrap.dedent(f"""\
            BEGIN;
            ALTER TABLE bench ADD COLUMN note text;
            CREATE TEMP TABLE staging (id bigint, note text);
            COPY staging FROM '{self.notes}';
            ANALYZE staging;
            -- As dbrollback does: the default plan, a hash join in batches under work_mem = 4MB,
            -- rewrites pages all over the table once per batch (206 s instead of ~20 s at 5M rows).
            SET LOCAL enable_hashjoin = off;
            SET LOCAL work_mem = '64MB';
            UPDATE bench AS b SET note = s.note FROM staging AS s WHERE s.id = b.id;
            COMMIT;
        """)
        )
        url = self.server.status().url("bench_floor")
        try:
            self.conn = psycopg.connect(url, autocommit=True)
            self.timed(
                "plain SQL: ADD COLUMN + COPY + UPDATE … FROM",
                [binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", script],
            )
            self.conn.close()
        finally:
            self.admin(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(copy))
            self.conn = psycopg.connect(self.url, autocommit=True)

    def batched(self) -> None:
        """`rollback --batched` on a copy of the database: the same merge, values in batches."""
        self.conn.close()
        copy = sql.Identifier("bench_batched")
        self.admin(sql.SQL("CREATE DATABASE {} TEMPLATE bench STRATEGY FILE_COPY").format(copy))
        url = self.server.status().url("bench_batched")
        try:
            self.conn = psycopg.connect(url, autocommit=True)
            result = self.dbrollback(
                "dbrollback rollback --batched --yes --json",
                "rollback",
                "--batched",
                "--yes",
                "--json",
                url=url,
            )
            doc = json.loads(result.out)
            wrong = self.sql(
                f"SELECT count(*) FROM {{t}} WHERE id <= {self.rows} AND note IS DISTINCT FROM {_note('id')}"
            )
            self.batched_checks.append(
                f"verified {doc['verified']}, restored_rows {doc['tables'][0]['restored_rows']:,}, "
                f"notes not equal to the pre-image: {wrong[0]:,}"
            )
            self.conn.close()
        finally:
            self.admin(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(copy))
            self.conn = psycopg.connect(self.url, autocommit=True)

    def whole_table_restore(self) -> None:
        target = sql.Identifier("bench_restore")
        self.admin(sql.SQL("CREATE DATABASE {}").format(target))
        try:
            self.timed(
                "pg_restore of pg_dump -Fc (loses the 1%)",
                [binary("pg_restore"), "-d", self.server.status().url("bench_restore"), self.dump],
            )
        finally:
            self.admin(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(target))

    def check(self, number: int) -> None:
        rows, wrong_notes, app_updated, app_inserted, app_new_notes = self.sql(
            f"""SELECT count(*),
                       count(*) FILTER (WHERE id <= {self.rows} AND note IS DISTINCT FROM
                                        {_note("id")}),
                       count(*) FILTER (WHERE id % {APP_SHARE} = 7 AND id <= {self.rows}
                                        AND name = 'app {number} ' || id),
                       count(*) FILTER (WHERE id > {self.rows} AND name = 'new ' || id),
                       count(*) FILTER (WHERE id > {self.rows} AND note IS NOT NULL)
                FROM {{t}}"""
        )
        share = self.rows // APP_SHARE
        expected_updated = len(range(7, self.rows + 1, APP_SHARE))
        ok = (
            rows == self.rows + share
            and wrong_notes == 0
            and app_updated == expected_updated
            and app_inserted == share
            and app_new_notes == 0
        )
        self.checks.append(
            f"run {number}: {'OK' if ok else 'WRONG'}: {rows:,} rows (expected {self.rows + share:,}); "
            f"notes not equal to the pre-image: {wrong_notes:,}; app's updated rows kept: "
            f"{app_updated:,}/{expected_updated:,}; app's inserted rows kept: {app_inserted:,}/{share:,} "
            f"(with a note: {app_new_notes})"
        )
        if not ok:
            raise RuntimeError(self.checks[-1])

    # -- report -------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        out = [self.header, ""]
        heading = f"  {'':52}{'median s':>9}{'min s':>8}{'max s':>8}{'peak RSS MB':>12}"
        out.append(heading)
        for label, runs in self.results.items():
            out.append(
                f"  {label:52}{median(runs):9.2f}{min(r.seconds for r in runs):8.2f}"
                f"{max(r.seconds for r in runs):8.2f}{peak_mb(runs):12.0f}"
            )
        timed_fp = [f[0] for f in self.fingerprint if f[0] == f[0]]  # NaN: under the log threshold
        fp_s = f"{statistics.median(timed_fp):.2f} s" if timed_fp else "under --log-min-duration"
        fp_bytes, fp_rows = self.fingerprint[-1][1], self.fingerprint[-1][2]
        out += [
            "",
            f"fingerprint during upgrade: CREATE TABLE … AS {fp_s} (median, server log), "
            f"{fp_bytes:,} bytes ({fp_bytes / MB:,.0f} MB, {fp_bytes / max(fp_rows, 1):.0f} bytes/row) "
            f"for {fp_rows:,} rows",
        ]
        report = self.reports[-1]
        table = report["tables"][0] if report["tables"] else {}
        out.append(
            "rollback report (last run): "
            + ", ".join(
                f"{k} {table.get(k)}"
                for k in (
                    "restored_rows",
                    "reinserted_rows",
                    "kept_rows",
                    "conflicts",
                    "lost_writes",
                    "verified",
                )
            )
            + f", schema_matches {report['schema_matches']}, verified {report['verified']}, "
            f"duration_s {report['duration_s']}"
        )
        out += ["", "correctness", *(f"  {c}" for c in self.checks)]
        out += [f"  --batched, run {i}: {c}" for i, c in enumerate(self.batched_checks, 1)]
        ours = self.results["dbrollback rollback --yes --json"]
        snap = self.results["dbrollback snapshot create (baseline)"]
        floor = self.results["plain SQL: ADD COLUMN + COPY + UPDATE … FROM"]
        restore = self.results["pg_restore of pg_dump -Fc (loses the 1%)"]
        out += [
            "",
            f"rollback / snapshot create: {median(ours) / median(snap):.2f}x; rollback / plain SQL "
            f"floor: {median(ours) / median(floor):.2f}x; rollback / pg_restore: "
            f"{median(ours) / median(restore):.2f}x",
            "",
            "targets",
            _verdict(
                "rollback time / snapshot time",
                f"{median(ours) / median(snap):.2f}x",
                f"<= {ROLLBACK_TIME_RATIO}x",
                median(ours) / median(snap) <= ROLLBACK_TIME_RATIO,
            ),
            _verdict(
                "peak RSS rollback",
                f"{peak_mb(ours):.0f} MB",
                f"<= {PEAK_RSS_MB} MB",
                peak_mb(ours) <= PEAK_RSS_MB,
            ),
        ]
        for label, statements in self.profiles.items():
            out += ["", f"server log of the first run of: {label} (statements >= the threshold)", *statements]
        out += ["", "load average: " + "; ".join(self.loads)]
        return out


def _verdict(name: str, value: str, target: str, ok: bool) -> str:
    return f"  {name:34}{value:>10}  target {target:10}{'PASS' if ok else 'MISS'}"


def _load(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"{when} {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--log-min-duration",
        type=int,
        default=200,
        metavar="MS",
        help="the server logs statements taking at least MS ms [200]",
    )
    args = parser.parse_args()

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dbrb-bench-rollback-"))
    server = EmbeddedServer(workdir / "pgdata")
    try:
        log(f"starting the embedded server in {workdir}")
        admin_url = server.start({"log_min_duration_statement": str(args.log_min_duration)}).url()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        bench = Bench(workdir, server, args.rows, args.runs, workdir / "pgdata" / "log")
        header = machine_lines(bench.conn, 0)
        bench.create_project()
        bench.create_table()
        for number in range(1, args.runs + 1):
            log(f"run {number}/{args.runs}")
            bench.one_run(number)
            bench.loads.append(_load(f"after run {number}"))
        bench.conn.close()
    finally:
        log("stopping the server, removing the temporary directory")
        with contextlib.suppress(Exception):
            server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"Rollback of a dropped column after 1% updates and 1% inserts: median of {args.runs} run(s), "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    print("\n".join([line.replace(", --jobs 0", "") for line in header] + bench.lines()))
    print(f"\n(benchmark took {(time.perf_counter() - began) / 60:.1f} min)")


if __name__ == "__main__":
    main()
