"""Which revisions `check` goes through, in the order Alembic would apply them.

``--to`` (default: heads) names the last revision(s): everything it needs is applied, in Alembic's
upgrade order (a topological order of the graph, merges after their parents). ``--from`` (default:
base) names the first revision checked: revisions before it are only applied, not checked. The
range is inclusive at both ends, like `alembic history -r FROM:TO`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.errors import DbrollbackError

__all__ = ["EmptyRange", "PlannedRevision", "plan_revisions"]

_REVISION_LINE = re.compile(r"^revision\s*(?::[^=]*)?=")


class EmptyRange(DbrollbackError):
    """--from is not at or below --to: there would be nothing to check."""

    kind = "empty_range"


@dataclass(frozen=True)
class PlannedRevision:
    revision: str
    down_revisions: tuple[str, ...]  # including depends_on: all must be applied first
    doc: str
    path: str | None
    line: int | None  # of the `revision = ...` assignment
    checked: bool  # False: only applied, to reach --from


def revision_line(path: str | None) -> int | None:
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((number for number, line in enumerate(lines, 1) if _REVISION_LINE.match(line)), 1)


def plan_revisions(
    project: AlembicProject, from_rev: str | None, to_rev: str | None
) -> list[PlannedRevision]:
    script = project.script
    target = to_rev or "heads"
    if target == "base":
        return []
    try:
        steps = list(script._upgrade_revs(target, ()))  # type: ignore[arg-type]
    except (CommandError, RevisionError) as exc:
        raise project.unknown_revision(target, str(exc)) from None
    order = [step.revision for step in steps]
    first: str | None = None
    if from_rev and from_rev != "base":
        try:
            found = script.get_revision(from_rev)
        except (CommandError, RevisionError) as exc:
            raise project.unknown_revision(from_rev, str(exc)) from None
        if found is None:
            raise project.unknown_revision(from_rev, "not a single revision")
        first = found.revision
        if first not in {s.revision for s in order}:
            raise EmptyRange(
                f"--from {from_rev} is not {target} or one of its ancestors: nothing to check.",
                from_revision=from_rev,
                to_revision=target,
            )
    checked: set[str] = set()
    planned: list[PlannedRevision] = []
    for sc in order:
        down = tuple(sc._all_down_revisions)
        if first is None or sc.revision == first or any(d in checked for d in down):
            checked.add(sc.revision)
        planned.append(PlannedRevision(sc.revision, down, (sc.doc or "").strip(), sc.path,
                                       revision_line(sc.path), sc.revision in checked))  # fmt: skip
    return planned
