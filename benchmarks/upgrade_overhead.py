"""What dbrollback's journal, lock and per-revision transactions cost over plain Alembic.

Seeds the shop example (N customers) once at its seed revision, then clones that database from a
template for every run, and times `alembic upgrade heads` (alembic.command.upgrade) against
`dbrollback upgrade` (dbrollback.api.upgrade) on identical copies, in one process, in one run.
Prints medians side by side.

    python benchmarks/upgrade_overhead.py [--customers 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from alembic import command
from psycopg import sql
from sqlalchemy.engine import make_url

from dbrollback import api
from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.demo import load_seed_module, shop_project_dir
from dbrollback.embedded import EmbeddedServer
from dbrollback.settings import load_settings


def _db_url(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _clone(admin: psycopg.Connection, template: str, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    ini = shop_project_dir() / "alembic.ini"
    seed = load_seed_module()
    workdir = Path(tempfile.mkdtemp(prefix="dbrb-bench-"))
    server = EmbeddedServer(workdir / "pgdata")
    server_url = server.start().url()
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_template")
            template_url = _db_url(server_url, "bench_template")
            settings = load_settings({"database_url": template_url, "alembic_config": str(ini)}, environ={})
            project = AlembicProject(
                ini,
                make_url(template_url)
                .set(drivername="postgresql+psycopg")
                .render_as_string(hide_password=False),
            )
            command.upgrade(project.config(), seed.SEED_REVISION)
            t0 = time.perf_counter()
            with psycopg.connect(template_url) as conn:
                counts = seed.seed(conn, args.customers)
            seed_seconds = time.perf_counter() - t0
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'bench_template' AND pid <> pg_backend_pid()"
            )

            timings: dict[str, list[float]] = {"alembic upgrade heads": [], "dbrollback upgrade": []}
            for i in range(args.repeat):
                # Alternate who goes first so neither always meets a warmer cache.
                for label in list(timings)[:: 1 if i % 2 == 0 else -1]:
                    name = f"bench_{i}_{'a' if label.startswith('alembic') else 'd'}"
                    _clone(admin, "bench_template", name)
                    url = _db_url(server_url, name)
                    sa_url = (
                        make_url(url)
                        .set(drivername="postgresql+psycopg")
                        .render_as_string(hide_password=False)
                    )
                    start = time.perf_counter()
                    if label.startswith("alembic"):
                        command.upgrade(AlembicProject(ini, sa_url).config(), "heads")
                    else:
                        api.upgrade(settings.model_copy(update={"database_url": url}))
                    timings[label].append(time.perf_counter() - start)
                    admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        server.destroy()

    rows = sum(counts.values())
    print(
        f"shop example: {args.customers:,} customers, {rows:,} rows seeded in {seed_seconds:.2f}s; "
        f"revisions from {seed.SEED_REVISION} to head; median of {args.repeat} runs"
    )
    print(f"{'':28}{'median s':>10}{'min s':>10}{'max s':>10}")
    for label, values in timings.items():
        print(f"{label:28}{statistics.median(values):10.3f}{min(values):10.3f}{max(values):10.3f}")
    a, d = (statistics.median(v) for v in timings.values())
    print(f"dbrollback / alembic: {d / a:.2f}x  (overhead {d - a:+.3f}s per run)")


if __name__ == "__main__":
    main()
