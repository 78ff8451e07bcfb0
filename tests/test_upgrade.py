"""upgrade / downgrade against real PostgreSQL: journal, transactions, exit codes."""

from __future__ import annotations

import psycopg
import pytest

from dbrollback import api
from dbrollback.errors import MigrationFailed, UnknownRevision
from dbrollback.settings import load_settings

from .conftest import Project, make_project


def _three_revisions(project: Project) -> None:
    project.add_revision("r1", None, """
        op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
    """, 'op.drop_table("items")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("price", sa.Numeric))',
                         'op.drop_column("items", "price")')  # fmt: skip
    project.add_revision("r3", "r2", """op.execute("INSERT INTO items (id, name) VALUES (1, 'a')")""",
                         """op.execute("DELETE FROM items WHERE id = 1")""")  # fmt: skip


def _heads(db: psycopg.Connection) -> list[str]:
    if db.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,):
        return []
    return [r[0] for r in db.execute("SELECT version_num FROM alembic_version ORDER BY 1")]


@pytest.mark.parametrize("env", ["generic", "attributes"])
def test_upgrade_applies_and_journals_each_revision(tmp_path, database_url, db, env, monkeypatch):
    project = make_project(tmp_path / "p", env=env)
    _three_revisions(project)
    monkeypatch.chdir(project.root)
    result = api.upgrade(load_settings({"database_url": database_url}))

    assert [s.revision for s in result.applied] == ["r1", "r2", "r3"]
    assert _heads(db) == ["r3"]
    assert db.execute("SELECT id, name FROM items").fetchall() == [(1, "a")]
    run = db.execute(
        "SELECT id, status, direction, from_revisions, to_revisions, planned_revisions, finished_at "
        "IS NOT NULL FROM dbrollback.runs"
    ).fetchall()
    assert run == [(result.run_id, "succeeded", "upgrade", [], ["r3"], ["r1", "r2", "r3"], True)]
    steps = db.execute(
        "SELECT seq, revision, phase, status FROM dbrollback.run_steps WHERE run_id = %s ORDER BY seq",
        (result.run_id,),
    ).fetchall()
    assert steps == [(1, "r1", "upgrade", "succeeded"), (2, "r2", "upgrade", "succeeded"),
                     (3, "r3", "upgrade", "succeeded")]  # fmt: skip
    audit = db.execute(
        "SELECT command, run_id, details->>'status' FROM dbrollback.audit ORDER BY id"
    ).fetchall()
    assert audit == [("upgrade", result.run_id, "started"), ("upgrade", result.run_id, "succeeded")]


def test_downgrade_and_relative_targets(project, database_url, db, cli):
    _three_revisions(project)
    assert cli("upgrade", "+2", "--database-url", database_url).code == 0
    assert _heads(db) == ["r2"]
    assert cli("upgrade", "--database-url", database_url).code == 0
    assert cli("downgrade", "-1", "--database-url", database_url).code == 0
    assert _heads(db) == ["r2"]
    assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)
    assert cli("downgrade", "base", "--database-url", database_url).code == 0
    assert _heads(db) == []
    assert db.execute("SELECT to_regclass('items')").fetchone() == (None,)
    phases = db.execute("SELECT direction, planned_revisions FROM dbrollback.runs ORDER BY id").fetchall()
    assert phases == [("upgrade", ["r1", "r2"]), ("upgrade", ["r3"]), ("downgrade", ["r3"]),
                      ("downgrade", ["r2", "r1"])]  # fmt: skip


def test_failing_revision_rolls_back_only_itself(project, database_url, db, cli):
    _three_revisions(project)
    project.add_revision("r4", "r3", """
        op.execute("INSERT INTO items (id, name) VALUES (2, 'written by r4')")
        raise RuntimeError("r4 is broken")
    """)  # fmt: skip
    # The analysis runs r4 on a scratch copy first: it cannot know what r4 does, so by default
    # the upgrade refuses before anything changes, naming the error.
    refused = cli("upgrade", "--database-url", database_url)
    assert refused.code == 3 and "r4 is broken" in refused.err
    assert _heads(db) == []
    result = cli("upgrade", "--no-snapshot", "--database-url", database_url)

    assert result.code == 4
    assert "r4" in result.err and "r4 is broken" in result.err
    assert _heads(db) == ["r3"]  # r1..r3 committed, r4 rolled back
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,)]
    run = db.execute("SELECT status, failed_revision, error, to_revisions FROM dbrollback.runs").fetchone()
    assert run == ("failed", "r4", "r4 is broken", ["r3"])
    steps = db.execute("SELECT revision, status FROM dbrollback.run_steps ORDER BY seq").fetchall()
    assert steps == [
        ("r1", "succeeded"),
        ("r2", "succeeded"),
        ("r3", "succeeded"),
        ("r4", "failed"),
    ]


def test_failure_json_names_revision_and_applied(project, database_url, cli):
    _three_revisions(project)
    project.add_revision("r4", "r3", 'op.execute("SELECT 1/0")')
    result = cli("--json", "upgrade", "--database-url", database_url)
    assert result.code == 4
    doc = result.json
    assert doc["error"] == "migration_failed"
    assert doc["failed_revision"] == "r4"
    assert doc["applied"] == ["r1", "r2", "r3"]


def test_unknown_revision_names_closest_and_changes_nothing(project, database_url, db, cli):
    _three_revisions(project)
    result = cli("upgrade", "r9", "--database-url", database_url)
    assert result.code == 2
    assert "r9" in result.err and "Closest known" in result.err
    assert "r1" in result.err or "r2" in result.err or "r3" in result.err
    # Nothing was created: no catalog, no version table.
    assert db.execute("SELECT to_regnamespace('dbrollback'), to_regclass('alembic_version')").fetchone() == (
        None,
        None,
    )


def test_unknown_revision_api_suggestions(project, database_url):
    _three_revisions(project)
    settings = load_settings({"database_url": database_url, "alembic_config": str(project.ini)})
    with pytest.raises(UnknownRevision) as info:
        api.upgrade(settings, "r22")
    assert "r2" in info.value.fields["suggestions"]


def test_nothing_pending_is_a_recorded_noop(project, database_url, db, cli):
    _three_revisions(project)
    assert cli("upgrade", "--database-url", database_url).code == 0
    again = cli("upgrade", "--database-url", database_url)
    assert again.code == 0 and "Nothing to do" in again.out
    assert db.execute("SELECT count(*) FROM dbrollback.runs WHERE status = 'succeeded'").fetchone() == (2,)


def test_dry_run_changes_nothing(project, database_url, db, cli):
    _three_revisions(project)
    result = cli("upgrade", "--dry-run", "--json", "--database-url", database_url)
    assert result.code == 0
    assert [s["revision"] for s in result.json["planned"]] == ["r1", "r2", "r3"]
    assert db.execute("SELECT to_regclass('items'), to_regnamespace('dbrollback')").fetchone() == (
        None,
        None,
    )


def test_branches_and_labels_behave_as_in_alembic(project, database_url, db, cli):
    project.add_revision("base1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                         'op.drop_table("t")')  # fmt: skip
    project.add_revision("a1", "base1", 'op.add_column("t", sa.Column("a", sa.Text))',
                         'op.drop_column("t", "a")', branch_labels=("alpha",))  # fmt: skip
    project.add_revision("a2", "a1", 'op.add_column("t", sa.Column("a2", sa.Text))',
                         'op.drop_column("t", "a2")')  # fmt: skip
    project.add_revision("b1", "base1", 'op.add_column("t", sa.Column("b", sa.Text))',
                         'op.drop_column("t", "b")', branch_labels=("beta",))  # fmt: skip

    assert cli("upgrade", "alpha@head", "--database-url", database_url).code == 0
    assert _heads(db) == ["a2"]
    status = cli("status", "--json", "--database-url", database_url).json
    assert [p["revision"] for p in status["pending"]] == ["b1"]
    assert sorted(status["script_heads"]) == ["a2", "b1"]

    assert cli("upgrade", "heads", "--database-url", database_url).code == 0
    assert _heads(db) == ["a2", "b1"]
    assert cli("downgrade", "alpha@-1", "--database-url", database_url).code == 0
    assert _heads(db) == ["a1", "b1"]
    # "head" is ambiguous with two heads: Alembic refuses, so do we (usage error).
    assert cli("upgrade", "head", "--database-url", database_url).code == 2


def test_revision_prefix_is_accepted(project, database_url, db, cli):
    project.add_revision(
        "abc123", None, 'op.create_table("p", sa.Column("id", sa.Integer, primary_key=True))'
    )
    assert cli("upgrade", "abc", "--database-url", database_url).code == 0
    assert _heads(db) == ["abc123"]


def test_statement_timeout_applies_to_revisions(project, database_url, db, cli):
    project.add_revision("slow", None, 'op.execute("SELECT pg_sleep(3)")')
    result = cli("upgrade", "--statement-timeout", "200ms", "--database-url", database_url)
    assert result.code == 4
    assert "statement timeout" in result.err
    assert _heads(db) == []


def test_revision_can_override_timeouts(project, database_url, db, cli):
    project.add_revision("r1", None, """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lt, "
                   "current_setting('statement_timeout') AS st")
    """, header='dbrollback_options = {"lock_timeout": "42s", "statement_timeout": "7min"}')  # fmt: skip
    project.add_revision("r2", "r1", """
        op.execute("INSERT INTO seen SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
    """)  # fmt: skip
    assert cli("upgrade", "--lock-timeout", "3s", "--database-url", database_url).code == 0
    assert db.execute("SELECT lt, st FROM seen").fetchall() == [("42s", "7min"), ("3s", "0")]


def test_api_raises_typed_error(project, database_url):
    project.add_revision("x1", None, 'raise ValueError("nope")')
    settings = load_settings({"database_url": database_url, "alembic_config": str(project.ini),
                              "snapshot": "never"})  # fmt: skip
    with pytest.raises(MigrationFailed) as info:
        api.upgrade(settings)
    assert info.value.exit_code == 4
    assert info.value.fields["failed_revision"] == "x1"


def test_invalid_revision_options_fail_before_anything_runs(project, database_url, db, cli):
    project.add_revision("r1", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    project.add_revision("r2", "r1", "pass", header='dbrollback_options = {"lock_timeout": "soon"}')
    result = cli("upgrade", "--database-url", database_url)
    assert result.code == 2
    assert "r2" in result.err and "dbrollback_options" in result.err
    assert db.execute("SELECT to_regclass('a'), to_regnamespace('dbrollback')").fetchone() == (None, None)
    project.add_revision("r2", "r1", "pass", header='dbrollback_options = {"lock_timout": "5s"}')
    assert cli("upgrade", "--database-url", database_url).code == 2


def test_zero_lock_timeout_means_no_limit(project, database_url, db, cli):
    project.add_revision("r1", None, """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lt")
    """)  # fmt: skip
    assert cli("upgrade", "--lock-timeout", "0", "--database-url", database_url).code == 0
    assert db.execute("SELECT lt FROM seen").fetchall() == [("0",)]
