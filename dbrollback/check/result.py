"""What `check` found, per revision: plain data for the CLI renderers and --json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbrollback.check.data import LostData
from dbrollback.check.schema import SchemaDifference

__all__ = ["CheckResult", "RevisionCheck"]

OK, ERROR, SKIPPED = "ok", "error", "skipped"
LOST, UNVERIFIED = "lost", "unverified"


@dataclass
class RevisionCheck:
    revision: str
    doc: str
    path: str | None
    line: int | None
    upgrade: str = SKIPPED  # ok | error
    downgrade: str = SKIPPED  # ok | error | skipped
    schema_roundtrip: str = SKIPPED  # ok | diff | skipped
    schema_differences: list[SchemaDifference] = field(default_factory=list)
    data_roundtrip: str = SKIPPED  # ok | lost | unverified | skipped
    lost: list[LostData] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # why data could not be proven to come back
    reupgrade: str = SKIPPED  # ok | error | skipped
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # seeding problems, retries; not failures
    not_checked: str | None = None  # why the revision could not be checked at all

    @property
    def status(self) -> str:
        if self.not_checked is not None:
            return "not_checked"
        failed = (ERROR in (self.upgrade, self.downgrade, self.reupgrade) or self.schema_roundtrip == "diff"
                  or self.data_roundtrip in (LOST, UNVERIFIED))  # fmt: skip
        return "failed" if failed else "ok"

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) if self.errors else self.not_checked

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "doc": self.doc,
            "path": self.path,
            "line": self.line,
            "status": self.status,
            "upgrade": self.upgrade,
            "downgrade": self.downgrade,
            "schema_roundtrip": self.schema_roundtrip,
            "schema_differences": [d.to_dict() for d in self.schema_differences],
            "data_roundtrip": self.data_roundtrip,
            "lost": [item.to_dict() for item in self.lost],
            "unverified": list(self.unverified),
            "reupgrade": self.reupgrade,
            "error": self.error,
            "notes": list(self.notes),
        }


@dataclass
class CheckResult:
    database: str
    seed: int
    rows: int
    revisions: list[RevisionCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.revisions)

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.revisions]
        return {s: statuses.count(s) for s in ("ok", "failed", "not_checked")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "seed": self.seed,
            "rows": self.rows,
            "summary": self.counts(),
            "revisions": [r.to_dict() for r in self.revisions],
            "notes": list(self.notes),
        }
