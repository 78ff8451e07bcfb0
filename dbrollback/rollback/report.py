"""What a rollback reports: the JSON document of `dbrollback rollback --json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_CONFLICT_EXAMPLES = 10


@dataclass
class TableReport:
    table: str  # schema-qualified, as `schema.table`
    restored_rows: int = 0
    reinserted_rows: int = 0
    kept_rows: int = 0
    conflicts: int = 0
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    lost_values_saved_to: str | None = None
    lost_writes: int = 0
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "restored_rows": self.restored_rows,
            "reinserted_rows": self.reinserted_rows,
            "kept_rows": self.kept_rows,
            "conflicts": self.conflicts,
            "conflict_examples": self.conflict_examples,
            "lost_values_saved_to": self.lost_values_saved_to,
            "lost_writes": self.lost_writes,
            "verified": self.verified,
        }


@dataclass
class SkippedDowngrade:
    """--strategy restore: a revision whose downgrade was not run (missing, empty or raised); its
    Alembic version was still moved to its down_revision and its tables restored from the snapshot."""

    revision: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "reason": self.reason}


@dataclass
class RollbackResult:
    run_id: int  # the newest upgrade run that was (or, in a dry run, would be) reverted
    reverted_revisions: list[str]
    strategy: str
    dry_run: bool
    run_ids: list[int] = field(default_factory=list)  # every run reverted, newest first
    tables: list[TableReport] = field(default_factory=list)
    skipped_downgrades: list[SkippedDowngrade] = field(default_factory=list)
    schema_matches: bool | None = None  # None: no schema was recorded before the run
    schema_differences: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    rollback_run_id: int | None = None  # the journal's run of this rollback (None in a dry run)
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """Every table's data and the schema were checked, and matched."""
        return self.schema_matches is True and all(t.verified for t in self.tables)

    @property
    def lost_writes(self) -> int:
        return sum(t.lost_writes for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_ids": self.run_ids or [self.run_id],
            "reverted_revisions": self.reverted_revisions,
            "strategy": self.strategy,
            "dry_run": self.dry_run,
            "tables": [t.to_dict() for t in self.tables],
            "skipped_downgrades": [s.to_dict() for s in self.skipped_downgrades],
            "notes": self.notes,
            "schema_matches": self.schema_matches,
            "schema_differences": self.schema_differences,
            "verified": self.verified,
            "duration_s": self.duration_s,
        }
