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


def revision_files(paths: list[Path]) -> list[Path]:
    """The .py files named, or found below the directories named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.py")) if "__pycache__" not in p.parts)
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def lint_paths(paths: list[Path], context: LintContext | None = None) -> list[Finding]:
    """Lint every revision file under `paths`; files that are not revisions (no `revision =`,
    no syntax error) are skipped, so a versions directory can hold helpers."""
    findings: list[Finding] = []
    for path in revision_files(paths):
        recorded = record_revision(path)
        if recorded.syntax_error is None and not recorded.is_revision:
            continue
        found = run_rules(recorded, context)
        findings.extend(apply_suppressions(found, recorded.source, recorded.path, recorded.revision))
    return findings
