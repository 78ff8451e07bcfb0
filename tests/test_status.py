"""status and history: what a DBA on call reads."""

from __future__ import annotations


def test_status_json_contract(project, cli, database_url):
    project.add_revision("r1", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
                         doc="create a")  # fmt: skip
    project.add_revision("r2", "r1", 'op.add_column("a", sa.Column("b", sa.Text))', doc="add b")

    fresh = cli("status", "--json", "--database-url", database_url)
    assert fresh.code == 0
    doc = fresh.json
    assert doc["current_heads"] == []
    assert doc["pending"] == [
        {"revision": "r1", "doc": "create a"},
        {"revision": "r2", "doc": "add b"},
    ]
    assert doc["last_run"] is None and doc["runs"] == [] and doc["interrupted_runs"] == []

    assert cli("upgrade", "r1", "--database-url", database_url).code == 0
    assert cli("upgrade", "--database-url", database_url).code == 0
    doc = cli("status", "--json", "--database-url", database_url).json
    assert doc["current_heads"] == ["r2"] and doc["pending"] == [] and doc["up_to_date"] is True
    assert [(r["id"], r["status"]) for r in doc["runs"]] == [(2, "succeeded"), (1, "succeeded")]
    assert doc["last_run"]["id"] == 2 and doc["last_run"]["applied_revisions"] == ["r2"]
    assert doc["lock_holder"] is None


def test_status_human_output(project, cli, database_url):
    project.add_revision("r1", None, "pass", doc="first")
    result = cli("status", "--database-url", database_url)
    assert result.code == 0
    assert "Pending revisions (1)" in result.out and "first" in result.out
    assert cli("upgrade", "--database-url", database_url).code == 0
    result = cli("status", "--database-url", database_url)
    assert "Up to date" in result.out and "Current heads: r1" in result.out


def test_status_does_not_create_anything(project, cli, database_url, db):
    project.add_revision("r1", None, "pass")
    assert cli("status", "--database-url", database_url).code == 0
    assert db.execute("SELECT to_regnamespace('dbrollback'), to_regclass('alembic_version')").fetchone() == (
        None,
        None,
    )


def test_history_newest_first_with_failures(project, cli, database_url):
    project.add_revision("r1", None, "pass")
    project.add_revision("r2", "r1", 'raise RuntimeError("bad r2")')
    assert cli("upgrade", "r1", "--database-url", database_url, "--actor", "alice").code == 0
    assert cli("upgrade", "--no-snapshot", "--database-url", database_url, "--actor", "bob").code == 4
    doc = cli("history", "--json", "--database-url", database_url).json
    runs = doc["runs"]
    assert [(r["id"], r["status"], r["actor"]) for r in runs] == [
        (2, "failed", "bob"),
        (1, "succeeded", "alice"),
    ]
    assert runs[0]["failed_revision"] == "r2" and runs[0]["error"] == "bad r2"
    assert "upgrade" in runs[0]["command_line"]
    human = cli("history", "--database-url", database_url)
    assert human.out.index("bad r2") < human.out.index("alice")


def test_history_on_database_without_catalog(cli, project, database_url):
    result = cli("history", "--database-url", database_url)
    assert result.code == 0 and "No runs" in result.out
