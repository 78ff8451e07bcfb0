"""One PostgreSQL server per test session, one fresh database per test.

The server is the embedded PostgreSQL (a real server) unless DBROLLBACK_TEST_DATABASE_URL names
another one; each test gets its own database created from template0.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from dbrollback.embedded import EmbeddedServer

# Settings from the developer's shell must not leak into tests.
for _name in list(os.environ):
    if _name.startswith("DBROLLBACK_") and _name != "DBROLLBACK_TEST_DATABASE_URL":
        del os.environ[_name]


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL for the maintenance database of the session's server."""
    external = os.environ.get("DBROLLBACK_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "pgdata")
    # Durability is irrelevant for throwaway test data; these make CREATE DATABASE and DDL fast.
    status = server.start({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    try:
        yield status.url()
    finally:
        server.stop()


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A libpq URL of a fresh, empty database."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, for assertions."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


# -- Alembic projects made on the fly -----------------------------------------------------------


@dataclass
class Project:
    root: Path
    ini: Path
    versions: Path

    def add_revision(self, revision: str, down: str | tuple[str, ...] | None, upgrade: str,
                     downgrade: str = "pass", *, branch_labels: tuple[str, ...] | None = None,
                     header: str = "", doc: str = "") -> None:  # fmt: skip
        body = f'''\
        """{doc or revision}"""
        import sqlalchemy as sa
        from alembic import op

        revision = {revision!r}
        down_revision = {down!r}
        branch_labels = {branch_labels!r}
        depends_on = None
        '''
        text = textwrap.dedent(body) + textwrap.dedent(header) + "\n"
        text += "def upgrade():\n" + textwrap.indent(textwrap.dedent(upgrade).strip(), "    ") + "\n\n"
        text += "def downgrade():\n" + textwrap.indent(textwrap.dedent(downgrade).strip(), "    ") + "\n"
        (self.versions / f"{revision}.py").write_text(text)


def make_project(root: Path, *, env: str = "generic") -> Project:
    """An Alembic project as `alembic init` makes it (env="generic", env.py unmodified), or with
    the dbrollback-ready env.py that accepts config.attributes["connection"] (env="attributes")."""
    from alembic import command
    from alembic.config import Config

    from dbrollback.demo import shop_project_dir

    root.mkdir(parents=True, exist_ok=True)
    ini = root / "alembic.ini"
    command.init(Config(str(ini)), str(root / "migrations"), template="generic")
    if env == "attributes":
        (root / "migrations" / "env.py").write_text((shop_project_dir() / "env.py").read_text())
    return Project(root, ini, root / "migrations" / "versions")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


# -- running the real CLI -----------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> object:
        import json

        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, project: Project):
    """Run `dbrollback ARGS...` in-process in the project directory; returns code and output."""
    from dbrollback.cli import run
    from dbrollback.cli.state import AppState

    def invoke(*args: str, cwd: Path | None = None) -> CliResult:
        monkeypatch.chdir(cwd or project.root)
        capsys.readouterr()
        code = run(list(args), AppState())
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke
