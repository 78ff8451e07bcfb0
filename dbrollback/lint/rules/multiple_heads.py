"""multiple-heads: the revision graph has more than one head, so `upgrade head` is ambiguous."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, GraphRule
from dbrollback.lint.graph import GraphEntry


def _labels_of_lineage(head: str, by_id: dict[str, GraphEntry]) -> set[str]:
    labels: set[str] = set()
    seen: set[str] = set()
    stack = [head]
    while stack:
        revision = stack.pop()
        entry = by_id.get(revision)
        if entry is None or revision in seen:
            continue
        seen.add(revision)
        labels.update(entry.branch_labels)
        stack.extend(entry.down_revisions)
    return labels


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

    def check_graph(self, entries: list[GraphEntry]) -> list[Finding]:
        by_id = {entry.revision: entry for entry in entries}
        parents = {parent for entry in entries for parent in entry.down_revisions}
        heads = sorted(revision for revision in by_id if revision not in parents)
        if len(heads) < 2:
            return []
        lineage = {head: _labels_of_lineage(head, by_id) for head in heads}

        # Named branches (alembic's branch_labels) are deliberate: each head has a label of its own.
        def own_label(head: str) -> bool:
            others = set().union(*(lineage[h] for h in heads if h != head))
            return bool(lineage[head] - others)

        if all(own_label(head) for head in heads):
            return []
        listed = ", ".join(heads)
        return [
            self.graph_finding(by_id[head], f"revision {head} is one of {len(heads)} heads ({listed})")
            for head in heads
        ]
