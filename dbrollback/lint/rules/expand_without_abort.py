"""expand-without-abort: the upgrade opens expansions and the downgrade does not call expand.abort()."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedRevision, expand_abort, opened_expansions


class ExpandWithoutAbort(Rule):
    id = "expand-without-abort"
    default_severity = "error"
    axes = ("irreversible",)
    problem = (
        "the upgrade opens expansions (dbrollback.expand helpers) and the downgrade does not call "
        "expand.abort(), so a plain `alembic downgrade` leaves them open, with their new columns and "
        "sync triggers"
    )
    safe_alternative = (
        "call expand.abort() in the downgrade: it drops what this revision's expand helpers added, "
        "with their triggers, and closes the expansions"
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        upgrade, downgrade = revision.upgrade, revision.downgrade
        if not revision.is_revision or not downgrade.present or downgrade.empty:
            return []  # absent or empty: missing-downgrade's finding (its message names expand.abort())
        if downgrade.opaque is not None:
            return []  # the recording stopped early: the abort may come after the point it reached
        opened = opened_expansions(upgrade.ops)
        if not opened or expand_abort(downgrade.ops) is not None:
            return []
        calls = ", ".join(f"{found.helper} (line {recorded.line})" for recorded, found in opened)
        return [self.finding(
            revision, downgrade.line or 1, "downgrade",
            f"the downgrade does not call expand.abort() to undo {calls}; a plain `alembic downgrade` "
            "leaves the expansions open, with what they added and their sync triggers still in place",
        )]  # fmt: skip
