"""The embedded default, `db` commands, `init` and `demo` — as a new user meets them."""

from __future__ import annotations

from pathlib import Path

import psycopg

from dbrollback.embedded import EmbeddedServer


def test_db_commands_manage_the_embedded_server(cli, project, monkeypatch, tmp_path):
    pgdata = tmp_path / "own" / "pgdata"
    monkeypatch.setenv("DBROLLBACK_EMBEDDED_PGDATA", str(pgdata))
    try:
        assert cli("db", "status", "--json").json == {
            "pgdata": str(pgdata), "initialized": False, "running": False, "pid": None, "url": None}  # fmt: skip
        started = cli("db", "start", "--json")
        assert started.code == 0 and started.json["running"] is True
        url = cli("db", "url").out.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0] >= "180000"
        assert cli("db", "status", "--json").json["running"] is True
        assert cli("db", "start").code == 0  # idempotent
    finally:
        stopped = cli("db", "stop", "--json")
    assert stopped.json == {"was_running": True, "running": False}
    assert cli("db", "status", "--json").json["running"] is False
    assert cli("db", "stop").out.strip() == "The embedded server was not running."


def test_commands_default_to_the_embedded_server(cli, project, monkeypatch, tmp_path):
    """No URL anywhere (alembic init's placeholder URL counts as none): embedded, said once."""
    project.add_revision("r1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    pgdata = project.root / ".dbrollback" / "pgdata"
    try:
        result = cli("upgrade")
        assert result.code == 0, result.err
        assert result.err.count("embedded PostgreSQL") == 1
        assert pgdata.joinpath("PG_VERSION").is_file()  # default location: .dbrollback/pgdata
        status = cli("status", "--json")
        assert status.json["embedded"] is True and status.json["current_heads"] == ["r1"]
        assert "embedded" not in status.out.split("{", 1)[0]  # --json: one document, nothing else
    finally:
        EmbeddedServer(pgdata).stop()


def test_init_creates_a_ready_project_that_upgrades(cli, tmp_path, database_url):
    target = tmp_path / "newapp"
    result = cli("init", str(target), "--json", cwd=tmp_path)
    assert result.code == 0
    assert result.json["new_project"] is True
    for name in (
        "alembic.ini",
        "dbrollback.toml",
        "migrations/env.py",
        "migrations/script.py.mako",
    ):
        assert (target / name).is_file(), name
    assert 'config.attributes.get("connection")' in (target / "migrations/env.py").read_text()
    (target / "migrations/versions/r1.py").write_text(
        "revision = 'r1'\ndown_revision = None\nfrom alembic import op\nimport sqlalchemy as sa\n"
        "def upgrade():\n    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"
        "def downgrade():\n    op.drop_table('t')\n"
    )
    assert cli("upgrade", "--database-url", database_url, cwd=target).code == 0
    shown = cli("config", "show", "--json", cwd=target).json
    assert shown["lock_timeout"]["source"] == "dbrollback.toml"


def test_init_in_existing_project_only_adds_toml(cli, project):
    before = project.ini.read_text()
    result = cli("init", "--json")
    assert result.code == 0
    assert result.json["new_project"] is False
    assert result.json["created"] == [str(project.root / "dbrollback.toml")]
    assert project.ini.read_text() == before
    again = cli("init", "--json")
    assert again.json["created"] == []


def test_demo_runs_end_to_end(cli, tmp_path):
    result = cli("demo", "--customers", "300", "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    doc = result.json
    assert doc["seeded_rows"]["customers"] == 300
    assert [p["revision"] for p in doc["status"]["pending"]] == ["0010_rename_first_name"]
    assert doc["status"]["current_heads"] == ["0009_drop_newsletter"]
    assert [r["status"] for r in doc["history"]] == ["succeeded", "succeeded"]
    assert len(doc["history"][0]["applied_revisions"]) + len(doc["history"][1]["applied_revisions"]) >= 9
    assert [r["rollback"] for r in doc["history"]] == [{"possible": True, "reason": None}] * 2
    assert not Path(doc["workdir"]).exists()  # cleaned up

    # the full story: the app writes after the lossy release, a dry run, the rollback, verified
    assert doc["app_writes"] == {
        "customers_updated": 5, "customers_inserted": 3, "products_updated": 2, "products_inserted": 2}  # fmt: skip
    dry, real = doc["rollback_dry_run"], doc["rollback"]
    assert (dry["dry_run"], real["dry_run"]) == (True, False)
    upgrade_run = doc["history"][0]["id"]
    assert dry["run_id"] == real["run_id"] == upgrade_run
    assert real["reverted_revisions"][0] == "0009_drop_newsletter" and len(real["reverted_revisions"]) == 6
    counts = [(t["table"], t["restored_rows"], t["reinserted_rows"], t["kept_rows"], t["conflicts"],
               t["lost_writes"], t["verified"]) for t in real["tables"]]  # fmt: skip
    assert counts == [
        ("public.newsletter_signups", 0, 100, 0, 0, 0, True),  # the dropped table: every row back
        ("public.products", 13, 0, 0, 0, 0, True),  # legacy_code: the dropped values back
        ("public.products", 28, 0, 2, 2, 0, True),  # weight_kg: decimals back, the 2 re-weighed kept
        # first/last_name: all saved before the downgrade drops them; lost are only the 3 signed up since
        # (the split's own values are not writes the rollback discards)
        ("public.customers", 0, 0, 0, 0, 3, True),
        ("public.customers", 83, 0, 5, 1, 0, True),  # emails: original case back, the 5 changed kept
    ]
    # the dry run saw the same (it saves nothing, so names no snapshot of the values it would lose)
    unsaved = [{**t, "lost_values_saved_to": None} for t in real["tables"]]
    assert (dry["tables"], dry["schema_matches"], dry["verified"]) == (unsaved, True, True)
    assert (real["schema_matches"], real["verified"]) == (True, True)
    after = {r["id"]: r for r in doc["history_after_rollback"]}
    (rollback_run,) = [r for r in after.values() if r["command"] == "rollback"]
    assert rollback_run["status"] == "succeeded"
    assert after[upgrade_run]["rollback"] == {
        "possible": False,
        "reason": f"rolled back by run {rollback_run['id']}",
    }


def test_demo_text_tells_the_story(cli, tmp_path):
    result = cli("demo", "--customers", "30", cwd=tmp_path)
    assert result.code == 0, result.err
    out = result.out
    assert (
        out.index("rollback --dry-run")
        < out.index("rollback --yes")
        < out.index("History after the rollback")
    )
    assert out.count("Verified: data and schema match") == 2
