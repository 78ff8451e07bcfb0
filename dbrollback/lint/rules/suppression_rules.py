"""unused-ignore and ignore-without-reason: bookkeeping of ``# dbrollback: ignore[...]`` comments.

The findings themselves come from :func:`dbrollback.lint.findings.apply_suppressions`; these
classes give them the metadata every rule has (docs, configurable severity)."""

from __future__ import annotations

from dbrollback.lint.findings import MetaRule


class IgnoreWithoutReason(MetaRule):
    id = "ignore-without-reason"
    default_severity = "warning"
    axes = ("irreversible",)
    problem = "a `# dbrollback: ignore[...]` comment has no reason, so it suppresses nothing"
    safe_alternative = "say why the finding is safe here: `# dbrollback: ignore[rule-id] -- reason`"


class UnusedIgnore(MetaRule):
    id = "unused-ignore"
    default_severity = "warning"
    axes = ("irreversible",)
    problem = "a `# dbrollback: ignore[...]` comment suppresses no finding (stale, misspelt or misplaced)"
    safe_alternative = (
        "remove the comment, or fix the rule id, or put it on (or just above) the line of the finding"
    )
