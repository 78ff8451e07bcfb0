"""Lint findings, the rule interface, and ``# dbrollback: ignore[...]`` suppressions."""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from dbrollback.lint.graph import GraphEntry, RevisionGraph
    from dbrollback.lint.history import RevisionHistory
    from dbrollback.lint.recorder import RecordedOp, RecordedRevision, TableKey

__all__ = [
    "AXES",
    "Finding",
    "GraphRule",
    "LintContext",
    "Rule",
    "Severity",
    "Suppression",
    "apply_suppressions",
    "parse_suppressions",
]

Severity = Literal["error", "warning", "info"]
FindingDirection = Literal["upgrade", "downgrade", "graph"]

# The axes a rule concerns (issue #4): lock/rewrite, data loss, irreversible, breaks running code.
AXES = ("lock-rewrite", "data-loss", "irreversible", "breaks-running-code")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    path: str
    line: int
    column: int
    revision: str | None
    direction: FindingDirection
    message: str
    hint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LintContext:
    """Settings the rules obey. ``history``: facts from the ancestors of a revision, when the
    revision graph is known (the engine sets it; linting a single file without it judges the file
    on its own)."""

    pg_version: int = 14
    history: RevisionHistory | None = None


class Rule:
    """Base of every rule. Subclasses set the class attributes and implement :meth:`check`."""

    id: ClassVar[str]
    default_severity: ClassVar[Severity]
    axes: ClassVar[tuple[str, ...]]
    problem: ClassVar[str]
    safe_alternative: ClassVar[str]

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        raise NotImplementedError

    def finding(self, revision: RecordedRevision, line: int, direction: FindingDirection, message: str,
                column: int = 1) -> Finding:  # fmt: skip
        return Finding(
            rule=self.id,
            severity=self.default_severity,
            path=str(revision.path),
            line=line,
            column=column,
            revision=revision.revision,
            direction=direction,
            message=message,
            hint=self.safe_alternative,
        )

    def findings_per_operation(
        self,
        revision: RecordedRevision,
        message: Callable[[RecordedOp, set[TableKey]], str | None],
        *,
        include_upgrade_tables: bool = False,
    ) -> list[Finding]:
        """A finding at each operation of upgrade() then downgrade() for which ``message`` returns
        text. ``message`` also gets the tables created before the operation in the same function:
        such a table is empty and unused, so what would lock or rewrite an existing one costs nothing.
        ``include_upgrade_tables``: in downgrade(), the tables upgrade() created count as well (they
        hold only rows written since this revision) — and then the downgrade is only judged when
        the upgrade's recording is complete (:meth:`needs_whole_upgrade`)."""
        from dbrollback.lint.recorder import created_tables, with_tables_created_before

        upgrade_tables = created_tables(revision.upgrade.ops) if include_upgrade_tables else set()
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            if include_upgrade_tables and self.needs_whole_upgrade(revision, direction):
                continue
            for recorded, created_before in with_tables_created_before(revision.function(direction).ops):
                if direction == "downgrade":
                    created_before = created_before | upgrade_tables
                text = message(recorded, created_before)
                if text is not None:
                    findings.append(self.finding(revision, recorded.line, direction, text, recorded.column))
        return findings

    @staticmethod
    def needs_whole_upgrade(revision: RecordedRevision, direction: str) -> bool:
        """True in the downgrade when the upgrade's recording is incomplete (opaque, or SQL that
        cannot be read). A downgrade finding that holds only because the upgrade did *not* create
        the table, column or index concerned would then be a guess: the unseen part may have
        created it (issue #4: opaque parts are never guessed about)."""
        return direction == "downgrade" and not revision.upgrade.fully_seen

    def data_loss_finding(self, revision: RecordedRevision, recorded: RecordedOp, message: str) -> Finding:
        """The finding for an upgrade operation whose data rolling back cannot bring back. A revision
        declared irreversible (``dbrollback_irreversible``) has accepted that: then it is only an info,
        saying why, that rollback needs the snapshot."""
        finding = self.finding(revision, recorded.line, "upgrade", message, recorded.column)
        if revision.irreversible:
            message = f"declared irreversible ({revision.irreversible}): {message}"
            finding = replace(finding, severity="info", message=message)
        return finding


class GraphRule(Rule):
    """A rule over the revision graph of a whole versions directory rather than one file."""

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return []

    def check_graph(self, graph: RevisionGraph) -> list[Finding]:
        raise NotImplementedError

    def graph_finding(self, entry: GraphEntry, message: str) -> Finding:
        return Finding(self.id, self.default_severity, str(entry.path), entry.line or 1, 1,
                       entry.revision, "graph", message, self.safe_alternative)  # fmt: skip


class MetaRule(Rule):
    """A rule raised by the engine itself (suppression bookkeeping); listed for docs and config."""

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        return []


# --- suppressions ------------------------------------------------------------------------------------

_SUPPRESSION = re.compile(r"#\s*dbrollback:\s*(?P<kind>ignore-file|ignore)\[(?P<rules>[^\]]*)\](?P<rest>.*)$")


@dataclass
class Suppression:
    line: int
    column: int
    file_wide: bool
    rules: tuple[str, ...]
    reason: str
    used: bool = field(default=False)

    def covers(self, finding: Finding) -> bool:
        if finding.rule not in self.rules:
            return False
        # Same line (trailing comment) or the line above the finding.
        return self.file_wide or finding.line in (self.line, self.line + 1)


def parse_suppressions(source_text: str) -> list[Suppression]:
    """Every ``# dbrollback: ignore[...]`` / ``ignore-file[...]`` comment (comments only, not strings)."""
    if "dbrollback:" not in source_text:
        return []  # the common case; tokenizing every file costs ~10% of a lint run
    comments: list[tuple[int, int, str]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source_text).readline):
            if token.type == tokenize.COMMENT:
                comments.append((token.start[0], token.start[1] + 1, token.string))
    except (tokenize.TokenError, SyntaxError):
        # A file that does not tokenize: fall back to a line scan so suppressions still work.
        for number, text in enumerate(source_text.splitlines(), start=1):
            index = text.find("#")
            if index >= 0:
                comments.append((number, index + 1, text[index:]))
    suppressions = []
    for line, column, comment in comments:
        match = _SUPPRESSION.search(comment)
        if match is None:
            continue
        rules = tuple(r.strip() for r in match["rules"].split(",") if r.strip())
        rest = match["rest"].strip()
        reason = rest[2:].strip() if rest.startswith("--") else ""
        suppressions.append(Suppression(line, column, match["kind"] == "ignore-file", rules, reason))
    return suppressions


def apply_suppressions(findings: list[Finding], source_text: str, path: Path | str,
                       revision: str | None = None) -> list[Finding]:  # fmt: skip
    """Drop the findings of ``path`` that a suppression with a reason covers; add
    ``ignore-without-reason`` for suppressions lacking one (they suppress nothing) and
    ``unused-ignore`` for suppressions with a reason that covered no finding."""
    path_text = str(path)
    suppressions = parse_suppressions(source_text)
    kept: list[Finding] = []
    for finding in findings:
        suppressed = False
        if finding.path == path_text:
            for suppression in suppressions:
                if suppression.reason and suppression.covers(finding):
                    suppression.used = True
                    suppressed = True
        if not suppressed:
            kept.append(finding)
    for suppression in suppressions:
        kind = "ignore-file" if suppression.file_wide else "ignore"
        label = f"# dbrollback: {kind}[{', '.join(suppression.rules)}]"
        if not suppression.reason:
            kept.append(Finding(
                "ignore-without-reason", "warning", path_text, suppression.line, suppression.column,
                revision, "graph", f"{label} has no reason, so it suppresses nothing",
                f"add the reason after the brackets: {label} -- why this is safe",
            ))  # fmt: skip
        elif not suppression.used:
            kept.append(Finding(
                "unused-ignore", "warning", path_text, suppression.line, suppression.column,
                revision, "graph", f"{label} suppresses no finding",
                "remove the comment, or fix the rule id / put it on or just above the finding's line",
            ))  # fmt: skip
    return kept
