"""missing-downgrade: the upgrade changes something and the downgrade does nothing."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedRevision, opened_expansions


class MissingDowngrade(Rule):
    id = "missing-downgrade"
    default_severity = "error"
    axes = ("irreversible",)
    problem = "the downgrade is absent, empty or raises NotImplementedError, so the revision cannot be undone"
    safe_alternative = (
        "write a downgrade that undoes the upgrade, or declare the revision irreversible with a module-level "
        'dbrollback_irreversible = "reason" (rollback then needs a dbrollback snapshot)'
    )

    def check(self, revision: RecordedRevision, context: LintContext) -> list[Finding]:
        upgrade, downgrade = revision.upgrade, revision.downgrade
        # Merge revisions and revisions with an empty upgrade have nothing to undo.
        if not revision.is_revision or not upgrade.present or upgrade.empty:
            return []
        if downgrade.present and not downgrade.empty:
            return []
        line = downgrade.line if downgrade.present else revision.revision_line
        what = (
            "raises NotImplementedError"
            if downgrade.raises_not_implemented
            else ("is empty" if downgrade.present else "is missing")
        )
        if revision.irreversible:
            return [Finding(
                self.id, "info", str(revision.path), line or 1, 1, revision.revision, "downgrade",
                f"revision is declared irreversible ({revision.irreversible}); rolling it back needs a "
                "dbrollback snapshot taken before the upgrade",
                "run the upgrade through dbrollback so a snapshot is taken first",
            )]  # fmt: skip
        message = f"the downgrade {what} but the upgrade is not"
        if opened_expansions(upgrade.ops):
            message += "; expand.abort() in the downgrade undoes the upgrade's expand helpers"
        return [self.finding(revision, line or 1, "downgrade", message)]
