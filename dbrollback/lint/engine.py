"""Lint a set of revision files: per-file rules, graph rules over their directories, suppressions,
and the project's per-rule configuration. :func:`lint` is what the CLI and scripts call."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dbrollback.errors import ConfigError
from dbrollback.lint.findings import Finding, GraphRule, LintContext, Severity, apply_suppressions
from dbrollback.lint.graph import GraphEntry, read_graph_entry
from dbrollback.lint.recorder import record_revision
from dbrollback.lint.rules import ALL_RULES, RULES_BY_ID, run_rules

__all__ = ["LintConfig", "LintReport", "SkippedFile", "lint", "revision_files"]

RuleSetting = Literal["error", "warning", "info", "off"]
_REVISION_ASSIGNMENT = re.compile(r"^revision\s*(:[^=]*)?=", re.MULTILINE)


@dataclass(frozen=True)
class LintConfig:
    """``[tool.dbrollback.lint]``: target PostgreSQL version and per-rule severity or ``off``."""

    pg_version: int = 14
    rules: dict[str, RuleSetting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(RULES_BY_ID))
        if unknown:
            raise ConfigError(
                f"Unknown lint rule(s) in configuration: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(RULES_BY_ID))}"
            )

    def apply(self, finding: Finding) -> Finding | None:
        """The finding with its configured severity, or None when its rule is switched off."""
        setting = self.rules.get(finding.rule)
        if setting is None:
            return finding
        if setting == "off":
            return None
        return replace(finding, severity=setting)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class LintReport:
    findings: list[Finding]
    files: list[str]  # revision files linted
    skipped: list[SkippedFile]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def has_errors(self) -> bool:
        return self.count("error") > 0


def revision_files(paths: list[Path]) -> list[Path]:
    """The .py files named, or found below the directories named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.py")) if "__pycache__" not in p.parts)
        else:
            found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))


def _graph_universe(paths: list[Path]) -> list[Path]:
    """Every .py file of the directories the graph rules must see: the directories named, and the
    directory of each file named (a pre-commit hook passes single files)."""
    directories = [p if p.is_dir() else p.parent for p in paths]
    return revision_files(list(dict.fromkeys(d.resolve() for d in directories)))


def _read_source(path: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, why it is skipped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if b"\0" in data:
        return None, "binary file"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def lint(paths: list[Path], config: LintConfig | None = None, *, only: set[Path] | None = None) -> LintReport:
    """Lint the revision files under ``paths``.

    ``only`` restricts the files reported on (``--changed-since``); graph rules still read every
    revision of the directories concerned. Python files without a module-level ``revision =``
    (helpers, ``__init__.py``) and unreadable or binary files are skipped with a reason.
    """
    config = config or LintConfig()
    context = LintContext(pg_version=config.pg_version)
    targets = [p for p in revision_files(paths) if only is None or p in only]
    per_file: dict[str, list[Finding]] = {}
    sources: dict[str, tuple[str, str | None]] = {}
    skipped: list[SkippedFile] = []
    linted: list[str] = []
    for path in targets:
        text, why = _read_source(path)
        if text is None:
            skipped.append(SkippedFile(str(path), why or "unreadable"))
            continue
        looks_like_revision = _REVISION_ASSIGNMENT.search(text) is not None
        if not looks_like_revision:
            try:
                compile(text, str(path), "exec", dont_inherit=True)
            except (SyntaxError, ValueError):
                looks_like_revision = True  # report the syntax error; it may well be a revision
            else:
                reason = "not an Alembic revision (no module-level `revision =`)"
                skipped.append(SkippedFile(str(path), reason))
                continue
        recorded = record_revision(path)
        if recorded.syntax_error is None and not recorded.is_revision:
            skipped.append(SkippedFile(str(path), "not an Alembic revision (`revision` is not a string)"))
            continue
        linted.append(str(recorded.path))
        per_file[str(recorded.path)] = run_rules(recorded, context)
        sources[str(recorded.path)] = (recorded.source, recorded.revision)

    entries = _graph_entries(paths)
    for rule in ALL_RULES:
        if isinstance(rule, GraphRule):
            for finding in rule.check_graph(entries):
                if finding.path in per_file:  # only on files being linted
                    per_file[finding.path].append(finding)

    findings: list[Finding] = []
    for path_text, found in per_file.items():
        source, revision = sources[path_text]
        found.sort(key=lambda f: (f.line, f.column, f.rule))
        for finding in apply_suppressions(found, source, path_text, revision):
            configured = config.apply(finding)
            if configured is not None:
                findings.append(configured)
    return LintReport(findings, linted, skipped)


def _graph_entries(paths: list[Path]) -> list[GraphEntry]:
    entries = []
    for path in _graph_universe(paths):
        entry = read_graph_entry(path)
        if entry is not None:
            entries.append(entry)
    return entries
