"""Configuration precedence, provenance, relative paths and `config show`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dbrollback.durations import format_duration, parse_duration
from dbrollback.errors import ConfigError
from dbrollback.settings import load_settings
from dbrollback.urls import display_url, parse_database_url, redact


def _ini(path: Path, url: str | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    line = f"sqlalchemy.url = {url}\n" if url else ""
    (path / "alembic.ini").write_text(f"[alembic]\nscript_location = migrations\n{line}")
    return path / "alembic.ini"


def test_precedence_flag_env_file_ini_default(tmp_path):
    _ini(tmp_path, "postgresql://ini@h/ini")
    (tmp_path / "dbrollback.toml").write_text(
        'database_url = "postgresql://toml@h/toml"\nlock_timeout = "9s"\n'
    )
    env = {"DBROLLBACK_DATABASE_URL": "postgresql://env@h/env", "DBROLLBACK_LOCK_WAIT": "2min"}

    s = load_settings({"database_url": "postgresql://flag@h/flag"}, cwd=tmp_path, environ=env)
    assert s.database_url == "postgresql://flag@h/flag" and s.sources["database_url"] == "flag"
    assert s.lock_wait == timedelta(minutes=2) and s.sources["lock_wait"] == "DBROLLBACK_LOCK_WAIT"
    assert s.lock_timeout == timedelta(seconds=9) and s.sources["lock_timeout"] == "dbrollback.toml"
    assert s.sources["rollback_window"] == "default" and s.rollback_window == timedelta(days=7)

    s = load_settings({}, cwd=tmp_path, environ=env)
    assert s.database_url == "postgresql://env@h/env"
    s = load_settings({}, cwd=tmp_path, environ={})
    assert s.database_url == "postgresql://toml@h/toml"
    (tmp_path / "dbrollback.toml").unlink()
    s = load_settings({}, cwd=tmp_path, environ={})
    assert s.database_url == "postgresql://ini@h/ini" and s.sources["database_url"] == "alembic.ini"
    _ini(tmp_path, None)
    s = load_settings({}, cwd=tmp_path, environ={})
    assert s.database_url is None and s.sources["database_url"] == "embedded default"


def test_pyproject_section_and_alembic_init_placeholder(tmp_path):
    _ini(tmp_path, "driver://user:pass@localhost/dbname")  # what `alembic init` writes
    (tmp_path / "pyproject.toml").write_text('[tool.dbrollback]\nlock_retries = 9\nstore = "snaps"\n')
    s = load_settings({}, cwd=tmp_path, environ={})
    assert s.uses_embedded
    assert s.lock_retries == 9 and s.sources["lock_retries"] == "pyproject.toml"
    assert s.store == f"file://{tmp_path}/snaps"


def test_relative_paths_follow_the_file_that_set_them(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dbrollback.toml").write_text(
        'alembic_config = "db/alembic.ini"\nstore = "file://snaps"\nembedded_pgdata = "pg"\n'
    )
    s = load_settings({}, cwd=conf, environ={})
    assert s.alembic_config == conf / "db" / "alembic.ini"
    assert s.store == f"file://{conf}/snaps"
    assert s.embedded_pgdata == conf / "pg"
    s = load_settings({"store": "file://x"}, cwd=tmp_path, environ={"DBROLLBACK_EMBEDDED_PGDATA": "e"})
    assert s.store == f"file://{tmp_path}/x" and s.embedded_pgdata == tmp_path / "e"
    s = load_settings({"store": "s3://bucket/prefix"}, cwd=tmp_path, environ={})
    assert s.store == "s3://bucket/prefix"


def test_unknown_key_and_bad_values_are_config_errors(tmp_path):
    (tmp_path / "dbrollback.toml").write_text('lock_timeuot = "5s"\n')
    with pytest.raises(ConfigError, match="lock_timeuot"):
        load_settings({}, cwd=tmp_path, environ={})
    (tmp_path / "dbrollback.toml").write_text('lock_timeout = "five seconds"\n')
    with pytest.raises(ConfigError, match="lock_timeout"):
        load_settings({}, cwd=tmp_path, environ={})
    (tmp_path / "dbrollback.toml").write_text("not toml = = =")
    with pytest.raises(ConfigError):
        load_settings({}, cwd=tmp_path, environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("500ms", 0.5), ("2min", 120), ("1h30m", 5400), ("7d", 604800), ("7 days", 604800),
     (3, 3), ("10", 10)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_duration_round_trip():
    for text in ("5s", "500ms", "2min", "7d", "1h"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    "raw",
    ["postgresql://u:pw@h:5432/db", "postgres://u:pw@h/db", "postgresql+psycopg://u:pw@h/db",
     "postgresql+psycopg2://u:pw@h/db"],
)  # fmt: skip
def test_accepted_url_spellings(raw):
    url = parse_database_url(raw)
    assert url.drivername == "postgresql+psycopg" and url.password == "pw"
    assert "pw" not in display_url(url)


def test_redact_masks_urls_and_dsns():
    text = "postgresql://u:p%40ss@h/db and host=h password='x y' and ?password=abc&x=1"
    masked = redact(text)
    assert "p%40ss" not in masked and "x y" not in masked and "abc" not in masked


def test_config_show_reports_sources_and_masks_password(cli, project, monkeypatch):
    monkeypatch.setenv("DBROLLBACK_LOCK_TIMEOUT", "11s")
    (project.root / "dbrollback.toml").write_text('rollback_window = "3d"\n')
    result = cli("config", "show", "--json", "--database-url", "postgresql://u:hunter2@db/app")
    assert result.code == 0
    doc = result.json
    assert doc["database_url"] == {"value": "postgresql://u:***@db/app", "source": "flag"}
    assert doc["lock_timeout"] == {"value": "11s", "source": "DBROLLBACK_LOCK_TIMEOUT"}
    assert doc["rollback_window"] == {"value": "3d", "source": "dbrollback.toml"}
    assert doc["lock_wait"]["source"] == "default"
    human = cli("config", "show", "--database-url", "postgresql://u:hunter2@db/app")
    assert "hunter2" not in human.out and "DBROLLBACK_LOCK_TIMEOUT" in human.out


def test_global_options_before_and_after_subcommand(cli, project, database_url):
    project.add_revision("r1", None, "pass")
    before = cli("--json", "--database-url", database_url, "status")
    after = cli("status", "--json", "--database-url", database_url)
    mixed = cli("--database-url", database_url, "status", "--json")
    for result in (before, after, mixed):
        assert result.code == 0, result.err
        assert result.json["pending"] == [{"revision": "r1", "doc": "r1"}]
    alt = cli("-c", str(project.ini), "--json", "status", "--database-url", database_url,
              cwd=project.root.parent)  # fmt: skip
    assert alt.code == 0 and alt.json["script_heads"] == ["r1"]


def test_libpq_url_encodes_spaces_and_specials_in_credentials() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from dbrollback.urls import libpq_url, parse_database_url

    url = parse_database_url("postgresql://my%20user:p%20w%40d%2F%3A@db.example:6432/my%20db?sslmode=require")
    assert conninfo_to_dict(libpq_url(url)) == {
        "user": "my user", "password": "p w@d/:", "host": "db.example", "port": "6432",
        "dbname": "my db", "sslmode": "require",
    }  # fmt: skip
    socket = parse_database_url("postgresql://postgres@/postgres?host=%2Ftmp%2Fsock%20dir&port=5432")
    assert conninfo_to_dict(libpq_url(socket))["host"] == "/tmp/sock dir"
