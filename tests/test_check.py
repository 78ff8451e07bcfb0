"""`dbrollback check`: up → down → up of every revision on a throwaway PostgreSQL, with generated rows."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbrollback.check.target import CHECK_DATABASE_PREFIX
from dbrollback.embedded import EmbeddedServer

from .conftest import Project

SHOP = Path(__file__).parents[1] / "migrations_examples" / "shop"

ITEMS = """
op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False),
                sa.Column("price", sa.Numeric(10, 2)), sa.Column("legacy", sa.Text, nullable=False))
"""


@pytest.fixture
def embedded(server_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the session's embedded server the one `check` uses by default (no second server)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    if not EmbeddedServer(Path(row[0])).status().running:
        pytest.skip("needs the embedded test server (DBROLLBACK_TEST_DATABASE_URL names another one)")
    monkeypatch.setenv("DBROLLBACK_EMBEDDED_PGDATA", row[0])
    return server_url


def _check_databases(server_url: str) -> list[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (CHECK_DATABASE_PREFIX + "%",)
        )
        return [r[0] for r in rows.fetchall()]


def _by_revision(document: Any) -> dict[str, dict[str, Any]]:
    return {r["revision"]: r for r in document["revisions"]}


def _messages(revision: dict[str, Any]) -> list[str]:
    return [d["message"] for d in revision["schema_differences"]]


def test_correct_revisions_pass_and_the_throwaway_database_is_dropped(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))',
                         'op.drop_column("items", "note")')  # fmt: skip
    project.add_revision("r3", "r2", 'op.create_index("ix_items_name", "items", ["name"])',
                         'op.drop_index("ix_items_name", table_name="items")')  # fmt: skip

    result = cli("check")

    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("Checked on throwaway database dbrb_check_")
    assert lines[1:] == [
        f"ok {r} (migrations/versions/{r}.py:5): upgrade ok · downgrade ok · schema ok · data ok · upgrade again ok"
        for r in ("r1", "r2", "r3")
    ] + ["3 ok, 0 failed, 0 not checked"]
    assert _check_databases(embedded) == []


def test_lossy_downgrade_reports_the_lost_column_and_rows(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.drop_column("items", "legacy")',
                         'op.add_column("items", sa.Column("legacy", sa.Text, nullable=True))')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 1
    document: Any = result.json
    r1, r2 = document["revisions"]
    assert r1["status"] == "ok"
    assert (r2["status"], r2["upgrade"], r2["downgrade"], r2["reupgrade"]) == ("failed", "ok", "ok", "ok")
    assert r2["data_roundtrip"] == "lost"
    assert [(lost["table"], lost["stage"], lost["columns"], lost["rows"], lost["missing_rows"], lost["compared_rows"])
            for lost in r2["lost"]] == [("public.items", "before_upgrade", ["legacy"], 300, 0, 300)]  # fmt: skip
    assert r2["lost"][0]["message"] == (
        "public.items (rows written before the upgrade): values of legacy lost or changed in 300 of 300 rows"
    )
    # The column came back, but nullable.
    assert _messages(r2) == [
        "column public.items.legacy: nullable NOT NULL before the upgrade, NULL after the downgrade"
    ]
    assert document["summary"] == {"ok": 1, "failed": 1, "not_checked": 0}


def test_enum_left_behind_names_the_type_and_the_later_revisions_are_still_checked(
    project: Project, cli, embedded
):
    project.add_revision("r1", None, """
        op.create_table("people", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("mood", sa.Enum("happy", "sad", name="mood"), nullable=False))
    """, 'op.drop_table("people")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.add_column("people", sa.Column("age", sa.Integer))',
                         'op.drop_column("people", "age")')  # fmt: skip

    result = cli("check", "--json")

    assert result.code == 1
    r1, r2 = _by_revision(result.json)["r1"], _by_revision(result.json)["r2"]
    assert r1["schema_roundtrip"] == "diff"
    assert _messages(r1) == ["enum type public.mood exists after the downgrade but not before the upgrade"]
    assert r1["schema_differences"][0]["after"] == "values: 'happy', 'sad'"
    assert r1["reupgrade"] == "error"
    assert 'type "mood" already exists' in r1["error"]
    # The database was rebuilt without r1's leftovers, so r2 is checked on its own merits.
    assert r2["status"] == "ok"
    assert _check_databases(embedded) == []


def test_empty_downgrade_and_a_type_left_changed_are_schema_differences(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.alter_column("items", "id", type_=sa.BigInteger, existing_type=sa.Integer)',
                         "pass")  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r2 = _by_revision(result.json)["r2"]
    assert result.code == 1
    assert r2["schema_roundtrip"] == "diff"
    assert _messages(r2) == [
        "column public.items.id: type integer before the upgrade, bigint after the downgrade"
    ]
    assert r2["schema_differences"][0] == {
        "object": "column public.items.id", "change": "changed", "attribute": "type", "before": "integer",
        "after": "bigint", "message": r2["schema_differences"][0]["message"],
    }  # fmt: skip
    # Same values, other type: not data loss.
    assert r2["data_roundtrip"] == "ok"


def test_empty_downgrade_after_add_column(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass")

    result = cli("check", "--database-url", database_url, "--json")

    r2 = _by_revision(result.json)["r2"]
    assert result.code == 1
    assert _messages(r2) == ["column public.items.note exists after the downgrade but not before the upgrade"]
    assert r2["reupgrade"] == "error"
    assert 'column "note" of relation "items" already exists' in r2["error"]


def test_every_revision_is_reported_after_early_failures(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass")
    project.add_revision("r3", "r2", 'op.add_column("items", sa.Column("x", sa.Integer))',
                         'raise RuntimeError("no way back")')  # fmt: skip
    project.add_revision("r4", "r3", 'op.create_table("t4", sa.Column("id", sa.Integer, primary_key=True))',
                         'op.drop_table("t4")')  # fmt: skip

    result = cli("check", "--json")

    revisions = _by_revision(result.json)
    assert list(revisions) == ["r1", "r2", "r3", "r4"]
    assert [revisions[r]["status"] for r in revisions] == ["ok", "failed", "failed", "ok"]
    r3 = revisions["r3"]
    assert (r3["upgrade"], r3["downgrade"], r3["schema_roundtrip"], r3["reupgrade"]) == ("ok", "error", "skipped",
                                                                                        "skipped")  # fmt: skip
    assert r3["error"] == "downgrade failed: RuntimeError: no way back"
    assert result.code == 1


def test_a_configured_database_cannot_be_replaced_so_later_revisions_are_not_checked(project: Project, cli,
                                                                                      database_url):  # fmt: skip
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass")
    project.add_revision("r3", "r2", 'op.add_column("items", sa.Column("x", sa.Integer))',
                         'op.drop_column("items", "x")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r3 = _by_revision(result.json)["r3"]
    assert r3["status"] == "not_checked"
    assert r3["error"].startswith("r2 left the database in a state the next revisions cannot start from")
    assert result.json["summary"] == {"ok": 1, "failed": 1, "not_checked": 1}


def test_refuses_a_database_with_tables_and_changes_nothing(project: Project, cli, database_url, db):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    db.execute('CREATE TABLE "real data" (id int PRIMARY KEY, v text)')
    db.execute("""INSERT INTO "real data" VALUES (1, 'keep me')""")

    result = cli("check", "--database-url", database_url)
    as_json = cli("check", "--database-url", database_url, "--json")

    assert result.code == 3
    assert '"real data"' in result.err and "Nothing was changed" in result.err
    assert as_json.code == 3
    assert as_json.json["error"] == "refused"
    assert as_json.json["tables"] == ['public."real data"']
    assert db.execute('SELECT * FROM "real data"').fetchall() == [(1, "keep me")]
    tables = db.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
    )
    assert tables.fetchall() == [("real data",)]


def test_embedded_flag_ignores_a_configured_database(project: Project, cli, database_url, db, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    db.execute("CREATE TABLE untouched (id int)")

    result = cli("check", "--database-url", database_url, "--embedded")

    assert result.code == 0, result.err
    assert db.execute("SELECT to_regclass('items'), to_regclass('alembic_version')").fetchone() == (
        None,
        None,
    )


def test_github_format_points_at_the_revision_line(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.drop_column("items", "legacy")',
                         'op.add_column("items", sa.Column("legacy", sa.Text))')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--format", "github")

    assert result.code == 1
    assert result.out.splitlines() == [
        "::error file=migrations/versions/r2.py,line=5,title=dbrollback check%3A r2 failed::"
        "upgrade ok · downgrade ok · schema diff · data lost · upgrade again ok"
        "%0Aschema: column public.items.legacy: nullable NOT NULL before the upgrade, NULL after the downgrade"
        "%0Adata: public.items (rows written before the upgrade): values of legacy lost or changed in 300 of 300 rows"
    ]
    assert "1 ok, 1 failed, 0 not checked" in result.err


def test_json_flag_and_json_format_agree(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.execute("UPDATE items SET name = lower(name)")', "pass")

    first = cli("check", "--json")
    second = cli("check", "--format", "json", "--seed", "0")

    assert first.code == second.code == 1
    a, b = first.json, second.json
    assert a["database"] != b["database"]  # two throwaway databases
    a["database"] = b["database"] = ""
    assert a == b  # same seed, same rows, same findings
    lost = _by_revision(a)["r2"]["lost"]
    assert [(x["table"], x["columns"], x["compared_rows"]) for x in lost] == [("public.items", ["name"], 300)]
    assert 0 < lost[0]["changed_rows"] <= 300


def test_odd_identifiers_seed_and_compare(project: Project, cli, database_url, db):
    project.add_revision("r1", None, """
        op.execute('CREATE SCHEMA "sch; ema"')
        op.create_table('pa"rent; tä ble', sa.Column("ïd", sa.BigInteger, sa.Identity(), primary_key=True),
                        sa.Column('co"l; x', sa.String(12), nullable=False, unique=True),
                        sa.Column("with space", sa.Numeric(5, 2)), schema="sch; ema")
        op.create_table("child 1", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("pa'rent", sa.BigInteger, sa.ForeignKey('sch; ema.pa"rent; tä ble.ïd'),
                                  nullable=False),
                        sa.Column("%s %(x)s", sa.Text))
    """, """
        op.drop_table("child 1")
        op.drop_table('pa"rent; tä ble', schema="sch; ema")
        op.execute('DROP SCHEMA "sch; ema"')
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.drop_column("child 1", "%s %(x)s")',
                         'op.add_column("child 1", sa.Column("%s %(x)s", sa.Text))')  # fmt: skip
    project.add_revision("r3", "r2", 'op.create_index("ix odd", "child 1", ["pa\'rent"])',
                         'op.drop_index("ix odd", table_name="child 1")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    revisions = _by_revision(result.json)
    assert [revisions[r]["status"] for r in revisions] == ["ok", "failed", "ok"], result.out
    [lost] = revisions["r2"]["lost"]
    assert (lost["table"], lost["columns"], lost["compared_rows"]) == ('public."child 1"', ["%s %(x)s"], 300)
    assert 200 < lost["changed_rows"] < 300  # a tenth of the generated values are NULL, and NULL comes back
    assert result.json["notes"] == []
    # The database is left at the last revision with the generated rows, which honour the FK.
    parents = db.execute('SELECT count(*) FROM "sch; ema"."pa""rent; tä ble"').fetchone()
    children = db.execute("""SELECT count(*), count(DISTINCT "pa'rent") FROM "child 1" """).fetchone()
    assert parents is not None and children is not None
    assert parents[0] >= 300 and children[0] >= 300 and children[1] > 1


def test_foreign_keys_are_seeded_parents_first(project: Project, cli, database_url, db):
    project.add_revision("r0", None, 'op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))',
                         'op.drop_table("parent")')  # fmt: skip
    project.add_revision("r1", "r0", """
        op.create_table("child", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("parent_id", sa.Integer, sa.ForeignKey("parent.id"), nullable=False),
                        sa.Column("status", sa.Text, nullable=False),
                        sa.CheckConstraint("status IN ('new', 'paid')", name="ck_status"))
        op.create_table("profile", sa.Column("id", sa.Integer, sa.ForeignKey("parent.id"), primary_key=True),
                        sa.Column("bio", sa.Text))
        op.create_table("node", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("up", sa.Integer, sa.ForeignKey("node.id")))
    """, 'op.drop_table("node")\nop.drop_table("profile")\nop.drop_table("child")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.create_index("ix_child_parent", "child", ["parent_id"])',
                         'op.drop_index("ix_child_parent", table_name="child")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 0, result.out
    assert result.json["notes"] == []
    counts = db.execute("""
        SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child),
               (SELECT count(DISTINCT parent_id) FROM child), (SELECT count(*) FROM profile),
               (SELECT count(*) FROM node WHERE up IS NOT NULL),
               (SELECT count(*) FROM child WHERE status NOT IN ('new', 'paid'))
    """).fetchone()
    assert counts is not None
    parents, children, distinct_parents, profiles, linked_nodes, bad_status = counts
    # r2 starts from r1's tables seeded (300 rows each; the parent kept its 360) and adds 60 to each.
    assert (parents, children, profiles, bad_status) == (420, 360, 360, 0)
    assert distinct_parents > 100 and linked_nodes > 100


def test_data_written_after_the_upgrade_and_lost_by_the_downgrade(project: Project, cli, database_url):
    project.add_revision("r1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), '
                                     'sa.Column("code", sa.String(10), nullable=False))',
                         'op.drop_table("t")')  # fmt: skip
    project.add_revision("r2", "r1", """
        op.alter_column("t", "code", type_=sa.String(40), existing_type=sa.String(10))
    """, """
        op.alter_column("t", "code", type_=sa.String(10), existing_type=sa.String(40),
                        postgresql_using="left(code, 10)")
    """)  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r2 = _by_revision(result.json)["r2"]
    assert r2["schema_roundtrip"] == "ok"
    [lost] = r2["lost"]
    assert (lost["stage"], lost["columns"], lost["compared_rows"]) == ("after_upgrade", ["code"], 60)
    assert 0 < lost["changed_rows"] <= 60


def test_upgrade_failing_on_generated_nulls_is_retried_on_rows_without_nulls(project: Project, cli,
                                                                            database_url, db):  # fmt: skip
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.alter_column("items", "price", nullable=False, existing_type=sa.Numeric)',
                         'op.alter_column("items", "price", nullable=True, existing_type=sa.Numeric)')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r2 = _by_revision(result.json)["r2"]
    assert result.code == 0
    assert (r2["status"], r2["data_roundtrip"], r2["unverified"]) == ("ok", "ok", [])
    assert r2["notes"] == [
        'the upgrade failed on the generated rows (column "price" of relation "items" contains null values) '
        "and passed on new rows without NULLs in nullable columns; this revision was checked on those"
    ]
    # Checked on rows, not on empty tables: the 300 reseeded rows plus the 60 added after the upgrade.
    assert db.execute("SELECT count(*), count(price) FROM items").fetchone() == (360, 360)


def test_upgrade_failing_on_nulls_that_also_drops_a_column_shows_the_loss(
    project: Project, cli, database_url
):
    """The reviewer's case: the retry used to empty the tables and report "data ok" with a note."""
    from dbrollback.lint import lint_paths

    project.add_revision("m1", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True), '
                                     'sa.Column("c", sa.Integer, nullable=True), sa.Column("legacy", sa.Text))',
                         'op.drop_table("a")')  # fmt: skip
    project.add_revision("m2", "m1", """
        op.drop_column("a", "legacy")
        op.alter_column("a", "c", nullable=False, existing_type=sa.Integer())
    """, """
        op.alter_column("a", "c", nullable=True, existing_type=sa.Integer())
        op.add_column("a", sa.Column("legacy", sa.Text))
    """)  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    m2 = _by_revision(result.json)["m2"]
    assert result.code == 1
    assert (m2["status"], m2["upgrade"], m2["data_roundtrip"]) == ("failed", "ok", "lost")
    [lost] = m2["lost"]
    assert (lost["table"], lost["stage"], lost["columns"], lost["compared_rows"]) == (
        "public.a", "before_upgrade", ["legacy"], 300)  # fmt: skip
    assert lost["changed_rows"] == 300  # no NULLs among the rows the upgrade passed on
    assert "passed on new rows without NULLs" in m2["notes"][0]
    flagged = {f.revision for f in lint_paths([project.versions]) if f.rule == "downgrade-loses-data"}
    assert "m2" in flagged


def test_upgrade_passing_only_on_empty_tables_leaves_the_data_round_trip_unverified(project: Project, cli,
                                                                                    database_url):  # fmt: skip
    project.add_revision("b1", None, 'op.create_table("acc", sa.Column("id", sa.Integer, primary_key=True), '
                                     'sa.Column("name", sa.String(30), nullable=False), sa.Column("note", sa.Text))',
                         'op.drop_table("acc")')  # fmt: skip
    project.add_revision("b3", "b1", 'op.alter_column("acc", "name", type_=sa.String(10), existing_type=sa.String(30))',
                         'op.alter_column("acc", "name", type_=sa.String(30), existing_type=sa.String(10))')  # fmt: skip

    as_json = cli("check", "--database-url", database_url, "--json")
    b3 = _by_revision(as_json.json)["b3"]

    assert as_json.code == 1
    assert (b3["status"], b3["upgrade"], b3["schema_roundtrip"], b3["reupgrade"]) == (
        "failed",
        "ok",
        "ok",
        "ok",
    )
    assert (b3["data_roundtrip"], b3["lost"]) == ("unverified", [])
    [reason] = b3["unverified"]
    assert reason.startswith("the upgrade fails on rows the schema before it allows (value too long for type "
                             "character varying(10)) and passed only on empty tables")  # fmt: skip
    assert b3["notes"] == []
    assert as_json.json["summary"] == {"ok": 1, "failed": 1, "not_checked": 0}


def test_unverified_data_in_text_output(project: Project, cli, database_url):
    project.add_revision("b1", None, 'op.create_table("acc", sa.Column("id", sa.Integer, primary_key=True), '
                                     'sa.Column("name", sa.String(30), nullable=False))',
                         'op.drop_table("acc")')  # fmt: skip
    project.add_revision("b3", "b1", 'op.alter_column("acc", "name", type_=sa.String(10), existing_type=sa.String(30))',
                         'op.alter_column("acc", "name", type_=sa.String(30), existing_type=sa.String(10))')  # fmt: skip

    result = cli("check", "--database-url", database_url)

    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[2] == ("FAILED b3 (migrations/versions/b3.py:5): upgrade ok · downgrade ok · schema ok · "
                        "data unverified · upgrade again ok")  # fmt: skip
    assert lines[3].startswith("    data unverified: the upgrade fails on rows the schema before it allows")
    assert lines[-1] == "1 ok, 1 failed, 0 not checked"


def test_branches_are_checked_in_topological_order(project: Project, cli, embedded):
    project.add_revision("a", None, ITEMS, 'op.drop_table("items")')
    project.add_revision(
        "b", "a", 'op.add_column("items", sa.Column("b", sa.Text))', 'op.drop_column("items", "b")'
    )
    project.add_revision(
        "c", "a", 'op.add_column("items", sa.Column("c", sa.Text))', 'op.drop_column("items", "c")'
    )
    project.add_revision("m", ("b", "c"), "pass", "pass")
    project.add_revision("d", "m", 'op.execute("DELETE FROM items WHERE id % 2 = 0")', "pass")

    result = cli("check", "--json")

    order = [r["revision"] for r in result.json["revisions"]]
    assert order[0] == "a" and set(order[1:3]) == {"b", "c"} and order[3:] == ["m", "d"]
    statuses = {r["revision"]: r["status"] for r in result.json["revisions"]}
    assert statuses == {"a": "ok", "b": "ok", "c": "ok", "m": "ok", "d": "failed"}
    [lost] = _by_revision(result.json)["d"]["lost"]
    assert lost["columns"] == [] and lost["missing_rows"] == lost["rows"] > 100


def test_from_and_to_select_the_revisions(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass")
    project.add_revision(
        "r3", "r2", 'op.add_column("items", sa.Column("x", sa.Integer))', 'op.drop_column("items", "x")'
    )

    only_r3 = cli("check", "--database-url", database_url, "--from", "r3", "--json")
    unknown = cli("check", "--database-url", database_url, "--from", "nope")
    backwards = cli("check", "--database-url", database_url, "--from", "r3", "--to", "r1")

    assert only_r3.code == 0
    assert [r["revision"] for r in only_r3.json["revisions"]] == ["r3"]
    assert unknown.code == 2 and "nope" in unknown.err
    assert backwards.code == 2 and "nothing to check" in backwards.err


def test_from_to_a_middle_revision(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass")
    project.add_revision("r3", "r2", 'op.add_column("items", sa.Column("x", sa.Integer))', "pass")

    result = cli("check", "--database-url", database_url, "--to", "r1", "--json")

    assert result.code == 0
    assert [r["revision"] for r in result.json["revisions"]] == ["r1"]


def test_env_py_that_connects_elsewhere_is_refused(project: Project, cli, embedded, database_url, db):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    env = project.root / "migrations" / "env.py"
    source = env.read_text()
    assert "engine_from_config(" in source
    # An env.py that builds its own engine from somewhere else (here: another database).
    env.write_text(source.replace("connectable = engine_from_config(", "connectable = engine_from_config(\n"
                                  f"        {{'sqlalchemy.url': {_sa(database_url)!r}}}, prefix='sqlalchemy.'"
                                  ") if True else engine_from_config("))  # fmt: skip

    result = cli("check")

    assert result.code == 3, result.err
    assert "env.py connected to another database" in result.err
    assert db.execute("SELECT to_regclass('alembic_version'), to_regclass('items')").fetchone() == (
        None,
        None,
    )
    assert _check_databases(embedded) == []


def _sa(libpq_url: str) -> str:
    return "postgresql+psycopg://" + libpq_url.split("://", 1)[1]


def test_shop_example(project: Project, cli, database_url):
    shop = project.root / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("__pycache__"))

    result = cli("check", "-c", str(shop / "alembic.ini"), "--database-url", database_url, "--json")

    assert result.code == 1
    revisions = _by_revision(result.json)
    assert {r: v["status"] for r, v in revisions.items()} == {
        "0001_create_tables": "ok", "0002_add_customer_phone": "ok", "0003_index_orders": "ok",
        "0004_normalise_emails": "failed", "0005_split_full_name": "ok", "0006_weight_to_integer": "failed",
        "0007_drop_legacy_code": "failed", "0008_add_order_notes": "ok", "0009_drop_newsletter": "failed",
        "0010_rename_first_name": "ok",
    }  # fmt: skip
    lost = {r: [(x["table"], x["stage"], x["columns"], x["missing_rows"]) for x in v["lost"]]
            for r, v in revisions.items() if v["lost"]}  # fmt: skip
    assert lost == {
        "0004_normalise_emails": [("public.customers", "before_upgrade", ["email"], 0)],
        "0006_weight_to_integer": [("public.products", "before_upgrade", ["weight_kg"], 0)],
        "0007_drop_legacy_code": [("public.products", "before_upgrade", ["legacy_code"], 0)],
        "0009_drop_newsletter": [("public.newsletter_signups", "before_upgrade", [],
                                  revisions["0009_drop_newsletter"]["lost"][0]["compared_rows"])],
    }  # fmt: skip
    assert all(not v["schema_differences"] and v["reupgrade"] == "ok" for v in revisions.values())
    assert result.json["notes"] == []


def test_lint_and_check_agree_on_downgrade_loses_data(project: Project, cli, database_url):
    """Depends on the lint rule `downgrade-loses-data` (dbrollback/lint/rules/downgrade_loses_data.py)."""
    from dbrollback.lint import lint_paths

    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision(
        "r2",
        "r1",
        'op.drop_column("items", "legacy")',
        'op.add_column("items", sa.Column("legacy", sa.Text, nullable=False, server_default=""))',
    )
    project.add_revision("r3", "r2", 'op.execute("UPDATE items SET name = upper(name)")', "pass")
    project.add_revision("r4", "r3", 'op.add_column("items", sa.Column("note", sa.Text))',
                         'op.drop_column("items", "note")')  # fmt: skip

    flagged = {f.revision for f in lint_paths([project.versions]) if f.rule == "downgrade-loses-data"}
    result = cli("check", "--database-url", database_url, "--json")

    lost = {r["revision"] for r in result.json["revisions"] if r["data_roundtrip"] == "lost"}
    assert "r2" in flagged
    assert flagged <= lost
    assert "r3" in lost  # an UPDATE nobody reverses: lint calls that irreversible-data-change
    assert "r4" not in flagged | lost


def test_lint_and_check_agree_on_the_shop_example(project: Project, cli, database_url):
    """Every shop revision lint flags `downgrade-loses-data` loses data in `check` (depends on that rule)."""
    from dbrollback.lint import lint_paths

    shop = project.root / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("__pycache__"))

    flagged = {f.revision for f in lint_paths([shop / "versions"]) if f.rule == "downgrade-loses-data"}
    result = cli("check", "-c", str(shop / "alembic.ini"), "--database-url", database_url, "--json")

    lost = {r["revision"] for r in result.json["revisions"] if r["data_roundtrip"] == "lost"}
    assert flagged  # 0006, 0007 and 0009 at the time of writing
    assert flagged <= lost


def test_many_column_types_are_seeded(project: Project, cli, database_url, db):
    project.add_revision("r1", None, '''
        op.execute("""
            CREATE TYPE color AS ENUM ('red', 'green');
            CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
            CREATE TABLE all_types (
              id serial PRIMARY KEY, s smallint NOT NULL, i integer UNIQUE, b bigint, n numeric NOT NULL,
              n2 numeric(4,4), n3 numeric(3,0), r real, d double precision, m money, bo boolean NOT NULL,
              t text, vc varchar(3) NOT NULL UNIQUE, ch char(5) NOT NULL, nm name, dt date, ts timestamp(0),
              tstz timestamptz, tm time, tmtz timetz, iv interval, u uuid UNIQUE, j json, jb jsonb NOT NULL,
              by bytea, ip inet, cd cidr, mac macaddr, bt bit(4) NOT NULL, vb varbit, x xml, tv tsvector,
              pt point, rng int4range, drng daterange, arr text[], iarr integer[] NOT NULL, carr color[],
              c color NOT NULL, pi posint NOT NULL, gen integer GENERATED ALWAYS AS (s * 2) STORED,
              ident bigint GENERATED ALWAYS AS IDENTITY, rating integer CHECK (rating BETWEEN 1 AND 5),
              code text CHECK (char_length(code) = 3)
            );
            CREATE TABLE unseedable (id int PRIMARY KEY, q circle NOT NULL);
        """)
    ''', 'op.execute("DROP TABLE unseedable, all_types; DROP DOMAIN posint; DROP TYPE color")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.create_index("ix_all_types_s", "all_types", ["s"])',
                         'op.drop_index("ix_all_types_s", table_name="all_types")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 0, result.out
    assert result.json["notes"] == [
        "seeding after the upgrade of r1: public.unseedable: not seeded: no generator for type pg_catalog.circle "
        "of NOT NULL column q"
    ]
    row = db.execute("SELECT count(*), count(DISTINCT vc), count(DISTINCT iarr), count(ch), "
                     "count(*) FILTER (WHERE length(ch) > 1) FROM all_types").fetchone()  # fmt: skip
    assert row is not None
    # char(5) values are not cut to one character (what a cast to `character` would do).
    assert row[0] == 360 and row[1] == row[0] and row[2] > 100 and row[3] == row[0] and row[4] == row[0]


def test_rows_of_a_table_without_key_are_compared_as_multisets(project: Project, cli, database_url):
    project.add_revision("r1", None, 'op.create_table("log", sa.Column("at", sa.Integer), sa.Column("msg", sa.Text))',
                         'op.drop_table("log")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.execute("DELETE FROM log WHERE at <= 400")', "pass")

    result = cli("check", "--database-url", database_url, "--json", "--rows", "200")

    [lost] = _by_revision(result.json)["r2"]["lost"]
    # r1's check leaves the table empty; r2 starts from 200 generated rows (at = 202..401, a tenth NULL).
    assert (lost["missing_rows"], lost["compared_rows"], lost["columns"]) == (None, 200, ["at", "msg"])
    assert 150 < lost["rows"] < 200  # the rows with a NULL `at` are not deleted
    assert "no key to match rows by" in lost["message"]


def test_a_revision_that_cannot_be_applied_leaves_its_descendants_unchecked(
    project: Project, cli, database_url
):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'raise RuntimeError("broken")', "pass")
    project.add_revision(
        "r3", "r2", 'op.add_column("items", sa.Column("x", sa.Integer))', 'op.drop_column("items", "x")'
    )

    result = cli("check", "--database-url", database_url, "--json")

    r2, r3 = _by_revision(result.json)["r2"], _by_revision(result.json)["r3"]
    assert (r2["status"], r2["upgrade"], r2["error"]) == (
        "failed",
        "error",
        "upgrade failed: RuntimeError: broken",
    )
    assert (r3["status"], r3["error"]) == ("not_checked", "it needs r2, whose upgrade failed")
    assert result.code == 1


def test_types_with_new_generators_show_their_lost_data(project: Project, cli, database_url):
    project.add_revision("c1", None, """
        op.execute("CREATE EXTENSION hstore")
        op.execute("CREATE TYPE addr AS (street text, zip int)")
        op.execute("CREATE TABLE person (id int PRIMARY KEY, home addr, q tsquery, l pg_lsn, o oid, "
                   "hs int4multirange, kv hstore, homes addr[])")
    """, 'op.execute("DROP TABLE person; DROP TYPE addr; DROP EXTENSION hstore")')  # fmt: skip
    project.add_revision("c2", "c1", """
        op.execute("ALTER TABLE person DROP COLUMN home, DROP COLUMN q, DROP COLUMN l, DROP COLUMN o, "
                   "DROP COLUMN hs, DROP COLUMN kv, DROP COLUMN homes")
    """, """
        op.execute("ALTER TABLE person ADD COLUMN home addr, ADD COLUMN q tsquery, ADD COLUMN l pg_lsn, "
                   "ADD COLUMN o oid, ADD COLUMN hs int4multirange, ADD COLUMN kv hstore, ADD COLUMN homes addr[]")
    """)  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    c1, c2 = _by_revision(result.json)["c1"], _by_revision(result.json)["c2"]
    assert (c1["status"], c1["notes"], result.json["notes"]) == ("ok", [], [])
    assert (c2["status"], c2["data_roundtrip"], c2["unverified"]) == ("failed", "lost", [])
    [lost] = c2["lost"]
    assert lost["columns"] == ["home", "q", "l", "o", "hs", "kv", "homes"]
    assert 200 < lost["changed_rows"] <= 300


def test_columns_that_only_held_nulls_are_not_verified(project: Project, cli, database_url):
    """No generator knows `circle`: its column is NULL in every row, so dropping and re-adding it
    gives the same NULLs back, which proves nothing."""
    project.add_revision("r1", None, """
        op.create_table("shape", sa.Column("id", sa.Integer, primary_key=True), sa.Column("label", sa.Text),
                        sa.Column("area", sa.Text))
        op.execute('ALTER TABLE shape ADD COLUMN "ci rcle" circle, ADD COLUMN other circle')
    """, 'op.drop_table("shape")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.create_index("ix_shape_label", "shape", ["label"])',
                         'op.drop_index("ix_shape_label", table_name="shape")')  # fmt: skip
    project.add_revision("r3", "r2", 'op.drop_column("shape", "ci rcle")',
                         'op.execute(\'ALTER TABLE shape ADD COLUMN "ci rcle" circle\')')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    revisions = _by_revision(result.json)
    r2, r3 = revisions["r2"], revisions["r3"]
    assert result.code == 1
    assert (r2["status"], r2["data_roundtrip"]) == ("ok", "ok")
    assert r2["notes"] == [
        'public.shape: "ci rcle" (circle), other (circle) held only NULLs (no value could be generated for '
        "them), so their data round trip is not verified"
    ]
    assert (r3["status"], r3["data_roundtrip"], r3["lost"], r3["schema_roundtrip"]) == (
        "failed", "unverified", [], "ok")  # fmt: skip
    assert r3["unverified"] == [
        'public.shape held only NULLs in "ci rcle" (circle) (no value could be generated for them), and the '
        'upgrade drops or changes the type of "ci rcle" (circle): whether the downgrade brings that data back '
        "is not verified"
    ]
    assert r3["notes"] == [
        "public.shape: other (circle) held only NULLs (no value could be generated for them), so their data "
        "round trip is not verified"
    ]


def test_a_dropped_table_that_could_not_be_seeded_is_not_verified(project: Project, cli, database_url):
    project.add_revision("r1", None, 'op.execute("CREATE TABLE shapes (id int PRIMARY KEY, c circle NOT NULL)")',
                         'op.drop_table("shapes")')  # fmt: skip
    project.add_revision("r2", "r1", 'op.drop_table("shapes")',
                         'op.execute("CREATE TABLE shapes (id int PRIMARY KEY, c circle NOT NULL)")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r2 = _by_revision(result.json)["r2"]
    assert (r2["status"], r2["data_roundtrip"]) == ("failed", "unverified")
    assert r2["unverified"] == [
        "public.shapes had no rows (it could not be seeded), and the upgrade drops the table: whether the "
        "downgrade brings that data back is not verified"
    ]


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped), so no process has it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, 0)
        pytest.skip("the pid of the exited child was reused at once")
    return child.pid


def test_throwaway_databases_of_dead_checks_are_reclaimed(project: Project, cli, embedded):
    from dbrollback.check.target import check_database_name

    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    dead = _dead_pid()
    stale, in_use, alive = check_database_name(dead), check_database_name(dead), check_database_name()
    foreign = CHECK_DATABASE_PREFIX + "by_hand"  # not a name a check makes: never touched
    names = [stale, in_use, alive, foreign]
    with psycopg.connect(embedded, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(_with_database(embedded, in_use)):  # someone is looking at it
            result = cli("check")
        assert result.code == 0, result.err
        assert f"Dropped 1 throwaway database(s) left by checks that did not finish: {stale}" in result.err
        assert sorted(_check_databases(embedded)) == sorted([in_use, alive, foreign])
    finally:
        with psycopg.connect(embedded, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def test_sighup_drops_the_throwaway_database(project: Project, embedded, tmp_path: Path):
    """A closed terminal sends SIGHUP: the check unwinds as for Ctrl-C and drops its database."""
    started = tmp_path / "started"
    project.add_revision("r1", None, f"""
        import pathlib, time
        pathlib.Path({str(started)!r}).write_text("x")
        for _ in range(2400):  # bounded: a SIGHUP that does not stop the check cannot hang the test
            time.sleep(0.05)
    """)  # fmt: skip
    child = subprocess.Popen([sys.executable, "-m", "dbrollback", "check"], cwd=project.root, env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while not started.exists() and child.poll() is None:
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()
        assert len(_check_databases(embedded)) == 1
        child.send_signal(signal.SIGHUP)
        _, err = child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Interrupted." in err
    assert _check_databases(embedded) == []


def test_a_down_revision_naming_a_missing_revision_is_a_usage_error(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "zzz", 'op.add_column("items", sa.Column("x", sa.Integer))',
                         'op.drop_column("items", "x")')  # fmt: skip

    result = cli("check")
    as_json = cli("check", "--json")

    assert result.code == 2
    assert "Unexpected" not in result.err and "UserWarning" not in result.err
    assert f"revision r2 ({project.versions / 'r2.py'}) names zzz, which does not exist" in result.err
    assert "dbrollback lint" in result.err
    assert as_json.code == 2
    assert as_json.json["error"] == "broken_history"
    assert (as_json.json["revision"], as_json.json["path"]) == ("r2", str(project.versions / "r2.py"))
    assert _check_databases(embedded) == []


def test_two_files_with_one_revision_id_are_a_usage_error(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("x", sa.Integer))',
                         'op.drop_column("items", "x")')  # fmt: skip
    (project.versions / "r2_copy.py").write_text((project.versions / "r2.py").read_text())

    result = cli("check", "--json")

    assert result.code == 2, result.out
    assert result.json["error"] == "broken_history"
    assert result.json["revision"] == "r2"
    assert "revision r2 is defined in 2 files" in result.json["message"]
    assert "UserWarning" not in result.err
    assert _check_databases(embedded) == []


def test_a_revision_that_does_not_compile_is_a_usage_error(project: Project, cli, embedded):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", "op.add_column(", "pass")
    project.add_revision("r3", "r1", "pass", "pass", header="oops = undefined_name\n")

    result = cli("check", "--json")

    assert result.code == 2
    assert result.json["error"] == "broken_history"
    assert result.json["path"] == str(project.versions / "r2.py")
    assert result.json["line"] == 11
    assert "dbrollback lint" in result.json["message"]
    (project.versions / "r2.py").unlink()

    result = cli("check")

    assert result.code == 2
    assert "Unexpected" not in result.err
    assert (
        f"The revision file {project.versions / 'r3.py'}:9 raised while being imported (NameError"
        in result.err
    )


def test_to_base_still_validates_from(project: Project, cli, database_url):
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("x", sa.Integer))',
                         'op.drop_column("items", "x")')  # fmt: skip

    unknown = cli("check", "--database-url", database_url, "--from", "nope", "--to", "base")
    above = cli("check", "--database-url", database_url, "--from", "r2", "--to", "base", "--json")
    nothing = cli("check", "--database-url", database_url, "--from", "base", "--to", "base")

    assert unknown.code == 2 and "nope" in unknown.err
    assert above.code == 2 and above.json["error"] == "empty_range"
    assert nothing.code == 0 and nothing.out == "No revisions to check.\n"


def test_prints_in_revisions_do_not_corrupt_json(project: Project, cli, embedded):
    project.add_revision("r1", None, 'print("upgrading r1")\n' + ITEMS, 'print("downgrading r1")\nop.drop_table("items")',
                         header='print("importing r1")\n')  # fmt: skip

    as_flag = cli("check", "--json")
    as_format = cli("check", "--format", "json")

    for result in (as_flag, as_format):
        assert result.code == 0, result.err
        assert result.json["ok"] is True
        assert (
            "importing r1" in result.err and "upgrading r1" in result.err and "downgrading r1" in result.err
        )


def test_a_column_the_previous_revision_added_gets_values_before_it_is_dropped(project: Project, cli,
                                                                              database_url):  # fmt: skip
    project.add_revision("r1", None, ITEMS, 'op.drop_table("items")')
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))',
                         'op.drop_column("items", "note")')  # fmt: skip
    project.add_revision("r3", "r2", 'op.drop_column("items", "note")',
                         'op.add_column("items", sa.Column("note", sa.Text))')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    r3 = _by_revision(result.json)["r3"]
    assert (r3["status"], r3["data_roundtrip"], r3["unverified"], r3["notes"]) == ("failed", "lost", [], [])
    [lost] = r3["lost"]
    # r2's re-upgrade left the 360 rows r2 saw with an empty `note`; 60 rows with notes were added.
    assert (lost["columns"], lost["compared_rows"]) == (["note"], 420)
    assert 0 < lost["changed_rows"] <= 60
