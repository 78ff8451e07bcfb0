"""Migration analysis (issue #3): the SQL pending revisions really run, the tables they touch, the
snapshot upgrade will take — captured on a schema-only copy, never on the target database."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import make_url

from dbrollback.alembic_bridge.project import AlembicProject
from dbrollback.analysis.migration_sql import capture_revision_sql
from dbrollback.analysis.plan import MigrationPlan, TableUse, analyse, build_plan
from dbrollback.analysis.scratch import SCRATCH_PREFIX
from dbrollback.catalog.schema import ensure_catalog
from dbrollback.cli import cli as cli_group
from dbrollback.cli.plan_cmd import plan as plan_command
from dbrollback.errors import ConfigError
from dbrollback.settings import Settings, load_settings

from .conftest import Project

if "plan" not in cli_group.commands:  # until the lead registers it in cli/__init__.py
    cli_group.add_command(plan_command)

SHOP_DIR = Path(__file__).parents[1] / "migrations_examples" / "shop"
SHOP_INI = SHOP_DIR / "alembic.ini"
SHOP_PENDING = ["0004_normalise_emails", "0005_split_full_name", "0006_weight_to_integer",
                "0007_drop_legacy_code", "0008_add_order_notes", "0009_drop_newsletter",
                "0010_rename_first_name"]  # fmt: skip
SHOP_LOSSY = [r for r in SHOP_PENDING if r not in ("0008_add_order_notes", "0010_rename_first_name")]
CUSTOMERS = 80


def _load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shop_seed_for_plan", SHOP_DIR / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shop_seed = _load_seed()


def _alembic_upgrade(ini: Path, database_url: str, revision: str) -> None:
    cfg = Config(str(ini))
    sa_url = make_url(database_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", sa_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)


def _settings(database_url: str, ini: Path, tmp_path: Path) -> Settings:
    return load_settings({"database_url": database_url, "alembic_config": str(ini)}, cwd=tmp_path)


def _scalar(db: psycopg.Connection, query: str | sql.Composed, params: Any = None) -> Any:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _state(db: psycopg.Connection) -> dict[str, Any]:
    """Everything the plan must leave unchanged: heads, objects, columns, rows, databases."""
    relations = db.execute(
        """SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"""
    ).fetchall()
    columns = db.execute(
        """SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"""
    ).fetchall()
    rows = {}
    for schema, name, kind in relations:
        if kind == "r":
            query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t")
            rows[(schema, name)] = _scalar(db, query.format(sql.Identifier(schema, name)))
    heads = []
    if _scalar(db, "SELECT to_regclass('alembic_version')") is not None:
        heads = [r[0] for r in db.execute("SELECT version_num FROM alembic_version ORDER BY 1")]
    databases = [r[0] for r in db.execute("SELECT datname FROM pg_database ORDER BY 1")]
    return {"heads": heads, "relations": relations, "columns": columns, "rows": rows, "databases": databases}


def _no_scratch_left(db: psycopg.Connection) -> bool:
    return (
        _scalar(db, "SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)", (SCRATCH_PREFIX,)) == 0
    )


def _uses(plan: MigrationPlan) -> dict[str, list[tuple[Any, ...]]]:
    return {
        r.revision: [(t.schema, t.table, t.operations, t.lossy, t.exists_before) for t in r.tables]
        for r in plan.revisions
    }


def _snapshots(plan: MigrationPlan) -> list[tuple[str, list[tuple[str, str, list[str], int]]]]:
    return [
        (s.revision, [(t.schema, t.table, t.affected_columns, t.estimated_rows) for t in s.tables])
        for s in plan.snapshots
    ]


@pytest.fixture
def seeded_shop(database_url: str, db: psycopg.Connection) -> dict[str, int]:
    """The shop at its seed revision with rows, and dbrollback's catalog installed."""
    _alembic_upgrade(SHOP_INI, database_url, shop_seed.SEED_REVISION)
    with psycopg.connect(database_url) as conn:
        counts: dict[str, int] = shop_seed.seed(conn, CUSTOMERS)
    ensure_catalog(db)
    return counts


# -- the shop example ---------------------------------------------------------------------------


def test_shop_plan_lists_exactly_the_lossy_revisions_and_tables(seeded_shop, database_url, db, tmp_path):
    before = _state(db)
    plan = build_plan(_settings(database_url, SHOP_INI, tmp_path))

    assert plan.current_heads == [shop_seed.SEED_REVISION]
    assert [s.revision for s in plan.pending] == SHOP_PENDING
    assert [(r.revision, r.method) for r in plan.revisions] == [(r, "executed") for r in SHOP_PENDING]
    assert plan.lossy_revisions == SHOP_LOSSY
    assert not any(r.opaque for r in plan.revisions)
    assert _uses(plan) == {
        "0004_normalise_emails": [("public", "customers", ("update",), True, True)],
        "0005_split_full_name": [
            ("public", "customers", ("add_column", "update", "drop_column"), True, True)
        ],
        "0006_weight_to_integer": [("public", "products", ("alter_column_type",), True, True)],
        "0007_drop_legacy_code": [("public", "products", ("drop_column",), True, True)],
        "0008_add_order_notes": [("public", "orders", ("add_column",), False, True)],
        "0009_drop_newsletter": [("public", "newsletter_signups", ("drop_table",), True, True)],
        # dbrollback.expand sends its SQL on the driver connection, which the capture does not see;
        # an expansion destroys nothing (docs/expand-contract.md).
        "0010_rename_first_name": [],
    }
    assert _snapshots(plan) == [
        ("0004_normalise_emails", [("public", "customers", ["email"], seeded_shop["customers"])]),
        ("0005_split_full_name", [("public", "customers", ["full_name"], seeded_shop["customers"])]),
        ("0006_weight_to_integer", [("public", "products", ["weight_kg"], seeded_shop["products"])]),
        ("0007_drop_legacy_code", [("public", "products", ["legacy_code"], seeded_shop["products"])]),
        ("0009_drop_newsletter", [("public", "newsletter_signups", ["id", "email", "signed_up_at"],
                                   seeded_shop["newsletter_signups"])]),
    ]  # fmt: skip
    for snapshot in plan.snapshots:
        for table in snapshot.tables:
            size = _scalar(db, "SELECT pg_table_size(to_regclass(%s))", (table.table,))
            assert table.estimated_bytes == size > 0
    products = plan.snapshots[2].tables[0]
    assert [(c.name, c.type) for c in products.columns] == [
        ("id", "bigint"), ("sku", "text"), ("name", "text"), ("price", "numeric(10,2)"),
        ("weight_kg", "numeric(8,3)"), ("legacy_code", "text"),
    ]  # fmt: skip
    # the SQL really sent, including op.execute() raw SQL
    sql_0006 = [e.sql for e in plan.revisions[2].effects]
    assert sql_0006 == [
        "ALTER TABLE products ALTER COLUMN weight_kg TYPE INTEGER USING round(weight_kg)::integer"
    ]
    assert (
        plan.revisions[0].effects[0].sql
        == "UPDATE customers SET email = lower(email) WHERE email <> lower(email)"
    )
    assert plan.warnings == []
    assert plan.scratch is not None and "same server" in plan.scratch

    assert _state(db) == before  # same heads, no new objects, same rows, no scratch database left
    assert _no_scratch_left(db)


def test_shop_snapshot_policies(seeded_shop, database_url, db, tmp_path):
    settings = _settings(database_url, SHOP_INI, tmp_path)
    touched = build_plan(settings, policy="touched")
    assert [s.revision for s in touched.snapshots] == SHOP_PENDING[:-1]  # 0010: see _uses above
    assert _snapshots(touched)[4] == (
        "0008_add_order_notes",
        [("public", "orders", [], seeded_shop["orders"])],
    )

    # one capture, analysed under each policy
    project = AlembicProject(SHOP_INI, None)
    captured = capture_revision_sql(project, database_url)
    everything = analyse(db, captured, "all")
    assert len(everything.snapshots) == 1
    (snapshot,) = everything.snapshots
    assert snapshot.revision == "0004_normalise_emails"  # once, before the first revision
    # every user table, not the version table nor dbrollback's catalog
    assert [(t.schema, t.table, t.estimated_rows) for t in snapshot.tables] == sorted(
        ("public", name, count) for name, count in seeded_shop.items()
    )
    affected = {t.table: t.affected_columns for t in snapshot.tables}
    assert affected == {"customers": ["full_name", "email"], "newsletter_signups": ["id", "email", "signed_up_at"],
                        "order_items": [], "orders": [], "products": ["weight_kg", "legacy_code"]}  # fmt: skip

    never = analyse(db, captured, "never")
    assert never.snapshots == []
    assert len(never.warnings) == 1 and "0009_drop_newsletter" in never.warnings[0]

    lossy = analyse(db, captured, "lossy")
    assert [s.revision for s in lossy.snapshots] == SHOP_LOSSY

    chosen = load_settings({"database_url": database_url, "alembic_config": str(SHOP_INI), "snapshot": "never"},
                           cwd=tmp_path)  # fmt: skip
    assert build_plan(chosen, "0005_split_full_name").snapshots == []
    with pytest.raises(ConfigError):
        build_plan(settings, policy="sometimes")


# -- SQL built in Python, from database queries, with parameters ----------------------------------


def test_sql_built_at_run_time_is_captured(project: Project, database_url, db, tmp_path):
    project.add_revision("r1", None, """
        for name in ("log_2023", "log_2024"):
            op.create_table(name, sa.Column("id", sa.Integer, primary_key=True), sa.Column("line", sa.Text))
        op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))
    """)  # fmt: skip
    project.add_revision("r2", "r1", """
        bind = op.get_bind()
        names = [r[0] for r in bind.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'log!_%' ESCAPE '!' ORDER BY 1"))]
        for name in names:
            op.execute(f"TRUNCATE {name}")
        op.execute(sa.text("UPDATE keep SET note = :note WHERE id = :id").bindparams(note="it's", id=7))
        table = "ke" + "ep"
        op.execute(sa.text(f"DELETE FROM {table} WHERE id > 100"))
    """)  # fmt: skip
    _alembic_upgrade(project.ini, database_url, "r1")
    db.execute("INSERT INTO log_2023 SELECT g, 'x' FROM generate_series(1, 5) g")
    db.execute("INSERT INTO log_2024 SELECT g, 'y' FROM generate_series(1, 3) g")
    db.execute("INSERT INTO keep SELECT g, 'n' FROM generate_series(1, 9) g")
    before = _state(db)

    plan = build_plan(_settings(database_url, project.ini, tmp_path))
    (r2,) = plan.revisions
    assert r2.method == "executed" and r2.lossy and not r2.opaque
    assert [(t.table, t.operations, t.columns, t.lossy, t.exists_before) for t in r2.tables] == [
        ("log_2023", ("truncate",), (), True, True),
        ("log_2024", ("truncate",), (), True, True),
        ("keep", ("update", "delete"), ("note",), True, True),
    ]
    statements = [e.sql for e in r2.effects]
    assert "TRUNCATE log_2023" in statements and "TRUNCATE log_2024" in statements
    # bound parameters rendered as psycopg sends them (SQLAlchemy adds the casts)
    assert "UPDATE keep SET note = 'it''s'::VARCHAR WHERE id = 7::INTEGER" in statements
    assert "DELETE FROM keep WHERE id > 100" in statements
    assert _snapshots(plan) == [("r2", [("public", "log_2023", ["id", "line"], 5), ("public", "log_2024", ["id", "line"], 3),
                                        ("public", "keep", ["id", "note"], 9)])]  # fmt: skip
    assert plan.warnings == []
    assert _state(db) == before
    assert _no_scratch_left(db)


def test_revision_failing_on_the_copy_falls_back_to_offline(project: Project, database_url, db, tmp_path):
    project.add_revision("r1", None, """
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Text))
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.create_index("ix_t_x", "t", ["x"])')
    project.add_revision("r3", "r2", """
        from alembic import context
        if not context.is_offline_mode():
            # data the schema-only copy does not have
            assert op.get_bind().execute(sa.text("select count(*) from t")).scalar() > 0
        op.drop_column("t", "x")
    """)  # fmt: skip
    project.add_revision("r4", "r3", 'op.add_column("t", sa.Column("y", sa.Text))')
    project.add_revision("r5", "r4", """
        rows = op.get_bind().execute(sa.text("select id from t")).fetchall()
        for (row_id,) in rows:
            op.execute(f"DELETE FROM t WHERE id = {row_id}")
    """)  # fmt: skip
    _alembic_upgrade(project.ini, database_url, "r1")
    db.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    before = _state(db)

    plan = build_plan(_settings(database_url, project.ini, tmp_path))
    methods = [(r.revision, r.method) for r in plan.revisions]
    assert methods == [("r2", "executed"), ("r3", "offline"), ("r4", "offline"), ("r5", "unavailable")]
    _, r3, r4, r5 = plan.revisions
    assert "r3 failed on the schema-only copy: AssertionError" in r3.reason and "r3.py line" in r3.reason
    assert "after revision r3" in r4.reason
    assert [(t.table, t.operations, t.columns, t.lossy) for t in r3.tables] == [
        ("t", ("drop_column",), ("x",), True)
    ]
    assert [e.sql for e in r4.effects] == ["ALTER TABLE t ADD COLUMN y TEXT"]
    assert r5.opaque and r5.tables == [] and "cannot be rendered offline" in r5.reason
    assert _snapshots(plan) == [("r3", [("public", "t", ["x"], 2)])]
    assert any("revision r5 runs SQL whose effect cannot be known; it is not covered by a snapshot" in w
               for w in plan.warnings)  # fmt: skip
    assert any(
        w.startswith("revision r3: its SQL was rendered in Alembic offline mode") for w in plan.warnings
    )
    assert _state(db) == before
    assert _no_scratch_left(db)


ENV_IGNORING_URL = """
import os
from alembic import context
from sqlalchemy import create_engine, pool

def run_migrations_offline():
    context.configure(url=os.environ["PLAN_TEST_URL"], literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()

def run_migrations_online():
    engine = create_engine(os.environ["PLAN_TEST_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""


def test_env_py_that_ignores_the_given_url_never_runs_revisions(project: Project, database_url, db, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """An env.py that reads its own URL would run the revisions on the real database: refused."""
    (project.root / "migrations" / "env.py").write_text(ENV_IGNORING_URL)
    sa_url = make_url(database_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    monkeypatch.setenv("PLAN_TEST_URL", sa_url)
    db.execute("CREATE TABLE t (id int PRIMARY KEY, x text)")
    db.execute("INSERT INTO t VALUES (1, 'a')")
    project.add_revision("r1", None, 'op.drop_column("t", "x")')
    before = _state(db)

    plan = build_plan(_settings(database_url, project.ini, tmp_path))
    (r1,) = plan.revisions
    assert r1.method == "offline"
    assert "did not connect to the schema-only copy" in r1.reason
    assert [(t.table, t.operations, t.lossy, t.exists_before) for t in r1.tables] == [
        ("t", ("drop_column",), True, True)
    ]
    # not even Alembic's version table was left behind on the real database
    assert _state(db) == before
    assert _no_scratch_left(db)


# -- identifiers --------------------------------------------------------------------------------

SCHEMA = 'Sch; "é"'
TABLE = 'Wé"ird tä;ble'
COLUMN = 'Quoted "Col"'
RENAMED = "Renamed ü"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_identifiers_with_quotes_spaces_and_unicode(project: Project, database_url, db, tmp_path):
    project.add_revision("r1", None, f"""
        op.execute({"CREATE SCHEMA " + _q(SCHEMA)!r})
        op.create_table({TABLE!r}, sa.Column("id", sa.Integer, primary_key=True), sa.Column({COLUMN!r}, sa.Text),
                        sa.Column("other", sa.Text), schema={SCHEMA!r})
    """)  # fmt: skip
    project.add_revision("r2", "r1", f"op.drop_column({TABLE!r}, {COLUMN!r}, schema={SCHEMA!r})")
    # unqualified: found through the database's search_path, on the copy as on the target
    project.add_revision("r3", "r2", f"op.execute({'DELETE FROM ' + _q(TABLE) + ' WHERE id = 1'!r})")
    project.add_revision("r4", "r3", f"op.rename_table({TABLE!r}, {RENAMED!r}, schema={SCHEMA!r})")
    project.add_revision("r5", "r4", f"op.execute({'TRUNCATE ' + _q(SCHEMA) + '.' + _q(RENAMED)!r})")
    project.add_revision("r6", "r5", f"""
        op.create_table("fresh", sa.Column("id", sa.Integer), schema={SCHEMA!r})
        op.execute({"DELETE FROM " + _q(SCHEMA) + ".fresh"!r})
    """)  # fmt: skip
    # renamed and emptied in one revision: its snapshot is of the name it has when the revision starts
    project.add_revision("r7", "r6", f"""
        op.rename_table({RENAMED!r}, "again", schema={SCHEMA!r})
        op.execute({"TRUNCATE " + _q(SCHEMA) + ".again"!r})
    """)  # fmt: skip
    _alembic_upgrade(project.ini, database_url, "r1")
    ident = sql.Identifier(SCHEMA, TABLE)
    db.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 'b'), (2, 'c', 'd'), (3, NULL, NULL)").format(ident))
    dbname = make_url(database_url).database
    assert dbname is not None
    db.execute(sql.SQL("ALTER DATABASE {} SET search_path TO {}, public").format(
        sql.Identifier(dbname), sql.Identifier(SCHEMA)))  # fmt: skip
    before = _state(db)

    plan = build_plan(_settings(database_url, project.ini, tmp_path))
    assert [r.method for r in plan.revisions] == ["executed"] * 6
    assert [r.tables for r in plan.revisions] == [
        [TableUse(SCHEMA, TABLE, ("drop_column",), (COLUMN,), True, True)],
        [TableUse(SCHEMA, TABLE, ("delete",), (), True, True)],
        [TableUse(SCHEMA, TABLE, ("rename_table",), (), False, True)],
        [TableUse(SCHEMA, RENAMED, ("truncate",), (), True, True)],  # its data existed before the run
        [TableUse(SCHEMA, "fresh", ("create_table", "delete"), (), True, False)],  # made by the run itself
        [TableUse(SCHEMA, RENAMED, ("rename_table",), (), False, True),
         TableUse(SCHEMA, "again", ("truncate",), (), True, True)],
    ]  # fmt: skip
    # r5's snapshot is of the table as named when r5 runs, estimated from its current name; r6 needs none
    assert _snapshots(plan) == [
        ("r2", [(SCHEMA, TABLE, [COLUMN], 3)]),
        ("r3", [(SCHEMA, TABLE, ["id", COLUMN, "other"], 3)]),
        ("r5", [(SCHEMA, RENAMED, ["id", COLUMN, "other"], 3)]),
        ("r7", [(SCHEMA, RENAMED, ["id", COLUMN, "other"], 3)]),
    ]
    before_run = [t.name_before_run for s in plan.snapshots for t in s.tables]
    assert before_run == [None, None, (SCHEMA, TABLE), (SCHEMA, TABLE)]
    assert plan.warnings == []
    document = json.loads(json.dumps(plan.to_dict()))
    assert document["snapshots"][0]["tables"][0]["columns"][1] == {
        "name": COLUMN,
        "type": "text",
        "affected": True,
    }
    assert _state(db) == before
    assert _no_scratch_left(db)


# -- the command --------------------------------------------------------------------------------


def test_plan_command_json_and_human(project: Project, cli, database_url, db):
    project.add_revision("r1", None, """
        op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("price", sa.Numeric))
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.drop_column("items", "price")', doc="drop the price")
    project.add_revision("r3", "r2", 'op.add_column("items", sa.Column("note", sa.Text))')
    _alembic_upgrade(project.ini, database_url, "r1")
    db.execute("INSERT INTO items VALUES (1, 2.5), (2, 3)")
    before = _state(db)

    result = cli("plan", "--json", "--database-url", database_url)
    assert result.code == 0, result.err
    doc = result.json
    assert isinstance(doc, dict)
    assert doc["current_heads"] == ["r1"] and doc["target"] == "heads" and doc["policy"] == "lossy"
    assert [p["revision"] for p in doc["pending"]] == ["r2", "r3"]
    assert [(r["revision"], r["method"], r["lossy"]) for r in doc["revisions"]] == [
        ("r2", "executed", True), ("r3", "executed", False)]  # fmt: skip
    assert doc["revisions"][0]["tables"] == [{"schema": "public", "table": "items", "operations": ["drop_column"],
                                              "columns": ["price"], "lossy": True, "exists_before": True}]  # fmt: skip
    (snapshot,) = doc["snapshots"]
    assert snapshot["revision"] == "r2" and snapshot["estimated_rows"] == 2
    assert snapshot["tables"][0]["affected_columns"] == ["price"]
    assert doc["warnings"] == []
    assert database_url.split("?")[0].rsplit("/", 1)[1] in doc["database"]

    only_r2 = cli("plan", "r2", "--json", "--database-url", database_url).json
    assert isinstance(only_r2, dict) and [p["revision"] for p in only_r2["pending"]] == ["r2"]

    never = cli("plan", "--snapshot", "never", "--json", "--database-url", database_url).json
    assert isinstance(never, dict) and never["snapshots"] == [] and "'never'" in never["warnings"][0]

    human = cli("plan", "--database-url", database_url)
    assert human.code == 0, human.err
    assert "r2 — drop the price (executed, LOSSY)" in human.out
    assert "public.items" in human.out and "drop_column" in human.out
    assert "Snapshot before r2: 1 table(s), ~2 rows" in human.out
    assert "price*" in human.out and "id," in human.out

    assert cli("plan", "nope", "--database-url", database_url).code == 2
    assert _state(db) == before
    assert _no_scratch_left(db)

    _alembic_upgrade(project.ini, database_url, "heads")
    done = cli("plan", "--database-url", database_url)
    assert done.code == 0 and "Nothing to do" in done.out


def test_opaque_sql_is_flagged_and_catalog_reads_are_not(project: Project, database_url, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, x text)")
    db.execute("INSERT INTO t VALUES (1, 'a')")
    db.execute("CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) $$")
    # SQLAlchemy's enum check and reflection query the system catalogs with built-in functions
    project.add_revision("r1", None, """
        op.create_table("m", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("mood", sa.Enum("happy", "sad", name="mood")))
        assert [c["name"] for c in sa.inspect(op.get_bind()).get_columns("m")] == ["id", "mood"]
    """)  # fmt: skip
    project.add_revision("r2", "r1", """op.execute("DO $$ BEGIN PERFORM 1; END $$")""")
    project.add_revision("r3", "r2", """op.execute("UPDATE t SET x = shout(x)")""")
    before = _state(db)

    plan = build_plan(_settings(database_url, project.ini, tmp_path))
    r1, r2, r3 = plan.revisions
    assert [r.method for r in plan.revisions] == ["executed"] * 3
    assert not r1.opaque and not r1.lossy
    assert [(t.table, t.operations, t.exists_before) for t in r1.tables] == [("m", ("create_table",), False)]
    assert any("pg_catalog" in e.sql for e in r1.effects)  # the catalog reads were captured, not hidden
    assert r2.opaque and r2.tables == []
    assert r3.opaque and r3.lossy
    assert _snapshots(plan) == [("r3", [("public", "t", ["x"], 1)])]
    assert plan.warnings == [
        "revision r2 runs SQL whose effect cannot be known; it is not covered by a snapshot: "
        "runs a DO block, whose effect cannot be known without executing it",
        "revision r3: updates column t.x of existing rows; calls unknown function(s) shout; only public.t is "
        "covered by the snapshot",
    ]
    assert _state(db) == before
    assert _no_scratch_left(db)
