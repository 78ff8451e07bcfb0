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

from dbrollback import api, snapshot_api
from dbrollback.catalog.journal import RunRecord
from dbrollback.database import Notify
from dbrollback.embedded import EmbeddedServer
from dbrollback.settings import load_settings
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "kept": self.kept,
            "seeded_rows": self.seeded,
            "status": self.status.to_dict(),
            "history": [r.to_dict() for r in self.history],
            "seconds": round(self.seconds, 2),
            "snapshots": [s.to_dict() for s in self.snapshots],
            "recovered": self.recovered.to_dict() if self.recovered else None,
            "verified": self.verified.to_dict() if self.verified else None,
        }


DROPPED_TABLE_REVISION = "0009_drop_newsletter"


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
        notify("Applying the remaining migrations (data migration, split column, lossy type "
               "change, dropped column and table)")  # fmt: skip
        result = api.upgrade(settings, "heads", notify=notify)
        report = api.status(settings)
        runs = api.history(settings)
        demo = DemoReport(workdir, keep, seeded, report, runs, time.monotonic() - started,
                          snapshots=snapshot_api.snapshot_list(settings))  # fmt: skip
        dropped = next((s for s in result.snapshots if s["revision"] == DROPPED_TABLE_REVISION), None)
        if dropped is not None:
            notify(f"Restoring the dropped table newsletter_signups from snapshot {dropped['id']} side "
                   "by side into schema 'recovered', then verifying it against the snapshot")  # fmt: skip
            demo.recovered = snapshot_api.restore(settings, snapshot_id=dropped["id"],
                                                  tables=["newsletter_signups"], into_schema="recovered",
                                                  notify=notify)  # fmt: skip
            demo.verified = snapshot_api.verify(settings, dropped["id"], ["newsletter_signups"],
                                                in_schema="recovered", notify=notify)  # fmt: skip
        demo.seconds = time.monotonic() - started
        return demo
    finally:
        if not keep:
            server.destroy()
            shutil.rmtree(workdir, ignore_errors=True)
