"""opaque-migration: parts of the revision the static analysis cannot see."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedRevision


class OpaqueMigration(Rule):
    id = "opaque-migration"
    default_severity = "warning"
    axes = ("irreversible",)
    problem = "the revision queries the database or fails without one, so its effect cannot be checked"
    safe_alternative = (
        "express the change with op.* calls and op.execute(SQL text), or prove it with `dbrollback check`"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        findings: list[Finding] = []
        for direction in ("upgrade", "downgrade"):
            function = revision.function(direction)
            reason = function.opaque
            if reason is not None:
                line = function.error_line or function.line or revision.revision_line or 1
                findings.append(self.finding(
                    revision, line, direction,
                    f"{direction}() {reason}; what it does was not analysed",
                ))  # fmt: skip
        return findings
