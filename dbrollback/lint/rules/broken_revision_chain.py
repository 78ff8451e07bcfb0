"""broken-revision-chain: a down_revision names a revision that does not exist, two files share a
revision id, or revisions form a cycle; Alembic cannot build the history."""

from __future__ import annotations

from collections import defaultdict

from dbrollback.lint.findings import Finding, GraphRule
from dbrollback.lint.graph import GraphEntry, RevisionGraph


def _on_cycle(by_id: dict[str, GraphEntry]) -> set[str]:
    """Revisions that are their own ancestor (iterative DFS, colouring)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cyclic: set[str] = set()
    for start in sorted(by_id):
        if start in state:
            continue
        path: list[tuple[str, list[str]]] = [(start, list(by_id[start].down_revisions or ()))]
        state[start] = 1
        while path:
            node, todo = path[-1]
            if not todo:
                state[node] = 2
                path.pop()
                continue
            parent = todo.pop()
            if parent not in by_id:
                continue
            if state.get(parent) == 1:
                names = [n for n, _ in path]
                cyclic.update(names[names.index(parent) :])
            elif parent not in state:
                state[parent] = 1
                path.append((parent, list(by_id[parent].down_revisions or ())))
    return cyclic


class BrokenRevisionChain(GraphRule):
    id = "broken-revision-chain"
    default_severity = "error"
    axes = ("irreversible",)
    problem = (
        "the revision history cannot be built: a down_revision names a revision that does not exist, "
        "two files have the same revision id, or the revisions form a cycle"
    )
    safe_alternative = (
        "point down_revision at an existing revision (`alembic heads` / `alembic history`), and give "
        "every revision file a unique id"
    )

    def check_graph(self, graph: RevisionGraph) -> list[Finding]:
        entries = graph.entries
        findings: list[Finding] = []
        files_by_id: dict[str, list[GraphEntry]] = defaultdict(list)
        for entry in entries:
            files_by_id[entry.revision].append(entry)
        for revision, same in files_by_id.items():
            if len(same) > 1:
                names = ", ".join(sorted(e.path.name for e in same))
                findings.extend(
                    self.graph_finding(e, f"revision id {revision} is used by {len(same)} files ({names})")
                    for e in same
                )
        by_id = {entry.revision: entry for entry in entries}
        # A parent may be defined by a file whose id cannot be read: then nobody can say it is missing.
        for entry in entries if not graph.unreadable else ():
            for parent in entry.down_revisions or ():
                if parent not in by_id:
                    findings.append(self.graph_finding(
                        entry, f"down_revision {parent!r} of revision {entry.revision} does not exist"
                    ))  # fmt: skip
        for revision in sorted(_on_cycle(by_id)):
            findings.append(self.graph_finding(by_id[revision], f"revision {revision} is its own ancestor"))
        return findings
