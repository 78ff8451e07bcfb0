"""Bad input: a clear error, the contract's exit code, no traceback, no change, no password."""

from __future__ import annotations

import psycopg

SECRET = "s3cr3t-Pa55"


def test_no_alembic_ini_suggests_init(cli, tmp_path, database_url):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("upgrade", "--database-url", database_url, cwd=empty)
    assert result.code == 2
    assert "dbrollback init" in result.err
    assert "Traceback" not in result.err


def test_non_postgresql_url_is_refused(cli, project):
    for url in ("mysql://root:" + SECRET + "@localhost/app", "sqlite:///app.db"):
        result = cli("status", "--database-url", url)
        assert result.code == 2
        assert "PostgreSQL" in result.err
        assert SECRET not in result.err + result.out


def test_unparseable_url_is_a_usage_error(cli, project):
    result = cli("status", "--database-url", "not a url at all")
    assert result.code == 2
    assert "Traceback" not in result.err


def test_unreachable_database_masks_password(cli, project, tmp_path):
    url = f"postgresql://app:{SECRET}@/nodb?host={tmp_path}/nosocket&port=5999"
    result = cli("upgrade", "--database-url", url)
    assert result.code == 2
    assert "Cannot connect" in result.err
    assert SECRET not in result.err and SECRET not in result.out
    assert "***" in result.err
    as_json = cli("--json", "upgrade", "--database-url", url)
    assert as_json.code == 2
    assert as_json.json["error"] == "connection"
    assert SECRET not in as_json.out


def test_unreachable_tcp_host_masks_password(cli, project):
    url = f"postgres://app:{SECRET}@127.0.0.1:1/app?connect_timeout=2"
    result = cli("status", "--database-url", url)
    assert result.code == 2
    assert SECRET not in result.err + result.out


def test_password_never_reaches_journal_audit_or_output(project, cli, database_url, db):
    project.add_revision("r1", None, "pass")
    # The embedded server trusts local connections, so any password is accepted.
    url = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    result = cli("upgrade", "--database-url", url)
    assert result.code == 0, result.err
    status = cli("status", "--database-url", url)
    history = cli("history", "--json", "--database-url", url)
    for text in (result.out, result.err, status.out, status.err, history.out):
        assert SECRET not in text
    dump = db.execute(
        "SELECT (SELECT string_agg(r::text, ' ') FROM dbrollback.runs r) || "
        "(SELECT string_agg(a::text, ' ') FROM dbrollback.audit a)"
    ).fetchone()
    assert dump is not None and SECRET not in dump[0]


def test_debug_shows_traceback_only_when_asked(cli, project, tmp_path):
    url = f"postgresql://app:{SECRET}@/nodb?host={tmp_path}/nosocket"
    plain = cli("status", "--database-url", url)
    debug = cli("status", "--debug", "--database-url", url)
    assert "Traceback" not in plain.err
    assert "Traceback" in debug.err
    assert debug.code == plain.code == 2
    assert SECRET not in debug.err


def test_unknown_option_and_command_exit_2(cli, project):
    assert cli("upgrade", "--no-such-flag").code == 2
    assert cli("frobnicate").code == 2


def test_audit_is_append_only(project, cli, database_url, db):
    project.add_revision("r1", None, "pass")
    assert cli("upgrade", "--database-url", database_url).code == 0
    for statement in ("UPDATE dbrollback.audit SET actor = 'x'", "DELETE FROM dbrollback.audit",
                      "TRUNCATE dbrollback.audit"):  # fmt: skip
        try:
            db.execute(statement)
        except psycopg.errors.RaiseException as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError(f"{statement} was allowed")
    assert db.execute("SELECT count(*) FROM dbrollback.audit").fetchone() == (2,)  # started, succeeded


def test_json_mode_usage_error_is_a_json_document(cli, project):
    result = cli("--json", "downgrade")
    assert result.code == 2
    assert result.json["error"] == "usage"


def test_global_options_on_command_groups(cli, project, monkeypatch, tmp_path):
    monkeypatch.setenv("DBROLLBACK_EMBEDDED_PGDATA", str(tmp_path / "none"))
    for args in (("db", "--json", "status"), ("--json", "db", "status"), ("db", "status", "--json")):
        result = cli(*args)
        assert result.code == 0 and result.json["running"] is False
    assert cli("config", "--json", "show").json["lock_wait"]["value"] == "1min"
