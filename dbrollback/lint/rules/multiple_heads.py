"""multiple-heads: a fork in the revision graph was never merged, so `upgrade head` is ambiguous.

Heads whose histories share no revision are separate histories (Alembic's documented multiple
bases, e.g. a second base with its own ``branch_labels``), not an unmerged branch.
"""

from __future__ import annotations

from dbrollback.lint.findings import Finding, GraphRule
from dbrollback.lint.graph import GraphEntry, RevisionGraph


def _lineage(head: str, by_id: dict[str, GraphEntry]) -> set[str]:
    """``head`` and every revision it descends from (iterative: chains are long)."""
    seen: set[str] = set()
    stack = [head]
    while stack:
        revision = stack.pop()
        if revision in seen:
            continue
        seen.add(revision)
        entry = by_id.get(revision)
        if entry is not None:
            stack.extend(entry.down_revisions or ())
    return seen


class MultipleHeads(GraphRule):
    id = "multiple-heads"
    default_severity = "error"
    axes = ("irreversible",)
    problem = (
        "two revisions share a parent and were never merged, so there are several heads and "
        "`upgrade head` (and a rollback to a single previous head) is ambiguous"
    )
    safe_alternative = (
        "merge the heads with `alembic merge heads -m merge`, or rebase the newer revision onto the "
        "other head; separate named branches (branch_labels) are not reported"
    )

    def check_graph(self, graph: RevisionGraph) -> list[Finding]:
        if not graph.edges_known:
            return []  # an unreadable file may be the child that makes a "head" no head
        by_id: dict[str, GraphEntry] = {}
        for entry in graph.entries:
            by_id.setdefault(entry.revision, entry)
        parents = {parent for entry in graph.entries for parent in entry.down_revisions or ()}
        heads = sorted(revision for revision in by_id if revision not in parents)
        if len(heads) < 2:
            return []
        lineage = {head: _lineage(head, by_id) for head in heads}
        labels = {
            head: {label for revision in lineage[head] if revision in by_id
                   for label in by_id[revision].branch_labels}
            for head in heads
        }  # fmt: skip

        def unmerged_fork(head: str, other: str) -> bool:
            # No shared revision: separate bases. Each side with a branch label of its own:
            # deliberate named branches.
            if not lineage[head] & lineage[other]:
                return False
            return not (labels[head] - labels[other] and labels[other] - labels[head])

        findings: list[Finding] = []
        for head in heads:
            forked = [other for other in heads if other != head and unmerged_fork(head, other)]
            if forked:
                listed = ", ".join(sorted([head, *forked]))
                message = f"revision {head} is one of {len(forked) + 1} unmerged heads ({listed})"
                findings.append(self.graph_finding(by_id[head], message))
        return findings
