"""Lint a set of revision files: per-file rules, graph rules over their directories, suppressions,
and the project's per-rule configuration. :func:`lint` is what the CLI and scripts call."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dbrollback.errors import ConfigError
from dbrollback.lint.findings import Finding, GraphRule, LintContext, Severity, apply_suppressions
from dbrollback.lint.graph import (
    REVISION_ASSIGNMENT,
    GraphEntry,
    RevisionGraph,
    UnreadableRevision,
    python_files,
    read_graph_entry,
)
from dbrollback.lint.history import RevisionHistory
from dbrollback.lint.recorder import record_revision
from dbrollback.lint.rules import ALL_RULES, RULES_BY_ID, run_rules

__all__ = ["LintConfig", "LintReport", "SkippedFile", "lint", "revision_files"]

RuleSetting = Literal["error", "warning", "info", "off"]


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
        found.extend(python_files([path]) if path.is_dir() else [path.resolve()])
    return list(dict.fromkeys(found))


def _graph_directories(paths: list[Path]) -> list[Path]:
    """The directories the graph rules (and the revision history) must see: the directories named,
    and the directory of each file named (a pre-commit hook passes single files)."""
    return list(dict.fromkeys((p if p.is_dir() else p.parent).resolve() for p in paths))


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


@dataclass
class _FileOutcome:
    """What linting one file gave, as plain data (it crosses process boundaries)."""

    path: str
    skipped: str | None = None
    findings: list[Finding] = field(default_factory=list)
    source: str = ""
    revision: str | None = None
    graph: GraphEntry | None = None
    # Imported, and its `revision` is not a string: not part of the revision graph either.
    not_a_revision: bool = False


def _lint_file(path: Path, context: LintContext) -> _FileOutcome:
    """Per-file rules of one file (suppressions are applied later, with the graph findings)."""
    text, why = _read_source(path)
    if text is None:
        return _FileOutcome(str(path), skipped=why or "unreadable")
    if REVISION_ASSIGNMENT.search(text) is None:
        try:
            compile(text, str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            pass  # report the syntax error: it may well be a revision
        else:
            return _FileOutcome(str(path), skipped="not an Alembic revision (no module-level `revision =`)")
    recorded = record_revision(path, text)
    if recorded.syntax_error is None and not recorded.is_revision:
        return _FileOutcome(
            str(recorded.path),
            skipped="not an Alembic revision (`revision` is not a string)",
            not_a_revision=True,
        )
    graph = None
    if isinstance(recorded.revision, str):
        down = recorded.down_revision
        parents = (down,) if isinstance(down, str) else tuple(down or ())
        graph = GraphEntry(
            recorded.path, recorded.revision, parents, recorded.branch_labels, recorded.revision_line or 1
        )
    return _FileOutcome(
        str(recorded.path), None, run_rules(recorded, context), recorded.source, recorded.revision, graph
    )


# Below this many files a process pool costs more than it saves.
_PARALLEL_FROM = 64


def _stdout_to_stderr() -> None:
    """Worker start: whatever revision code writes to stdout, also below Python (C extensions,
    os.write(1, …)), must not end up in the JSON or SARIF the parent prints there."""
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _lint_files(targets: list[Path], context: LintContext, jobs: int) -> list[_FileOutcome]:
    """Lint files in worker processes when there are many and fork is available (Linux): recording
    runs each revision under Alembic's module-global ``op`` proxy, so threads cannot share it."""
    if jobs > 1 and len(targets) >= _PARALLEL_FROM and sys.platform.startswith("linux"):
        try:
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                                     initializer=_stdout_to_stderr) as pool:  # fmt: skip
                chunk = max(8, len(targets) // (jobs * 8))
                return list(pool.map(_lint_file, targets, [context] * len(targets), chunksize=chunk))
        except BrokenProcessPool:
            pass  # a revision killed its worker (os._exit at import?): lint in-process instead
    return [_lint_file(path, context) for path in targets]


def lint(paths: list[Path], config: LintConfig | None = None, *, only: set[Path] | None = None,
         jobs: int | None = None) -> LintReport:  # fmt: skip
    """Lint the revision files under ``paths``.

    ``only`` restricts the files reported on (``--changed-since``); graph rules still read every
    revision of the directories concerned. Python files without a module-level ``revision =``
    (helpers, ``__init__.py``) and unreadable or binary files are skipped with a reason. ``jobs``:
    worker processes for many files (default: the number of CPUs).
    """
    config = config or LintConfig()
    directories = _graph_directories(paths)
    universe = python_files(directories)
    named = universe if all(p.is_dir() for p in paths) else revision_files(paths)
    targets = [p for p in named if only is None or p in only]
    context = LintContext(pg_version=config.pg_version, history=RevisionHistory(directories, universe))
    outcomes = _lint_files(targets, context, jobs or os.cpu_count() or 1)

    per_file: dict[str, _FileOutcome] = {}
    skipped: list[SkippedFile] = []
    known: dict[Path, GraphEntry | None] = {}
    for outcome in outcomes:
        if outcome.skipped is not None:
            skipped.append(SkippedFile(outcome.path, outcome.skipped))
            if outcome.not_a_revision:
                known[Path(outcome.path)] = None
        else:
            per_file[outcome.path] = outcome
            if outcome.graph is not None:
                known[Path(outcome.path)] = outcome.graph

    graph = _revision_graph(universe, known)
    for rule in ALL_RULES:
        if isinstance(rule, GraphRule):
            for finding in rule.check_graph(graph):
                if finding.path in per_file:  # only on files being linted
                    per_file[finding.path].findings.append(finding)

    findings: list[Finding] = []
    for path_text, outcome in per_file.items():
        outcome.findings.sort(key=lambda f: (f.line, f.column, f.rule))
        for finding in apply_suppressions(outcome.findings, outcome.source, path_text, outcome.revision):
            configured = config.apply(finding)
            if configured is not None:
                findings.append(configured)
    return LintReport(findings, list(per_file), skipped)


def _revision_graph(universe: list[Path], known: dict[Path, GraphEntry | None]) -> RevisionGraph:
    """The graph of the revision files among ``universe``: from the recordings where the file was
    linted and imported, else read statically."""
    graph = RevisionGraph()
    for path in universe:
        entry = known[path] if path in known else read_graph_entry(path)
        if isinstance(entry, GraphEntry):
            graph.entries.append(entry)
        elif isinstance(entry, UnreadableRevision):
            graph.unreadable.append(entry.path)
    return graph
