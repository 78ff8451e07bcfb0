"""Which revisions `check` goes through, in the order Alembic would apply them.

``--to`` (default: heads) names the last revision(s): everything it needs is applied, in Alembic's
upgrade order (a topological order of the graph, merges after their parents). ``--from`` (default:
base) names the first revision checked: revisions before it are only applied, not checked. The
range is inclusive at both ends, like `alembic history -r FROM:TO`.

Loading the history imports every revision file. A history Alembic cannot load (a
``down_revision`` naming a revision that does not exist, two files with one id, a file that does
not import) is a BrokenHistory naming the file, not a traceback: `dbrollback lint` reports the
same files as ``broken-revision-chain`` / ``syntax-error``.
"""

from __future__ import annotations

import re
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.check.steps import migration_output_to_stderr
from dbrollback.errors import DbrollbackError
from dbrollback.urls import redact

__all__ = ["BrokenHistory", "EmptyRange", "PlannedRevision", "plan_revisions"]

_REVISION_LINE = re.compile(r"^revision\s*(?::[^=]*)?=")


class EmptyRange(DbrollbackError):
    """--from is not at or below --to: there would be nothing to check."""

    kind = "empty_range"


class BrokenHistory(DbrollbackError):
    """The revision files do not form a history Alembic can load."""

    kind = "broken_history"


_LINT_HINT = "Run `dbrollback lint` for the details (rules broken-revision-chain and syntax-error)."


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


def load_history(script: ScriptDirectory) -> None:
    """Import every revision file and build Alembic's revision map, or raise BrokenHistory.

    The files run under migration_output_to_stderr (a print() in one must not corrupt --json),
    and Alembic's warnings about the history become the error instead of noise on stderr.
    """
    with warnings.catch_warnings(record=True) as caught, migration_output_to_stderr():
        warnings.simplefilter("always")
        try:
            script.get_heads()  # builds the revision map: imports every file
        except SyntaxError as exc:
            raise _syntax_error(exc) from None
        except (KeyError, RevisionError) as exc:
            raise _broken_graph(script, exc) from None
        except Exception as exc:
            raise _import_error(script, exc) from None
        duplicated = any("present more than once" in str(w.message) for w in caught)
    if duplicated:
        raise _broken_graph(script, None)


def _syntax_error(exc: SyntaxError) -> BrokenHistory:
    where = f"{exc.filename}:{exc.lineno}" if exc.lineno else str(exc.filename)
    return BrokenHistory(
        f"The revision file {where} does not compile ({exc.msg}), so the history cannot be loaded. "
        + _LINT_HINT,
        path=exc.filename,
        line=exc.lineno,
    )


def _import_error(script: ScriptDirectory, exc: Exception) -> BrokenHistory:
    root = Path(script.dir).resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().is_relative_to(root)]  # fmt: skip
    path, line = (frames[-1].filename, frames[-1].lineno) if frames else (None, None)
    where = f"The revision file {path}:{line}" if path else "A revision file"
    detail = redact(f"{type(exc).__name__}: {exc}")
    return BrokenHistory(
        f"{where} raised while being imported ({detail}), so the history cannot be loaded. " + _LINT_HINT,
        path=path,
        line=line,
    )


def _broken_graph(script: ScriptDirectory, exc: Exception | None) -> BrokenHistory:
    """Which files are at fault: read again one by one, since Alembic's map could not be built."""
    with warnings.catch_warnings(), migration_output_to_stderr():
        warnings.simplefilter("ignore")
        scripts: list[Script] = list(script._load_revisions())
    known = {s.revision for s in scripts} | {label for s in scripts for label in s.branch_labels}
    by_id: dict[str, list[Script]] = {}
    for sc in scripts:
        by_id.setdefault(sc.revision, []).append(sc)
    problems = [
        f"revision {rev} is defined in {len(files)} files ({', '.join(str(f.path) for f in files)})"
        for rev, files in by_id.items()
        if len(files) > 1
    ]
    missing: list[Script] = []
    for sc in scripts:
        for name in (*sc._versioned_down_revisions, *_depends_on(sc)):
            if name not in known:
                problems.append(f"revision {sc.revision} ({sc.path}) names {name}, which does not exist")
                missing.append(sc)
    if not problems:
        problems.append(redact(str(exc)) if exc is not None else "Alembic could not build the revision graph")
    first = missing[0] if missing else next((f[0] for f in by_id.values() if len(f) > 1), None)
    return BrokenHistory(
        "The revision history is broken: " + "; ".join(problems) + ". " + _LINT_HINT,
        problems=problems,
        path=first.path if first is not None else None,
        revision=first.revision if first is not None else None,
    )


def _depends_on(sc: Script) -> tuple[str, ...]:
    value = getattr(sc.module, "depends_on", None)
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def plan_revisions(
    project: AlembicProject, from_rev: str | None, to_rev: str | None
) -> list[PlannedRevision]:
    script = project.script
    load_history(script)
    target = to_rev or "heads"
    if target == "base":
        # Nothing is checked, but a --from that names nothing or something above base is
        # still the mistake it is with any other --to.
        if from_rev and from_rev != "base":
            _find(project, from_rev)
            raise EmptyRange(
                f"--from {from_rev} is not base or one of its ancestors: nothing to check.",
                from_revision=from_rev,
                to_revision=target,
            )
        return []
    try:
        steps = list(script._upgrade_revs(target, ()))  # type: ignore[arg-type]
    except (CommandError, RevisionError) as exc:
        raise project.unknown_revision(target, str(exc)) from None
    order = [step.revision for step in steps]
    first: str | None = None
    if from_rev and from_rev != "base":
        first = _find(project, from_rev)
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


def _find(project: AlembicProject, revision: str) -> str:
    try:
        found = project.script.get_revision(revision)
    except (CommandError, RevisionError) as exc:
        raise project.unknown_revision(revision, str(exc)) from None
    if found is None:
        raise project.unknown_revision(revision, "not a single revision")
    return found.revision
