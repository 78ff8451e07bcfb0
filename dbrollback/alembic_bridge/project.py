"""Loading an Alembic project (alembic.ini + script directory) and resolving revisions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from dbrollback.errors import AlembicConfigMissing, ConfigError, UnknownRevision
from dbrollback.urls import redact

_SYMBOLIC = ("head", "heads", "base")


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...]
    doc: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revisions": list(self.down_revisions),
            "branch_labels": list(self.branch_labels),
            "doc": self.doc,
        }


class AlembicProject:
    """An alembic.ini and its script directory, with the database URL dbrollback resolved."""

    def __init__(self, ini_path: Path, sqlalchemy_url: str | None = None) -> None:
        self.ini_path = Path(ini_path)
        if not self.ini_path.is_file():
            raise AlembicConfigMissing(
                f"No Alembic configuration at {self.ini_path}. Run `dbrollback init` to create one "
                "(or add dbrollback to an existing project), or pass -c/--alembic-config.",
                path=str(self.ini_path),
            )
        self.sqlalchemy_url = sqlalchemy_url
        self.script = self._load_script()

    def config(self, connection: Any = None) -> Config:
        """A fresh Alembic Config; env.py files may use attributes['connection'] or the URL."""
        cfg = Config(str(self.ini_path))
        if self.sqlalchemy_url is not None:
            # ConfigParser interpolates '%', so a password containing one must be escaped.
            cfg.set_main_option("sqlalchemy.url", self.sqlalchemy_url.replace("%", "%%"))
        if connection is not None:
            cfg.attributes["connection"] = connection
        return cfg

    def _load_script(self) -> ScriptDirectory:
        try:
            return ScriptDirectory.from_config(self.config())
        except CommandError as exc:
            raise ConfigError(f"Invalid Alembic project {self.ini_path}: {redact(str(exc))}") from None

    # -- revisions ----------------------------------------------------------------------------
    def revisions(self) -> list[RevisionInfo]:
        """All revisions, newest first (Alembic's walk order)."""
        return [
            RevisionInfo(
                revision=sc.revision,
                down_revisions=tuple(sc._all_down_revisions),
                branch_labels=tuple(sorted(sc.branch_labels)),
                doc=sc.doc or "",
            )
            for sc in self.script.walk_revisions()
        ]

    def heads(self) -> tuple[str, ...]:
        return tuple(self.script.get_heads())

    def unknown_revision(self, target: str, detail: str) -> UnknownRevision:
        """An UnknownRevision error that names the closest known revisions."""
        candidates: list[str] = list(_SYMBOLIC)
        for info in self.revisions():
            candidates.append(info.revision)
            candidates.extend(info.branch_labels)
        word = target.split("@")[-1].lstrip("+-").split("+")[0].split("-")[0] or target
        close = [c for c in candidates if c.startswith(word[:4]) and word[:4]] if word else []
        close += difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
        suggestions = list(dict.fromkeys(c for c in close if c not in _SYMBOLIC))[:5]
        hint = f" Closest known: {', '.join(suggestions)}." if suggestions else ""
        return UnknownRevision(
            f"Unknown or invalid revision {target!r}: {detail}.{hint}",
            revision=target,
            suggestions=suggestions,
        )
