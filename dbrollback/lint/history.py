"""Facts a revision inherits from its ancestors, for rules that must look back in the history.

Example: ``set-not-null`` is free after a validated ``CHECK (c IS NOT NULL)`` added "in the same or
an earlier revision" (issue #4). A rule asks :meth:`RevisionHistory.state_before` for the state of
an :class:`AncestorFact` when revision X starts; the history walks X's ancestors in the revision
graph (the same directories the graph rules read, so with ``--changed-since`` also revisions that
are not being linted) and records the ancestors whose text can matter.

It is lazy and cached per process: nothing is read until a rule asks, the graph is read once, each
ancestor is recorded at most once per fact, and each revision's state is computed once. Worker
processes each build their own cache; only the directories and an id cross the process boundary
(every task unpickles its own copy of the lint context: the copies of one lint run share a cache).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from dbrollback.lint.graph import GraphEntry, python_files, read_graph_entry, scan_graph_entry

__all__ = ["AncestorFact", "RevisionHistory"]

State = TypeVar("State")


@dataclass(frozen=True)
class AncestorFact(Generic[State]):
    """How one kind of fact evolves along the history.

    ``relevant(state, source)``: a cheap text test; a revision whose source fails it cannot change
    the state, so it is not recorded. ``apply(state, recorded)``: the state after the revision's
    upgrade. ``merge(states)``: the state after a merge revision's parents (also for one parent)."""

    key: str
    empty: State
    relevant: Callable[[State, str], bool]
    apply: Callable[[State, Any], State]
    merge: Callable[[list[State]], State]


@dataclass
class _Caches:
    entries: dict[str, list[GraphEntry]] | None = None
    # (fact key, revision) -> the fact's state after that revision's upgrade
    states: dict[tuple[str, str], Any] = field(default_factory=dict)


# The caches of the histories unpickled in this process, by history id (a worker serves one run).
_UNPICKLED: dict[str, _Caches] = {}


class RevisionHistory:
    """The revision graph of ``directories`` and the facts of its revisions (see module doc)."""

    def __init__(self, directories: list[Path], files: list[Path] | None = None) -> None:
        """``files``: the .py files of ``directories`` when the caller has listed them already (not
        passed on to worker processes, which list them when they need them)."""
        self.directories = tuple(directories)
        self._files = files
        self._id = uuid.uuid4().hex
        self._caches = _Caches()

    def __getstate__(self) -> dict[str, Any]:
        return {"directories": self.directories, "id": self._id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directories = state["directories"]
        self._files = None
        self._id = state["id"]
        if self._id not in _UNPICKLED:
            _UNPICKLED.clear()
            _UNPICKLED[self._id] = _Caches()
        self._caches = _UNPICKLED[self._id]

    @property
    def graph_read(self) -> bool:
        """Whether the revision graph has been read (it is only when a rule needed it)."""
        return self._caches.entries is not None

    def _graph(self) -> dict[str, list[GraphEntry]]:
        if self._caches.entries is None:
            entries: dict[str, list[GraphEntry]] = {}
            files = self._files if self._files is not None else python_files(list(self.directories))
            for path in files:
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                # The regex read is enough for the usual literal assignments and 20x cheaper than
                # parsing; anything else goes through the parser.
                entry = scan_graph_entry(path, text)
                if entry is None or entry.down_revisions is None:
                    read = read_graph_entry(path, text)
                    entry = read if isinstance(read, GraphEntry) else None
                if entry is not None:
                    entries.setdefault(entry.revision, []).append(entry)
            self._caches.entries = entries
        return self._caches.entries

    def _entry(self, revision: str) -> GraphEntry | None:
        """The one file defining ``revision`` with known parents, else None (missing, ambiguous)."""
        found = self._graph().get(revision, [])
        if len(found) != 1 or found[0].down_revisions is None:
            return None
        return found[0]

    def state_before(self, revision: str, fact: AncestorFact[State]) -> State:
        """``fact`` when ``revision``'s upgrade starts: after all its ancestors' upgrades. An
        ancestor that is missing, defined twice or unreadable contributes ``fact.empty``."""
        entry = self._entry(revision)
        if entry is None:
            return fact.empty
        parents = entry.down_revisions or ()
        return fact.merge([self._state_after(parent, fact) for parent in parents]) if parents else fact.empty

    def _state_after(self, revision: str, fact: AncestorFact[State]) -> State:
        """``fact`` after ``revision``'s upgrade; iterative post-order over the ancestors (chains
        of thousands of revisions are deeper than Python's recursion limit)."""
        states = self._caches.states
        stack: list[tuple[str, bool]] = [(revision, False)]
        on_stack: set[str] = set()
        while stack:
            current, parents_done = stack.pop()
            if (fact.key, current) in states:
                continue
            entry = self._entry(current)
            parents = tuple(entry.down_revisions or ()) if entry is not None else ()
            if not parents_done:
                if current in on_stack:
                    states[(fact.key, current)] = fact.empty  # a cycle: broken-revision-chain's case
                    continue
                on_stack.add(current)
                stack.append((current, True))
                stack.extend((p, False) for p in parents if (fact.key, p) not in states)
                continue
            on_stack.discard(current)
            if entry is None:
                states[(fact.key, current)] = fact.empty
                continue
            before = fact.merge([states[(fact.key, p)] for p in parents]) if parents else fact.empty
            states[(fact.key, current)] = self._apply(entry, before, fact)
        return states.get((fact.key, revision), fact.empty)

    @staticmethod
    def _apply(entry: GraphEntry, before: State, fact: AncestorFact[State]) -> State:
        from dbrollback.lint.recorder import record_revision

        try:
            text = entry.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return before
        if not fact.relevant(before, text):
            return before
        recorded = record_revision(entry.path, text)
        if recorded.syntax_error is not None:
            return before
        return fact.apply(before, recorded)
