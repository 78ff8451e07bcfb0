"""`dbrollback demo`: the shop example on a fresh embedded server in a temporary directory."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg import sql

from dbrollback import api, snapshot_api
from dbrollback.catalog.journal import RunRecord
from dbrollback.database import Notify
from dbrollback.embedded import EmbeddedServer
from dbrollback.rollback.readiness import Readiness, readiness_for
from dbrollback.rollback.report import RollbackResult
from dbrollback.rollback_api import rollback
from dbrollback.settings import Settings, load_settings
from dbrollback.snapshot_api import RestoreReport, SnapshotSummary, VerifyReport


def shop_project_dir() -> Path:
    """The shop example: shipped in the wheel as dbrollback.examples, or in the source tree."""
    import importlib.resources

    try:
        shipped = Path(str(importlib.resources.files("dbrollback.examples") / "shop"))
        if (shipped / "alembic.ini").is_file():
            return shipped
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[1] / "migrations_examples" / "shop"


def load_seed_module() -> ModuleType:
    path = shop_project_dir() / "seed.py"
    spec = importlib.util.spec_from_file_location("dbrollback_shop_seed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class DemoReport:
    workdir: Path
    kept: bool
    seeded: dict[str, int]
    status: api.StatusReport
    history: list[RunRecord]
    seconds: float
    snapshots: list[SnapshotSummary] = field(default_factory=list)
    recovered: RestoreReport | None = None
    verified: VerifyReport | None = None
    readiness: dict[int, Readiness] = field(default_factory=dict)  # of the runs in `history`
    app_writes: dict[str, int] = field(default_factory=dict)  # what the "app" did after the upgrade
    rollback_dry_run: RollbackResult | None = None
    rollback: RollbackResult | None = None
    history_after_rollback: list[RunRecord] = field(default_factory=list)
    readiness_after_rollback: dict[int, Readiness] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def runs(records: list[RunRecord], readiness: dict[int, Readiness]) -> list[dict[str, Any]]:
            return [
                {**r.to_dict(), "rollback": readiness[r.id].to_dict() if r.id in readiness else None}
                for r in records
            ]

        return {
            "workdir": str(self.workdir),
            "kept": self.kept,
            "seeded_rows": self.seeded,
            "status": self.status.to_dict(),
            "history": runs(self.history, self.readiness),
            "seconds": round(self.seconds, 2),
            "snapshots": [s.to_dict() for s in self.snapshots],
            "recovered": self.recovered.to_dict() if self.recovered else None,
            "verified": self.verified.to_dict() if self.verified else None,
            "app_writes": self.app_writes,
            "rollback_dry_run": self.rollback_dry_run.to_dict() if self.rollback_dry_run else None,
            "rollback": self.rollback.to_dict() if self.rollback else None,
            "history_after_rollback": runs(self.history_after_rollback, self.readiness_after_rollback),
        }


DROPPED_TABLE_REVISION = "0009_drop_newsletter"
# The demo's release ends at the dropped table: the shop's next revision (0010, a rename done as
# expand/contract) is a zero-downtime change with a story of its own (docs/expand-contract.md).
RELEASE_REVISION = DROPPED_TABLE_REVISION
RECOVERED_SCHEMA = "recovered"

# What the application does after the release, in the schema at the head revision: a few customers
# change their email (a column 0004 rewrote), new customers sign up, two products get a new weight
# (a column 0006 narrowed) and two new products appear. Deterministic, so the counts are too.
APP_WRITES: list[tuple[str, str]] = [
    ("customers_updated",
     "UPDATE customers SET email = 'moved.' || id || '@example.com' WHERE id BETWEEN 1 AND 5"),
    ("customers_inserted",
     "INSERT INTO customers (first_name, last_name, email) SELECT 'New', 'Customer ' || g, "
     "'new.customer.' || g || '@example.com' FROM generate_series(1, 3) g"),
    ("products_updated", "UPDATE products SET weight_kg = 2 WHERE id IN (1, 2)"),
    ("products_inserted",
     "INSERT INTO products (sku, name, price, weight_kg) SELECT 'NEW-' || g, 'New Product ' || g, 9.99, 1 "
     "FROM generate_series(1, 2) g"),
]  # fmt: skip


def simulate_app_writes(url: str) -> dict[str, int]:
    """The application keeps writing after the upgrade: statement name -> rows written."""
    written: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, statement in APP_WRITES:
            written[name] = conn.execute(statement).rowcount
    return written


def _roll_back_with_writes(settings: Settings, url: str, demo: DemoReport, notify: Notify) -> None:
    if demo.recovered is not None:
        # The rollback compares the whole schema with the one before the upgrade; the side-by-side
        # copy was never part of the application.
        notify(f"Dropping the side-by-side copy (schema {RECOVERED_SCHEMA}) before the rollback")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(RECOVERED_SCHEMA)))
    notify("The app keeps writing after the release: emails changed, customers signed up, products "
           "re-weighed and added")  # fmt: skip
    demo.app_writes = simulate_app_writes(url)
    notify("`dbrollback rollback --dry-run`: what a rollback of the last run would do (nothing changes)")
    demo.rollback_dry_run = rollback(settings, dry_run=True, notify=notify)
    notify("`dbrollback rollback --yes`: downgrade, merge the destroyed data back, keep the app's writes")
    demo.rollback = rollback(settings, assume_yes=True, notify=notify)
    demo.history_after_rollback = api.history(settings)
    demo.readiness_after_rollback = readiness_for(settings, demo.history_after_rollback)


def run_demo(customers: int = 2000, keep: bool = False, notify: Notify = print) -> DemoReport:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="dbrollback-demo-"))
    server = EmbeddedServer(workdir / "pgdata")
    try:
        notify(f"Starting a fresh embedded PostgreSQL in {workdir}")
        url = server.start().url()
        settings = load_settings(
            {"database_url": url, "alembic_config": str(shop_project_dir() / "alembic.ini"),
             "actor": "demo"},
            cwd=workdir,
            environ={},
        )  # fmt: skip
        seed_module = load_seed_module()
        notify(f"Applying the shop migrations up to {seed_module.SEED_REVISION}")
        api.upgrade(settings, seed_module.SEED_REVISION, notify=notify)
        notify(f"Seeding {customers} customers with orders (deterministic)")
        with psycopg.connect(url) as conn:
            seeded = seed_module.seed(conn, customers)
        notify(f"Applying the migrations up to {RELEASE_REVISION} (data migration, split column, lossy "
               "type change, dropped column and table)")  # fmt: skip
        result = api.upgrade(settings, RELEASE_REVISION, notify=notify)
        report = api.status(settings)
        runs = api.history(settings)
        demo = DemoReport(workdir, keep, seeded, report, runs, time.monotonic() - started,
                          snapshots=snapshot_api.snapshot_list(settings),
                          readiness=readiness_for(settings, runs))  # fmt: skip
        dropped = next((s for s in result.snapshots if s["revision"] == DROPPED_TABLE_REVISION), None)
        if dropped is not None:
            notify(f"Restoring the dropped table newsletter_signups from snapshot {dropped['id']} side "
                   "by side into schema 'recovered', then verifying it against the snapshot")  # fmt: skip
            demo.recovered = snapshot_api.restore(settings, snapshot_id=dropped["id"],
                                                  tables=["newsletter_signups"], into_schema=RECOVERED_SCHEMA,
                                                  notify=notify)  # fmt: skip
            demo.verified = snapshot_api.verify(settings, dropped["id"], ["newsletter_signups"],
                                                in_schema=RECOVERED_SCHEMA, notify=notify)  # fmt: skip
        _roll_back_with_writes(settings, url, demo, notify)
        demo.seconds = time.monotonic() - started
        return demo
    finally:
        if not keep:
            server.destroy()
            shutil.rmtree(workdir, ignore_errors=True)
