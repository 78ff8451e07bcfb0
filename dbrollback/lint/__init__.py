"""Static reversibility lint: record what each revision does, then run the rules over it."""

from __future__ import annotations

from pathlib import Path

from dbrollback.lint.engine import LintConfig, LintReport, lint, revision_files
from dbrollback.lint.findings import Finding, LintContext, Rule, apply_suppressions
from dbrollback.lint.recorder import RecordedOp, RecordedRevision, record_revision
from dbrollback.lint.rules import ALL_RULES, RULES_BY_ID, run_rules

__all__ = [
    "ALL_RULES",
    "RULES_BY_ID",
    "Finding",
    "LintConfig",
    "LintContext",
    "LintReport",
    "RecordedOp",
    "RecordedRevision",
    "Rule",
    "apply_suppressions",
    "lint",
    "lint_file",
    "lint_paths",
    "record_revision",
    "revision_files",
    "run_rules",
]


def lint_file(path: Path, context: LintContext | None = None) -> list[Finding]:
    """Record one revision file, run every rule and apply its ``# dbrollback: ignore`` comments."""
    recorded = record_revision(path)
    findings = run_rules(recorded, context)
    return apply_suppressions(findings, recorded.source, recorded.path, recorded.revision)


def lint_paths(paths: list[Path], context: LintContext | None = None) -> list[Finding]:
    """Lint every revision file under `paths` (per-file and graph rules, suppressions applied);
    files that are not revisions are skipped. :func:`dbrollback.lint.engine.lint` also says which
    files were skipped and why, and applies per-rule configuration."""
    config = LintConfig(pg_version=context.pg_version) if context is not None else None
    return lint(paths, config).findings
