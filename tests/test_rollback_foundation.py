"""What `upgrade` records for a later rollback (issue #5): revision sources, post-image
fingerprints, the schema before the run; and `snapshot prune` removing fingerprints."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from dbrollback.catalog.fingerprints import (
    FINGERPRINT_PREFIX,
    Fingerprint,
    FingerprintTarget,
    fingerprints_of_run,
    take_fingerprint,
)
from dbrollback.catalog.revision_sources import stored_revision_source
from dbrollback.catalog.run_schemas import run_schema
from dbrollback.catalog.schema import CATALOG_MIGRATIONS, LATEST_VERSION, ensure_catalog, installed_version
from dbrollback.settings import load_settings
from dbrollback.snapshot.local import LocalStore
from dbrollback.snapshot_api import snapshot_prune

from .conftest import Project

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'Ödd "tab"; le'
ODD_TEXT = 'Spa ce "q"; ü'
ODD_NUM = "väl%s"


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _accounts_project(project: Project, lossy: str) -> None:
    project.add_revision("r1", None, """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.Text),
                        sa.Column("legacy", sa.Text), sa.Column("amount", sa.Numeric(10, 2)),
                        sa.Column("note", sa.Text))
    """)  # fmt: skip
    project.add_revision("r2", "r1", lossy, """
        op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))
        op.add_column("accounts", sa.Column("legacy", sa.Text))
    """)  # fmt: skip


DROP_AND_NARROW = """
    op.drop_column("accounts", "legacy")
    op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")
"""


def _fill_accounts(db: psycopg.Connection, rows: int = 500) -> None:
    db.execute(
        "INSERT INTO accounts SELECT g, 'u' || g || '@x', 'L' || g, "
        "CASE WHEN mod(g, 10) = 0 THEN NULL ELSE g + 0.25 END, CASE WHEN mod(g, 2) = 0 THEN 'n' END "
        "FROM generate_series(1, %s) g",
        (rows,),
    )


def _upgrade(cli, database_url: str, store: Path, *extra: str) -> dict:
    result = cli("upgrade", "--json", *extra, *_args(database_url, store))
    assert result.code == 0, result.err
    return result.json


def _one_fingerprint(db: psycopg.Connection, run_id: int) -> Fingerprint:
    (fingerprint,) = fingerprints_of_run(db, run_id)
    return fingerprint


def _fp(fingerprint: Fingerprint) -> sql.Identifier:
    assert fingerprint.fp_table is not None
    return sql.Identifier("dbrollback", fingerprint.fp_table)


def _mismatches(db: psycopg.Connection, fingerprint: Fingerprint, live: sql.Composable) -> int:
    """Rows whose key is on one side only or whose hashes differ from the live values."""
    key = sql.SQL(", ").join(sql.Identifier(k) for k in fingerprint.key_columns)
    differs = [sql.SQL("f.{} IS DISTINCT FROM hash_record_extended(ROW(l.{}), 0)").format(
        sql.Identifier(h), sql.Identifier(c)) for c, h in fingerprint.hashed_columns.items()]  # fmt: skip
    query = sql.SQL("SELECT count(*) FROM {} l FULL JOIN {} f USING ({}) WHERE {}").format(
        live,
        _fp(fingerprint),
        key,
        sql.SQL(" OR ").join(
            [
                *(sql.SQL("l.{} IS NULL").format(sql.Identifier(k)) for k in fingerprint.key_columns),
                *(sql.SQL("f.{} IS NULL").format(sql.Identifier(k)) for k in fingerprint.key_columns),
                *differs,
            ]
        ),
    )
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _fp_tables(db: psycopg.Connection) -> list[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'dbrollback' AND c.relname LIKE %s ORDER BY 1",
        (FINGERPRINT_PREFIX.replace("_", "\\_") + "%",),
    ).fetchall()
    return [r[0] for r in rows]


def test_dropped_and_narrowed_column(project, cli, db, database_url, tmp_path):
    _accounts_project(project, DROP_AND_NARROW)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill_accounts(db)
    doc = _upgrade(cli, database_url, store)
    run_id = doc["run_id"]
    (snap,) = doc["snapshots"]

    # the revision's source, as the file is
    path = project.versions / "r2.py"
    source, sha256, stored_path = stored_revision_source(db, "r2") or ("", "", "")
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source == path.read_text() and Path(stored_path) == path
    assert db.execute("SELECT first_run_id, last_run_id FROM dbrollback.revision_sources WHERE revision = 'r2'"
                      ).fetchall() == [(run_id, run_id)]  # fmt: skip
    assert stored_revision_source(db, "nope") is None

    # the fingerprint: every row's key, and the hash of the one changed column that still exists
    fingerprint = _one_fingerprint(db, run_id)
    assert (fingerprint.snapshot_id, fingerprint.revision, fingerprint.status) == (snap["id"], "r2", "taken")
    assert (fingerprint.schema, fingerprint.table) == ("public", "accounts")
    assert fingerprint.key_columns == ["id"]
    assert fingerprint.hashed_columns == {"amount": "h_1"}  # legacy is gone; email, note untouched
    assert fingerprint.column_types == {"amount": "integer"}
    assert fingerprint.row_count == 500 and (fingerprint.bytes or 0) > 0
    assert fingerprint.fp_table == f"_dbrb_fp_{snap['id'].lower().replace('-', '_')}_1"
    assert _fp_tables(db) == [fingerprint.fp_table]
    assert _mismatches(db, fingerprint, sql.Identifier("public", "accounts")) == 0
    columns = [
        r[0] for r in db.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(_fp(fingerprint))).description
    ]
    assert columns == ["id", "h_1"]
    # hashes of NULLs are values too: a row whose amount is NULL is told apart from one with a value
    assert db.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE h_1 IS NULL").format(_fp(fingerprint))
    ).fetchone() == (0,)

    # the schema before the run, with the column that is gone now
    recorded = run_schema(db, run_id)
    assert recorded is not None and recorded.tables == [("public", "accounts")]
    legacy = recorded.schema.objects[("column", "public.accounts.legacy")]
    assert dict(legacy.attributes)["type"] == "text"
    assert (
        dict(recorded.schema.objects[("column", "public.accounts.amount")].attributes)["type"]
        == "numeric(10,2)"
    )
    assert not any(name == "public.alembic_version" for _, name in recorded.schema.objects)


def test_edited_revision_source_is_stored_again_and_is_the_newest(project, cli, db, database_url, tmp_path):
    _accounts_project(project, DROP_AND_NARROW)
    store = tmp_path / "store"
    assert cli("upgrade", *_args(database_url, store)).code == 0
    first = stored_revision_source(db, "r2")
    assert cli("downgrade", "r1", *_args(database_url, store)).code == 0
    path = project.versions / "r2.py"
    path.write_text(path.read_text() + "\n# edited after it was applied\n")
    again = _upgrade(cli, database_url, store)
    newest = stored_revision_source(db, "r2")
    assert first is not None and newest is not None and newest != first
    assert newest[1] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert db.execute(
        "SELECT count(*) FROM dbrollback.revision_sources WHERE revision = 'r2'"
    ).fetchone() == (2,)
    assert db.execute("SELECT first_run_id FROM dbrollback.revision_sources WHERE sha256 = %s",
                      (newest[1],)).fetchone() == (again["run_id"],)  # fmt: skip


def test_deleted_rows_leave_exactly_the_remaining_keys(project, cli, db, database_url, tmp_path):
    _accounts_project(project, 'op.execute("DELETE FROM accounts WHERE mod(id, 3) = 0")')
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill_accounts(db, 300)
    doc = _upgrade(cli, database_url, store)
    fingerprint = _one_fingerprint(db, doc["run_id"])
    keys = db.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(_fp(fingerprint))).fetchall()
    assert [k[0] for k in keys] == [i for i in range(1, 301) if i % 3]
    assert fingerprint.row_count == 200
    # DELETE concerns whole rows: every non-key column is hashed
    assert sorted(fingerprint.hashed_columns) == ["amount", "email", "legacy", "note"]
    assert _mismatches(db, fingerprint, sql.Identifier("public", "accounts")) == 0


def test_composite_primary_key(project, cli, db, database_url, tmp_path):
    project.add_revision("r1", None, """
        op.create_table("stock", sa.Column("region", sa.Text, primary_key=True),
                        sa.Column("n", sa.Integer, primary_key=True), sa.Column("v", sa.Text),
                        sa.Column("w", sa.Numeric), sa.Column("tags", sa.dialects.postgresql.JSON))
    """)  # fmt: skip
    project.add_revision("r2", "r1", """
        op.execute("UPDATE stock SET v = upper(v)")
        op.alter_column("stock", "w", type_=sa.Integer, postgresql_using="w::integer")
    """)  # fmt: skip
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO stock SELECT r, g, 'v' || g, g / 3.0, json_build_object('g', g) "
               "FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 50) g")  # fmt: skip
    doc = _upgrade(cli, database_url, store)
    fingerprint = _one_fingerprint(db, doc["run_id"])
    assert fingerprint.key_columns == ["region", "n"]
    assert fingerprint.row_count == 100
    assert fingerprint.hashed_columns == {"v": "h_1", "w": "h_2"}  # what the UPDATE and ALTER change
    assert _mismatches(db, fingerprint, sql.Identifier("public", "stock")) == 0


def test_odd_identifiers(project, cli, db, database_url, tmp_path):
    """Quotes, spaces, semicolons, unicode and a `%` in names; a key column called h_1."""
    project.add_revision("r1", None, f"""
        op.execute(sa.schema.CreateSchema({ODD_SCHEMA!r}))
        op.create_table({ODD_TABLE!r}, sa.Column("h_1", sa.Integer, primary_key=True),
                        sa.Column({ODD_TEXT!r}, sa.Text), sa.Column({ODD_NUM!r}, sa.Numeric),
                        sa.Column("gone", sa.Text), schema={ODD_SCHEMA!r})
    """)  # fmt: skip
    project.add_revision("r2", "r1", f"""
        op.drop_column({ODD_TABLE!r}, "gone", schema={ODD_SCHEMA!r})
        op.alter_column({ODD_TABLE!r}, {ODD_NUM!r}, type_=sa.Text, schema={ODD_SCHEMA!r})
    """)  # fmt: skip
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    table = sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    db.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'ü ' || g, g * 1.5, 'x' FROM generate_series(1, 40) g").format(
            table
        )
    )
    doc = _upgrade(cli, database_url, store)
    fingerprint = _one_fingerprint(db, doc["run_id"])
    assert (fingerprint.schema, fingerprint.table, fingerprint.status) == (ODD_SCHEMA, ODD_TABLE, "taken")
    assert fingerprint.key_columns == ["h_1"]
    assert fingerprint.hashed_columns == {ODD_NUM: "_h_1"}  # clear of the key column's name
    assert fingerprint.column_types == {ODD_NUM: "text"}
    assert fingerprint.row_count == 40
    assert _mismatches(db, fingerprint, table) == 0
    recorded = run_schema(db, doc["run_id"])
    assert recorded is not None and recorded.tables == [(ODD_SCHEMA, ODD_TABLE)]


def test_columns_the_revision_added_are_hashed_apart(project, cli, db, database_url, tmp_path):
    """Added columns get hashes of their own (added_columns), generated ones none; a rollback whose
    downgrade drops them counts only the values written since, here through odd identifiers."""
    added, generated = 'Fïrst "n"; x', "Len gth"
    project.add_revision("r1", None, f"""
        op.execute(sa.schema.CreateSchema({ODD_SCHEMA!r}))
        op.create_table({ODD_TABLE!r}, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column({ODD_TEXT!r}, sa.Text), schema={ODD_SCHEMA!r})
    """)  # fmt: skip
    split = (
        sql.SQL("UPDATE {} SET {} = split_part({}, ' ', 1)")
        .format(sql.Identifier(ODD_SCHEMA, ODD_TABLE), sql.Identifier(added), sql.Identifier(ODD_TEXT))
        .as_string(db)
    )
    project.add_revision("r2", "r1", f"""
        op.add_column({ODD_TABLE!r}, sa.Column({added!r}, sa.Text), schema={ODD_SCHEMA!r})
        op.add_column({ODD_TABLE!r}, sa.Column({generated!r}, sa.Integer, sa.Computed("id * 2")),
                      schema={ODD_SCHEMA!r})
        op.execute(sa.text({split!r}))
        op.drop_column({ODD_TABLE!r}, {ODD_TEXT!r}, schema={ODD_SCHEMA!r})
    """, f"""
        op.add_column({ODD_TABLE!r}, sa.Column({ODD_TEXT!r}, sa.Text), schema={ODD_SCHEMA!r})
        op.drop_column({ODD_TABLE!r}, {generated!r}, schema={ODD_SCHEMA!r})
        op.drop_column({ODD_TABLE!r}, {added!r}, schema={ODD_SCHEMA!r})
    """)  # fmt: skip
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    table = sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    db.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'a' || g || ' b' FROM generate_series(1, 30) g").format(table)
    )
    doc = _upgrade(cli, database_url, store)
    fingerprint = _one_fingerprint(db, doc["run_id"])
    assert (fingerprint.status, fingerprint.hashed_columns, fingerprint.added_columns) == (
        "taken",
        {},
        {added: "h_1"},
    )
    assert fingerprint.column_types == {added: "text"}
    mismatches = db.execute(
        sql.SQL(
            "SELECT count(*) FROM {} AS l JOIN {} AS f USING (id) "
            "WHERE f.h_1 IS DISTINCT FROM hash_record_extended(ROW(l.{}), 0)"
        ).format(table, _fp(fingerprint), sql.Identifier(added))
    ).fetchone()
    assert mismatches == (0,)
    db.execute(
        sql.SQL("UPDATE {} SET {} = 'changed' WHERE id IN (1, 2)").format(table, sql.Identifier(added))
    )
    db.execute(sql.SQL("INSERT INTO {} (id, {}) VALUES (31, 'new')").format(table, sql.Identifier(added)))
    result = cli("rollback", "--json", "--yes", *_args(database_url, store))
    assert result.code == 0, result.err + result.out
    (report,) = result.json["tables"]
    assert (report["lost_writes"], report["restored_rows"], report["verified"]) == (3, 30, True)
    assert report["lost_values_saved_to"]


def test_table_without_a_key_is_recorded_not_fingerprinted(project, cli, db, database_url, tmp_path):
    project.add_revision("r1", None, """
        op.create_table("loose", sa.Column("a", sa.Integer), sa.Column("b", sa.Text))
        op.create_index("loose_a", "loose", ["a"], unique=True)  # unique, but a may be NULL
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.drop_column("loose", "b")')
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO loose SELECT g, 'b' FROM generate_series(1, 20) g")
    result = cli("upgrade", *_args(database_url, store))
    assert result.code == 0, result.err
    assert "No fingerprint of public.loose after r2" in result.err
    (run_id,) = db.execute("SELECT max(id) FROM dbrollback.runs").fetchone()  # type: ignore[misc]
    fingerprint = _one_fingerprint(db, run_id)
    assert (fingerprint.status, fingerprint.fp_table, fingerprint.usable) == ("no_key", None, False)
    assert fingerprint.note and "no primary key or unique index on NOT NULL columns" in fingerprint.note
    assert _fp_tables(db) == []
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r2",)]


def test_failed_revision_leaves_no_fingerprint_and_no_source(project, cli, db, database_url, tmp_path):
    # fails after the DDL on the real database (50 rows), not on the schema-only copy the plan runs on
    _accounts_project(
        project, DROP_AND_NARROW + '    op.execute("SELECT 1 / (SELECT count(*) - 50 FROM accounts)")\n'
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill_accounts(db, 50)
    result = cli("upgrade", "--json", *_args(database_url, store))
    assert result.code == 4 and result.json["failed_revision"] == "r2"
    assert db.execute("SELECT count(*) FROM dbrollback.fingerprints").fetchone() == (0,)
    assert _fp_tables(db) == []
    assert stored_revision_source(db, "r2") is None
    assert stored_revision_source(db, "r1") is not None
    assert db.execute("SELECT count(*) FROM dbrollback.snapshots").fetchone() == (
        1,
    )  # taken, then rolled back
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]


def test_writes_around_the_revision_never_land_between_it_and_its_fingerprint(project, cli, db, database_url,
                                                                              tmp_path):  # fmt: skip
    """A writer keeps changing one row. The fingerprint must hold the value the revision made of the
    row as the snapshot saw it: no write got in between the snapshot, the revision and the fingerprint."""
    project.add_revision("r1", None, """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("amount", sa.Numeric(10, 2)))
    """)  # fmt: skip
    project.add_revision("r2", "r1", """
        op.execute("SELECT pg_sleep(0.5)")
        op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")
        op.execute("SELECT pg_sleep(0.5)")
    """)  # fmt: skip
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts VALUES (1, 0.4)")
    committed: list[int] = []
    stop = threading.Event()

    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '30s'")
                value = 0
                while not stop.is_set():
                    value += 1
                    # numeric goes into the column before (numeric) and after (integer) the revision
                    conn.execute("UPDATE accounts SET amount = %s::numeric WHERE id = 1", (f"{value}.4",))
                    committed.append(value)
        except BaseException as exc:  # the thread would swallow it: reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        doc = _upgrade(cli, database_url, store)
        seen = len(committed)
        while len(committed) < seen + 3 and thread.is_alive():  # writes after the commit, too
            threading.Event().wait(0.05)
    finally:
        stop.set()
        thread.join(30)
    (snap,) = doc["snapshots"]
    manifest = LocalStore(store).load(snap["id"])
    from dbrollback.snapshot.load import load_table_copy

    db.execute("CREATE TABLE captured (id int, amount numeric(10, 2))")
    load_table_copy(db, LocalStore(store), manifest.id, manifest.tables[0], "public", "captured")
    (before,) = db.execute("SELECT amount FROM captured WHERE id = 1").fetchone()  # type: ignore[misc]
    fingerprint = _one_fingerprint(db, doc["run_id"])
    (hashed,) = db.execute(sql.SQL("SELECT h_1 FROM {} WHERE id = 1").format(_fp(fingerprint))).fetchone()  # type: ignore[misc]
    expected = db.execute(
        "SELECT hash_record_extended(ROW(round(%s::numeric)::integer), 0)", (before,)
    ).fetchone()
    assert failures == []
    assert committed and before > 1  # the writer wrote before the snapshot
    assert (hashed,) == expected
    assert len(committed) > int(before)  # and after the commit


def test_no_snapshot_takes_no_fingerprint(project, cli, db, database_url, tmp_path):
    _accounts_project(project, DROP_AND_NARROW)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill_accounts(db, 20)
    doc = _upgrade(cli, database_url, store, "--no-snapshot")
    assert doc["snapshots"] == []
    assert fingerprints_of_run(db, doc["run_id"]) == [] and _fp_tables(db) == []
    assert stored_revision_source(db, "r2") is not None  # sources do not depend on snapshots
    recorded = run_schema(db, doc["run_id"])
    assert recorded is not None and recorded.tables == []


def test_prune_drops_fingerprints_of_pruned_snapshots(project, cli, db, database_url, tmp_path):
    _accounts_project(project, DROP_AND_NARROW)
    store_dir = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store_dir)).code == 0
    _fill_accounts(db, 30)
    doc = _upgrade(cli, database_url, store_dir)
    fingerprint = _one_fingerprint(db, doc["run_id"])
    settings = load_settings({"database_url": database_url, "store": str(store_dir)})

    kept = snapshot_prune(settings)  # inside the rollback window: nothing goes
    assert kept.pruned == [] and kept.fingerprints == [] and _fp_tables(db) == [fingerprint.fp_table]

    # as if the run and its snapshot were 40 days old
    store = LocalStore(store_dir)
    (manifest,) = store.list()
    taken = datetime.now(timezone.utc) - timedelta(days=40)
    (store_dir / manifest.id / "manifest.json").write_text(
        manifest.model_copy(
            update={"created_at": taken, "expires_at": taken + timedelta(days=7)}
        ).model_dump_json()
    )
    db.execute("UPDATE dbrollback.runs SET started_at = now() - interval '40 days', "
               "finished_at = now() - interval '40 days'")  # fmt: skip

    dry = cli("snapshot", "prune", "--dry-run", "--json", *_args(database_url, store_dir))
    assert dry.code == 0 and dry.json["fingerprints"] == [fingerprint.fp_table]
    assert _fp_tables(db) == [fingerprint.fp_table]

    real = cli("snapshot", "prune", "--json", *_args(database_url, store_dir))
    assert real.code == 0, real.err
    assert [p["id"] for p in real.json["pruned"]] == [manifest.id]
    assert real.json["fingerprints"] == [fingerprint.fp_table]
    assert _fp_tables(db) == [] and fingerprints_of_run(db, doc["run_id"]) == []
    audit = db.execute("SELECT details->'fingerprints' FROM dbrollback.audit WHERE command = 'snapshot prune'"
                       ).fetchall()  # fmt: skip
    assert audit == [([fingerprint.fp_table],)]


def test_catalog_created_by_the_previous_version_is_upgraded(project, cli, db, database_url, tmp_path):
    """A database whose catalog is at version 3 (what the previous dbrollback created) gets the new
    tables on the next upgrade; its journal stays."""
    db.execute("CREATE SCHEMA dbrollback")
    with db.transaction():
        for version, migration in enumerate(CATALOG_MIGRATIONS[:3], 1):
            db.execute(migration.encode())
            db.execute("INSERT INTO dbrollback.catalog_version (version, tool_version) VALUES (%s, 'old')",
                       (version,))  # fmt: skip
    old_run = db.execute(
        "INSERT INTO dbrollback.runs (command, direction, status, finished_at, actor, tool_version) "
        "VALUES ('upgrade', 'upgrade', 'succeeded', now(), 'me', 'old') RETURNING id"
    ).fetchone()
    assert installed_version(db) == 3 and LATEST_VERSION > 3
    assert db.execute("SELECT to_regclass('dbrollback.fingerprints')").fetchone() == (None,)

    _accounts_project(project, DROP_AND_NARROW)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill_accounts(db, 10)
    doc = _upgrade(cli, database_url, store)
    assert installed_version(db) == LATEST_VERSION
    assert db.execute("SELECT id FROM dbrollback.runs WHERE tool_version = 'old'").fetchone() == old_run
    assert _one_fingerprint(db, doc["run_id"]).status == "taken"
    assert stored_revision_source(db, "r2") is not None
    assert run_schema(db, doc["run_id"]) is not None


def test_take_fingerprint_leaves_the_transactions_settings_as_they_were(db):
    """The text-output settings are pinned for the fingerprint only, not for the rest of the
    revision's transaction."""
    ensure_catalog(db)
    run_id = db.execute(
        "INSERT INTO dbrollback.runs (command, direction, status, actor, tool_version) "
        "VALUES ('upgrade', 'upgrade', 'running', 'me', 'x') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    db.execute("INSERT INTO dbrollback.snapshots (id, created_at, location, tables, rows, bytes) "
               "VALUES ('20260101T000000Z-abcdef', now(), 'x', '{}', 0, 0)")  # fmt: skip
    db.execute("CREATE TABLE t (id int PRIMARY KEY, at timestamptz, doc json)")
    db.execute("INSERT INTO t SELECT g, now(), json_build_object('g', g) FROM generate_series(1, 5) g")
    target = FingerprintTarget("20260101T000000Z-abcdef", "public", "t", ("id", "at", "doc"))
    with db.transaction():
        db.execute("SET LOCAL TimeZone = 'Asia/Tokyo'")
        db.execute("SET LOCAL DateStyle = 'SQL, DMY'")
        fingerprint = take_fingerprint(db, run_id, "r", target, 1)
        settings = db.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle')").fetchone()
        assert settings == ("Asia/Tokyo", "SQL, DMY")
    assert fingerprint.hashed_columns == {"at": "h_1", "doc": "h_2"}
    assert fingerprint.column_types == {"at": "timestamp with time zone", "doc": "json"}
    live = sql.SQL("(SELECT id, at, doc::text AS doc FROM t)")
    assert _mismatches(db, fingerprint, live) == 0


def test_a_table_locked_by_another_session_does_not_hold_up_the_upgrade(project, cli, db, database_url):
    """Reading the schema locks tables (defaults, views…); one held exclusively elsewhere is waited for
    only up to lock_timeout, and the run goes on without a recorded schema, saying so."""
    project.add_revision("r1", None, """
        op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))
        op.create_table("other", sa.Column("id", sa.Integer, primary_key=True))  # serial: a default
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))')
    assert cli("upgrade", "r1", "--database-url", database_url).code == 0
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute("LOCK TABLE other IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        result = cli("upgrade", "--no-snapshot", "--lock-timeout", "100ms", "--database-url", database_url)
    finally:
        release.set()
        holder.join(30)
    assert result.code == 0, result.err
    assert "was not recorded" in result.err
    (run_id,) = db.execute("SELECT max(id) FROM dbrollback.runs").fetchone()  # type: ignore[misc]
    assert run_schema(db, run_id) is None
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r2",)]


def test_a_table_snapshotted_whose_data_the_revision_leaves_alone_gets_no_fingerprint(project, cli, db,
                                                                                      database_url, tmp_path):  # fmt: skip
    project.add_revision(
        "r1", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))'
    )
    project.add_revision("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))')
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO items SELECT generate_series(1, 10)")
    doc = _upgrade(cli, database_url, store, "--snapshot", "touched")
    assert [s["tables"] for s in doc["snapshots"]] == [["public.items"]]
    assert fingerprints_of_run(db, doc["run_id"]) == [] and _fp_tables(db) == []
