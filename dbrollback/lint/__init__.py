"""Static reversibility lint: record what each revision does, then run the rules over it."""

from __future__ import annotations

from pathlib import Path

from dbrollback.lint.findings import Finding, LintContext, Rule, apply_suppressions
from dbrollback.lint.recorder import RecordedOp, RecordedRevision, record_revision
from dbrollback.lint.rules import ALL_RULES, RULES_BY_ID, run_rules

__all__ = [
    "ALL_RULES",
    "RULES_BY_ID",
    "Finding",
    "LintContext",
    "RecordedOp",
    "RecordedRevision",
    "Rule",
    "apply_suppressions",
    "lint_file",
    "record_revision",
    "run_rules",
]


def lint_file(path: Path, context: LintContext | None = None) -> list[Finding]:
    """Record one revision file, run every rule and apply its ``# dbrollback: ignore`` comments."""
    recorded = record_revision(path)
    findings = run_rules(recorded, context)
    return apply_suppressions(findings, recorded.source, recorded.path, recorded.revision)
