"""Creating a dbrollback-ready Alembic project, or adding dbrollback to an existing one."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from dbrollback.demo import shop_project_dir
from dbrollback.errors import ConfigError

TOML_TEMPLATE = """\
# dbrollback settings. Precedence: CLI flags > DBROLLBACK_* environment variables > this file
# > sqlalchemy.url in alembic.ini > the embedded PostgreSQL. Relative paths are relative to
# this file's directory.
alembic_config = "{alembic_config}"
# Prefer the DBROLLBACK_DATABASE_URL environment variable for URLs that carry a password.
# database_url = "postgresql://app@db.example.com/app"
store = "file://.dbrollback/snapshots"
rollback_window = "7d"
lock_timeout = "5s"
# statement_timeout = "10min"
lock_wait = "60s"
lock_retries = 3
"""


@dataclass
class InitResult:
    directory: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    new_project: bool = False

    @property
    def next_step(self) -> str:
        if self.new_project:
            return ("New Alembic project ready. Add revisions with `alembic revision -m ...`, "
                    "then run `dbrollback upgrade`.")  # fmt: skip
        return "dbrollback is set up for this Alembic project. Try `dbrollback status`."

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "created": [str(p) for p in self.created],
            "kept": [str(p) for p in self.kept],
            "new_project": self.new_project,
        }


def init_project(directory: Path, script_dir_name: str = "migrations") -> InitResult:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    result = InitResult(directory)
    ini = directory / "alembic.ini"
    if not ini.exists():
        script_dir = directory / script_dir_name
        if script_dir.exists() and any(script_dir.iterdir()):
            raise ConfigError(f"{script_dir} exists and is not empty; choose another directory")
        with contextlib.redirect_stdout(io.StringIO()):  # alembic prints progress; --json must not
            command.init(Config(str(ini)), str(script_dir), template="generic")
        # The dbrollback-ready env.py also accepts a connection handed in by the caller.
        (script_dir / "env.py").write_text((shop_project_dir() / "env.py").read_text())
        result.created += [ini, script_dir]
        result.new_project = True
    else:
        result.kept.append(ini)
    toml = directory / "dbrollback.toml"
    if toml.exists():
        result.kept.append(toml)
    else:
        toml.write_text(TOML_TEMPLATE.format(alembic_config="alembic.ini"))
        result.created.append(toml)
    return result
