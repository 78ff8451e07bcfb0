"""syntax-error: the revision file does not import."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedRevision


class SyntaxErrorRule(Rule):
    id = "syntax-error"
    default_severity = "error"
    axes = ("irreversible",)
    problem = "the revision file does not import, so neither Alembic nor the lint can run it"
    safe_alternative = "fix the error Python reports at this line"

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        if revision.syntax_error is None:
            return []
        return [self.finding(revision, revision.syntax_error_line or 1, "graph", revision.syntax_error)]
