"""`dbrollback rollback` (issue #5): the three-way merge of pre-image, fingerprint and live table,
with writes made after the upgrade through a separate connection, on the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbrollback.catalog.journal import rolled_back_runs
from dbrollback.errors import SnapshotCorrupt
from dbrollback.rollback_api import rollback
from dbrollback.settings import load_settings
from dbrollback.snapshot.checksum import table_checksum

from .conftest import Project

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'Ödd "tab"; le'
ODD_COL = 'Spa ce "q"; ü'


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _settings(project: Project, database_url: str, store: Path) -> Any:
    return load_settings(
        {"database_url": database_url, "store": str(store), "alembic_config": str(project.ini)}
    )


def _upgrade(cli, database_url: str, store: Path, *extra: str) -> dict:
    result = cli("upgrade", "--json", *extra, *_args(database_url, store))
    assert result.code == 0, result.err
    return result.json


def _rollback(cli, database_url: str, store: Path, *extra: str, code: int = 0) -> dict:
    result = cli("rollback", "--json", "--yes", *extra, *_args(database_url, store))
    assert result.code == code, result.err + result.out
    return result.json


def _rows(db: psycopg.Connection, query: str, params: tuple = ()) -> list[tuple]:
    return db.execute(query, params).fetchall()


def _version(db: psycopg.Connection) -> list[tuple]:
    return _rows(db, "SELECT version_num FROM alembic_version")


def _table(doc: dict, name: str) -> dict:
    (found,) = [t for t in doc["tables"] if t["table"] == name]
    return found


def _accounts(project: Project, upgrade: str, downgrade: str) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.Text),
                        sa.Column("legacy", sa.Text), sa.Column("amount", sa.Numeric(10, 2)),
                        sa.Column("note", sa.Text, server_default="n/a"))
    """,
    )
    project.add_revision("r2", "r1", upgrade, downgrade)


def _accounts_checksum(db: psycopg.Connection) -> tuple[int, str]:
    """Column order ignored: a downgrade adds a dropped column back at the end."""
    return table_checksum(db, "public", "accounts", columns=["id", "email", "legacy", "amount", "note"])


def _fill(db: psycopg.Connection, rows: int = 100) -> None:
    db.execute(
        "INSERT INTO accounts (id, email, legacy, amount, note) SELECT g, 'User' || g || '@X.org', 'L' || g, "
        "g + 0.25, 'note ' || g FROM generate_series(1, %s) g",
        (rows,),
    )


# -- drop a column -------------------------------------------------------------------------------------

DROP_LEGACY = (
    'op.drop_column("accounts", "legacy")',
    'op.add_column("accounts", sa.Column("legacy", sa.Text))',
)


@pytest.mark.parametrize("mode", [(), ("--batched", "--batch-rows", "7")], ids=["one transaction", "batched"])
def test_dropped_column_comes_back_and_later_writes_stay(project, cli, db, database_url, tmp_path, mode):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    upgraded = _upgrade(cli, database_url, store)
    # the app goes on writing: other columns of some rows, new rows, deleted rows
    db.execute("UPDATE accounts SET email = 'changed' || id, amount = 0 WHERE id <= 10")
    db.execute("INSERT INTO accounts (id, email) SELECT g, 'new' || g FROM generate_series(101, 105) g")
    db.execute("DELETE FROM accounts WHERE id BETWEEN 91 AND 95")

    doc = _rollback(cli, database_url, store, *mode)
    assert doc["run_id"] == upgraded["run_id"] and doc["reverted_revisions"] == ["r2"]
    assert (doc["strategy"], doc["dry_run"], doc["verified"], doc["schema_matches"]) == (
        "merge",
        False,
        True,
        True,
    )
    assert doc["schema_differences"] == [] and isinstance(doc["duration_s"], float)
    assert doc["tables"] == [
        {
            "table": "public.accounts",
            "restored_rows": 95,
            "reinserted_rows": 0,
            "kept_rows": 0,
            "conflicts": 0,
            "conflict_examples": [],
            "lost_values_saved_to": None,
            "lost_writes": 0,
            "verified": True,
        }
    ]
    assert _version(db) == [("r1",)]
    assert _rows(
        db, "SELECT count(*) FROM accounts WHERE legacy IS DISTINCT FROM 'L' || id AND id <= 100"
    ) == [(0,)]
    assert _rows(db, "SELECT id, email, amount FROM accounts WHERE id IN (1, 10)") == [
        (1, "changed1", 0),
        (10, "changed10", 0),
    ]
    assert _rows(db, "SELECT id, legacy FROM accounts WHERE id > 100 ORDER BY id LIMIT 1") == [(101, None)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE id BETWEEN 91 AND 95") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM accounts") == [(100,)]
    # journaled: the rollback run reverted the upgrade run, in the same transaction as the data
    assert rolled_back_runs(db) == {upgraded["run_id"]: doc_run_id(db)}
    assert _rows(db, "SELECT direction, status FROM dbrollback.runs WHERE id = %s", (doc_run_id(db),)) == [
        ("rollback", "succeeded")
    ]
    audit = _rows(
        db, "SELECT details->>'status' FROM dbrollback.audit WHERE command = 'rollback' ORDER BY id"
    )
    assert audit == [("started",), ("succeeded",)]
    if mode:  # 95 rows in batches of 7; the work table is gone once its rows are back
        assert _rows(
            db,
            "SELECT total_rows, done_n, batches, finished_at IS NOT NULL, "
            "to_regclass('dbrollback.' || quote_ident(work_table)) FROM dbrollback.rollback_fills",
        ) == [(95, 95, 14, True, None)]


def doc_run_id(db: psycopg.Connection) -> int:
    (row,) = _rows(db, "SELECT max(id) FROM dbrollback.runs WHERE direction = 'rollback'")
    return int(row[0])


# -- transformed columns -------------------------------------------------------------------------------


BOTH_MODES = pytest.mark.parametrize(
    "mode", [(), ("--batched", "--batch-rows", "10")], ids=["one transaction", "batched"]
)


@BOTH_MODES
def test_narrowed_numeric_gets_its_exact_decimals_back_unless_written_since(
    project, cli, db, database_url, tmp_path, mode
):
    _accounts(
        project,
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 50)
    _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET amount = 99 WHERE id = 7")
    db.execute("UPDATE accounts SET email = 'other' WHERE id = 8")  # a column the migration left alone

    doc = _rollback(cli, database_url, store, *mode)
    table = _table(doc, "public.accounts")
    assert (table["restored_rows"], table["kept_rows"], table["conflicts"]) == (49, 1, 1)
    assert table["conflict_examples"] == [
        {"key": {"id": 7}, "column": "amount", "current": "99.00", "preimage": "7.25"}
    ]
    assert table["verified"] and doc["verified"] and doc["schema_matches"]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE id <> 7 AND amount <> id + 0.25") == [(0,)]
    assert _rows(
        db, "SELECT amount::text, (SELECT email FROM accounts WHERE id = 8) FROM accounts WHERE id = 7"
    ) == [("99.00", "other")]
    assert _rows(
        db,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'accounts'::regclass AND attname = 'amount'",
    ) == [("numeric(10,2)",)]


def test_lower_cased_emails_with_an_empty_downgrade_are_restored_where_untouched(
    project, cli, db, database_url, tmp_path
):
    _accounts(project, 'op.execute("UPDATE accounts SET email = lower(email)")', "pass")
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 30)
    db.execute("UPDATE accounts SET email = 'already@lower' WHERE id = 30")  # the migration leaves it alone
    _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET email = 'Fresh@Write' WHERE id IN (1, 30)")
    doc = _rollback(cli, database_url, store)
    table = _table(doc, "public.accounts")
    # row 1: the app overwrote a value the migration had changed: a conflict; row 30: nothing lost
    assert (table["restored_rows"], table["kept_rows"], table["conflicts"]) == (28, 2, 1)
    assert [e["key"] for e in table["conflict_examples"]] == [{"id": 1}]
    assert table["verified"] and doc["verified"]
    assert _rows(db, "SELECT email FROM accounts WHERE id IN (1, 2, 30) ORDER BY id") == [
        ("Fresh@Write",),
        ("User2@X.org",),
        ("Fresh@Write",),
    ]
    assert _version(db) == [("r1",)]


# -- deleted rows --------------------------------------------------------------------------------------


def test_rows_the_migration_deleted_come_back_rows_the_app_deleted_stay_deleted(
    project, cli, db, database_url, tmp_path
):
    _accounts(project, 'op.execute("DELETE FROM accounts WHERE id <= 20")', "pass")
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 60)
    _upgrade(cli, database_url, store)
    db.execute("DELETE FROM accounts WHERE id BETWEEN 51 AND 60")
    db.execute("INSERT INTO accounts (id, email) VALUES (5, 'reused key'), (70, 'new')")
    before_untouched = table_checksum(db, "public", "accounts", where=sql.SQL("t.id BETWEEN 21 AND 50"))

    doc = _rollback(cli, database_url, store)
    table = _table(doc, "public.accounts")
    assert (table["reinserted_rows"], table["conflicts"], table["restored_rows"]) == (19, 1, 0)
    (example,) = table["conflict_examples"]
    assert example["key"] == {"id": 5} and example["column"] is None
    assert "reused key" in example["current"] and "User5@X.org" in example["preimage"]
    assert table["verified"] and doc["verified"]
    assert _rows(db, "SELECT email FROM accounts WHERE id IN (4, 5) ORDER BY id") == [
        ("User4@X.org",),
        ("reused key",),
    ]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE id BETWEEN 51 AND 60") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM accounts") == [(20 + 30 + 1,)]
    assert (
        table_checksum(db, "public", "accounts", where=sql.SQL("t.id BETWEEN 21 AND 50")) == before_untouched
    )


def test_rows_deleted_from_parent_and_child_tables_come_back_parents_first(
    project, cli, db, database_url, tmp_path
):
    deletes = [
        'op.execute("DELETE FROM orders WHERE customer_id <= 3")',
        'op.execute("DELETE FROM customers WHERE id <= 3")',
    ]
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
        op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False))
        """,
    )
    project.add_revision("r2", "r1", "\n".join(deletes), "pass")
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 10) g")
    db.execute("INSERT INTO orders SELECT g, 1 + g % 10 FROM generate_series(1, 30) g")
    _upgrade(cli, database_url, store)

    doc = _rollback(cli, database_url, store)
    assert doc["verified"]
    assert {t["table"]: t["reinserted_rows"] for t in doc["tables"]} == {
        "public.customers": 3,
        "public.orders": 9,
    }
    assert [t["table"] for t in doc["tables"]] == ["public.customers", "public.orders"]
    assert _rows(db, "SELECT count(*) FROM customers") == [(10,)] and _rows(
        db, "SELECT count(*) FROM orders"
    ) == [(30,)]


def test_dropped_table_comes_back_with_all_rows(project, cli, db, database_url, tmp_path):
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("logs", sa.Column("id", sa.Integer, primary_key=True), sa.Column("msg", sa.Text),
                        sa.Column("at", sa.DateTime(timezone=True)))
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        'op.drop_table("logs")',
        """
        op.create_table("logs", sa.Column("id", sa.Integer, primary_key=True), sa.Column("msg", sa.Text),
                        sa.Column("at", sa.DateTime(timezone=True)))
    """,
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO logs SELECT g, 'm' || g, now() FROM generate_series(1, 40) g")
    before = table_checksum(db, "public", "logs")
    _upgrade(cli, database_url, store)
    doc = _rollback(cli, database_url, store)
    assert _table(doc, "public.logs")["reinserted_rows"] == 40 and doc["verified"]
    assert table_checksum(db, "public", "logs") == before
    # the sequence of the serial key moved past the restored keys
    assert _rows(db, "INSERT INTO logs (msg) VALUES ('next') RETURNING id") == [(41,)]


@BOTH_MODES
def test_composite_key_and_odd_identifiers(project, cli, db, database_url, tmp_path, mode):
    project.add_revision(
        "r1",
        None,
        f"""
        op.execute(sa.schema.CreateSchema({ODD_SCHEMA!r}))
        op.create_table({ODD_TABLE!r}, sa.Column("region", sa.Text, primary_key=True),
                        sa.Column("n", sa.Integer, primary_key=True), sa.Column({ODD_COL!r}, sa.Text),
                        sa.Column("gone", sa.Text), schema={ODD_SCHEMA!r})
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        f"""
        op.drop_column({ODD_TABLE!r}, "gone", schema={ODD_SCHEMA!r})
        op.execute(sa.text('UPDATE "Sch ""é""; x"."Ödd ""tab""; le" SET "Spa ce ""q""; ü" = upper("Spa ce ""q""; ü")'))
    """,
        f"""
        op.add_column({ODD_TABLE!r}, sa.Column("gone", sa.Text), schema={ODD_SCHEMA!r})
    """,
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    table = sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT r, g, 'ü v' || g, 'x' || g "
            "FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 20) g"
        ).format(table)
    )
    before = table_checksum(db, ODD_SCHEMA, ODD_TABLE)
    _upgrade(cli, database_url, store)
    db.execute(
        sql.SQL("UPDATE {} SET {} = 'app' WHERE region = 'us' AND n = 3").format(
            table, sql.Identifier(ODD_COL)
        )
    )
    doc = _rollback(cli, database_url, store, *mode)
    result = _table(doc, f"{ODD_SCHEMA}.{ODD_TABLE}")
    assert (result["restored_rows"], result["kept_rows"], result["conflicts"]) == (40, 1, 1)
    assert result["conflict_examples"][0]["key"] == {"region": "us", "n": 3}
    assert result["verified"] and doc["verified"] and doc["schema_matches"]
    db.execute(
        sql.SQL("UPDATE {} SET {} = 'ü v3' WHERE region = 'us' AND n = 3").format(
            table, sql.Identifier(ODD_COL)
        )
    )
    assert table_checksum(db, ODD_SCHEMA, ODD_TABLE) == before


# -- runs with several revisions, and again --------------------------------------------------------------


def _two_lossy(project: Project) -> None:
    _accounts(project, *DROP_LEGACY)
    project.add_revision(
        "r3",
        "r2",
        'op.add_column("accounts", sa.Column("tier", sa.Text))',
        'op.drop_column("accounts", "tier")',
    )
    project.add_revision(
        "r4",
        "r3",
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))',
    )


def test_two_lossy_revisions_in_one_run_then_upgrade_and_rollback_again(
    project, cli, db, database_url, tmp_path
):
    _two_lossy(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 40)
    before = _accounts_checksum(db)
    first = _upgrade(cli, database_url, store)
    assert [s["revision"] for s in first["snapshots"]] == ["r2", "r4"]
    doc = _rollback(cli, database_url, store)
    assert doc["reverted_revisions"] == ["r4", "r3", "r2"] and doc["verified"]
    assert [t["table"] for t in doc["tables"]] == ["public.accounts", "public.accounts"]
    assert _accounts_checksum(db) == before
    assert _version(db) == [("r1",)]

    # a later upgrade is a new run; rolling back again undoes that one
    second = _upgrade(cli, database_url, store)
    assert second["run_id"] != first["run_id"]
    db.execute("UPDATE accounts SET tier = 'gold' WHERE id = 1")
    again = _rollback(cli, database_url, store)
    assert again["run_id"] == second["run_id"] and again["verified"]
    assert _accounts_checksum(db) == before
    assert rolled_back_runs(db).keys() == {first["run_id"], second["run_id"]}
    # the next rollback goes to the run before (the one that created the table)
    runs = _rows(db, "SELECT id FROM dbrollback.runs WHERE command = 'upgrade' ORDER BY id")
    dry = _rollback(cli, database_url, store, "--dry-run", code=1)  # r1's downgrade is empty: the table stays
    assert dry["run_id"] == runs[0][0] and dry["schema_matches"] is False and not dry["verified"]


def test_values_written_into_a_column_the_downgrade_drops_are_saved_first(
    project, cli, db, database_url, tmp_path
):
    _accounts(
        project,
        'op.drop_column("accounts", "legacy")\nop.add_column("accounts", sa.Column("tier", sa.Text))',
        'op.drop_column("accounts", "tier")\nop.add_column("accounts", sa.Column("legacy", sa.Text))',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 20)
    _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET tier = 'gold' WHERE id IN (1, 2, 3)")
    dry = _rollback(cli, database_url, store, "--dry-run")
    assert (
        _table(dry, "public.accounts")["lost_writes"],
        _table(dry, "public.accounts")["lost_values_saved_to"],
    ) == (3, None)
    doc = _rollback(cli, database_url, store)
    table = _table(doc, "public.accounts")
    assert table["lost_writes"] == 3 and table["lost_values_saved_to"] is not None and doc["verified"]
    snapshot = cli("snapshot", "show", table["lost_values_saved_to"], "--json", *_args(database_url, store))
    assert snapshot.code == 0, snapshot.err
    (saved,) = snapshot.json["manifest"]["tables"] if "manifest" in snapshot.json else snapshot.json["tables"]
    assert "tier" in [c["name"] for c in saved["columns"]] and saved["row_count"] == 20


# -- dry run, refusals, failures ------------------------------------------------------------------------


def _state(db: psycopg.Connection) -> tuple:
    return (
        table_checksum(db, "public", "accounts"),
        _version(db),
        _rows(db, "SELECT count(*), max(id) FROM dbrollback.runs"),
        _rows(
            db,
            "SELECT format_type(atttypid, atttypmod), attname FROM pg_attribute "
            "WHERE attrelid = 'accounts'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        ),
    )


def _numeric_project(
    project: Project, downgrade: str = 'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))'
) -> None:
    _accounts(
        project,
        'op.drop_column("accounts", "legacy")\n'
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        downgrade + '\nop.add_column("accounts", sa.Column("legacy", sa.Text))',
    )


def _upgraded(project, cli, db, database_url, store, downgrade: str | None = None) -> dict:
    _numeric_project(project, *([downgrade] if downgrade else []))
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 30)
    doc = _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET amount = 5 WHERE id = 2")
    return doc


def test_dry_run_reports_the_same_and_changes_nothing(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _upgraded(project, cli, db, database_url, store)
    before = _state(db)
    dry = _rollback(cli, database_url, store, "--dry-run")
    assert dry["dry_run"] is True and _state(db) == before
    assert _rows(db, "SELECT count(*) FROM dbrollback.snapshots") == [(1,)]
    real = _rollback(cli, database_url, store)
    for key in ("run_id", "reverted_revisions", "tables", "schema_matches", "verified"):
        assert dry[key] == real[key], key
    assert real["dry_run"] is False and _version(db) == [("r1",)]


def test_a_downgrade_that_raises_changes_nothing(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _upgraded(
        project,
        cli,
        db,
        database_url,
        store,
        downgrade='op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))\nop.execute("SELECT 1/0")',
    )
    before = _state(db)
    result = cli("rollback", "--json", "--yes", *_args(database_url, store))
    assert result.code == 4, result.err
    assert result.json["error"] == "migration_failed" and result.json["failed_revision"] == "r2"
    after = _state(db)
    assert after[:2] == before[:2] and after[3] == before[3]
    assert _rows(db, "SELECT status FROM dbrollback.runs WHERE direction = 'rollback'") == [("failed",)]
    assert rolled_back_runs(db) == {}


def test_refusals_change_nothing(project, cli, db, database_url, tmp_path, monkeypatch):
    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    before = _state(db)

    # no terminal and no --yes
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert cli("rollback", *_args(database_url, store)).code == 3
    # --strategy restore discards later writes: never without a confirmation
    assert cli("rollback", "--strategy", "restore", *_args(database_url, store)).code == 3
    # a later run on top
    project.add_revision(
        "r3", "r2", 'op.add_column("accounts", sa.Column("x", sa.Text))', 'op.drop_column("accounts", "x")'
    )
    assert cli("upgrade", "--no-snapshot", *_args(database_url, store)).code == 0
    refused = cli("rollback", "--yes", "--json", "--run", str(doc["run_id"]), *_args(database_url, store))
    assert refused.code == 3 and "something ran after it" in refused.json["message"]
    assert cli("downgrade", "r2", *_args(database_url, store)).code == 0
    before = _state(db)

    # the snapshot deleted from the store
    (snapshot,) = doc["snapshots"]
    moved = tmp_path / "moved"
    (store / snapshot["id"]).rename(moved)
    refused = cli("rollback", "--yes", "--json", "--run", str(doc["run_id"]), *_args(database_url, store))
    assert refused.code == 3 and snapshot["id"] in refused.json["message"]
    moved.rename(store / snapshot["id"])
    assert _state(db)[:2] == before[:2]

    # an interrupted run is the most recent
    db.execute(
        "UPDATE dbrollback.runs SET status = 'interrupted' "
        "WHERE id = (SELECT max(id) FROM dbrollback.runs WHERE command = 'upgrade')"
    )
    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert (
        refused.code == 3 and "interrupted" in refused.json["message"] and "status" in refused.json["message"]
    )
    assert _state(db)[:2] == before[:2] and rolled_back_runs(db) == {}


def test_table_without_a_key_is_refused_in_merge_mode(project, cli, db, database_url, tmp_path):
    project.add_revision(
        "r1", None, 'op.create_table("loose", sa.Column("a", sa.Integer), sa.Column("b", sa.Text))'
    )
    project.add_revision(
        "r2", "r1", 'op.drop_column("loose", "b")', 'op.add_column("loose", sa.Column("b", sa.Text))'
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO loose SELECT g, 'b' FROM generate_series(1, 5) g")
    _upgrade(cli, database_url, store)
    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "--strategy restore" in refused.json["message"]
    assert _version(db) == [("r2",)]


def test_snapshot_with_a_damaged_file_is_refused(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _upgraded(project, cli, db, database_url, store)
    (data,) = [p for p in store.rglob("*.zst")]
    data.write_bytes(data.read_bytes()[:-3] + b"xyz")
    with pytest.raises(SnapshotCorrupt) as refused:
        rollback(_settings(project, database_url, store))
    assert refused.value.exit_code == 3 and "sha256" in refused.value.message
    assert _version(db) == [("r2",)] and rolled_back_runs(db) == {}


def test_missing_revision_file_uses_the_stored_source(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _upgraded(project, cli, db, database_url, store)
    (project.versions / "r2.py").unlink()
    result = cli("rollback", "--yes", *_args(database_url, store))
    assert result.code == 0, result.err
    assert "missing from the checkout" in result.out and "stored" in result.out
    assert _version(db) == [("r1",)]
    assert _rows(db, "SELECT amount::text FROM accounts WHERE id = 3") == [("3.25",)]


def test_run_with_nothing_lossy_and_text_output(project, cli, db, database_url, tmp_path):
    project.add_revision("r1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    project.add_revision("r2", "r1", 'op.create_index("t_id", "t", ["id"])', 'op.drop_index("t_id", "t")')
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _upgrade(cli, database_url, store)
    doc = _rollback(cli, database_url, store, "--dry-run")
    assert (doc["tables"], doc["verified"], doc["schema_matches"]) == ([], True, True)
    text = cli("rollback", "--yes", *_args(database_url, store))
    assert text.code == 0, text.err
    assert "Rolled back: run" in text.out and "Verified" in text.out
    assert _version(db) == [("r1",)]


def test_lock_held_by_another_run_is_refused(project, cli, db, database_url, tmp_path):
    from dbrollback.catalog.lock import RUN_LOCK

    store = tmp_path / "store"
    _upgraded(project, cli, db, database_url, store)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", RUN_LOCK)
        refused = cli("rollback", "--yes", "--json", "--lock-wait", "0s", *_args(database_url, store))
    assert refused.code == 3 and refused.json["error"] == "lock_held"
    assert _version(db) == [("r2",)]


def test_writers_running_through_the_rollback_keep_their_last_value(project, cli, db, database_url, tmp_path):
    """A writer keeps updating one row's transformed column and inserting rows before, during and after
    the rollback: its last committed value wins, its rows stay, and every other row gets its pre-image."""
    import threading

    store = tmp_path / "store"
    _numeric_project(project)
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 200)
    _upgrade(cli, database_url, store)
    committed: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '60s'")
                value = 0
                while not stop.is_set():
                    value += 1
                    with conn.transaction():
                        conn.execute("UPDATE accounts SET amount = %s::numeric WHERE id = 1", (value,))
                        conn.execute("INSERT INTO accounts (id, email) VALUES (%s, 'w')", (1000 + value,))
                    committed.append(value)
        except BaseException as exc:  # reported below: a thread would swallow it
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 5:
            threading.Event().wait(0.02)
        doc = _rollback(cli, database_url, store)
        seen = len(committed)
        while len(committed) < seen + 5 and thread.is_alive():
            threading.Event().wait(0.02)
    finally:
        stop.set()
        thread.join(60)
    assert failures == []
    assert doc["verified"] and _table(doc, "public.accounts")["kept_rows"] == 1
    last = committed[-1]
    assert _rows(db, "SELECT amount FROM accounts WHERE id = 1") == [(last,)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE id > 1000") == [(last,)]
    assert _rows(
        db,
        "SELECT count(*) FROM accounts WHERE id BETWEEN 2 AND 200 "
        "AND (amount <> id + 0.25 OR legacy IS DISTINCT FROM 'L' || id)",
    ) == [(0,)]


def test_on_a_terminal_the_prompt_shows_the_dry_run_first(
    project, cli, db, database_url, tmp_path, monkeypatch
):
    store = tmp_path / "store"
    _upgraded(project, cli, db, database_url, store)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers: list[bool] = [False, True]
    monkeypatch.setattr("click.confirm", lambda *a, **k: answers.pop(0))
    declined = cli("rollback", *_args(database_url, store))
    assert declined.code == 3 and "Would roll back (dry run, nothing changed)" in declined.out
    assert _version(db) == [("r2",)]
    accepted = cli("rollback", *_args(database_url, store))
    assert accepted.code == 0, accepted.err
    assert "Rolled back: run" in accepted.out and "public.accounts" in accepted.out
    assert _version(db) == [("r1",)]
    history = cli("history", "--json", *_args(database_url, store))
    assert history.code == 0
    runs = history.json if isinstance(history.json, list) else history.json["runs"]
    assert [r["direction"] for r in runs][:2] == ["rollback", "upgrade"]  # newest first
    assert runs[1]["rollback"]["possible"] is False and "rolled back by run" in runs[1]["rollback"]["reason"]


def _split_people(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("people", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        op.add_column("people", sa.Column("first", sa.Text))
        op.add_column("people", sa.Column("last", sa.Text))
        op.execute("UPDATE people SET first = split_part(name, ' ', 1), last = split_part(name, ' ', 2)")
        op.drop_column("people", "name")
    """,
        """
        op.add_column("people", sa.Column("name", sa.Text))
        op.execute("UPDATE people SET name = first || ' ' || last")
        op.drop_column("people", "last")
        op.drop_column("people", "first")
    """,
    )


def test_split_column_comes_back_and_the_split_values_are_saved(project, cli, db, database_url, tmp_path):
    _split_people(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO people SELECT g, 'Ann  Lee' || g FROM generate_series(1, 10) g")  # two spaces
    _upgrade(cli, database_url, store)
    db.execute("UPDATE people SET first = 'Bea', last = 'Cole' WHERE id = 1")
    db.execute("UPDATE people SET last = NULL WHERE id = 2")
    db.execute("UPDATE people SET first = first WHERE id = 3")  # written, but to the value it held
    db.execute("INSERT INTO people (id, first, last) VALUES (11, 'New', 'Person')")
    db.execute("INSERT INTO people (id) VALUES (12)")  # new, but nothing in the columns the downgrade drops
    # lost: only what the app wrote into first/last since (rows 1, 2, 11), not the migration's split
    dry = _rollback(cli, database_url, store, "--dry-run")
    assert (
        _table(dry, "public.people")["lost_writes"],
        _table(dry, "public.people")["lost_values_saved_to"],
    ) == (
        3,
        None,
    )
    doc = _rollback(cli, database_url, store)
    table = _table(doc, "public.people")
    assert table["restored_rows"] == 10 and table["verified"] and doc["verified"]
    assert table["lost_writes"] == 3 and table["lost_values_saved_to"]
    # the exact original text (the split lost the double space), and the new row as the downgrade made it
    assert _rows(db, "SELECT id, name FROM people WHERE id IN (1, 11, 12) ORDER BY id") == [
        (1, "Ann  Lee1"),
        (11, "New Person"),
        (12, None),
    ]
    # every value the downgrade dropped was saved, not only the ones counted: rolled forward, all are
    # back (the re-applied split itself already gives rows 3 … 12 their values: 2 rows needed them)
    again = _upgrade(cli, database_url, store)
    assert [(r["table"], r["columns"], r["rows"]) for r in again["restored_values"]] == [
        ("public.people", ["first", "last"], 2)
    ]
    assert _rows(db, "SELECT id, first, last FROM people WHERE id IN (1, 2, 3, 11, 12) ORDER BY id") == [
        (1, "Bea", "Cole"),
        (2, "Ann", None),
        (3, "Ann", ""),
        (11, "New", "Person"),
        (12, None, None),
    ]


def test_a_rollback_fingerprinted_without_added_column_hashes_counts_every_value(
    project, cli, db, database_url, tmp_path
):
    """Runs fingerprinted before catalog version 7 have no hashes of the columns the migration
    added: every value in them counts as a lost write (an upper bound), as it did then."""
    _split_people(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO people SELECT g, 'Ann Lee' || g FROM generate_series(1, 10) g")
    _upgrade(cli, database_url, store)
    db.execute("UPDATE dbrollback.fingerprints SET added_columns = '{}'")
    db.execute("UPDATE people SET first = 'Bea' WHERE id = 1")
    table = _table(_rollback(cli, database_url, store), "public.people")
    assert (table["lost_writes"], table["verified"]) == (10, True) and table["lost_values_saved_to"]


def test_identity_key_json_and_timestamps_reinserted_and_sequence_moved(
    project, cli, db, database_url, tmp_path
):
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("events", sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
                        sa.Column("doc", sa.dialects.postgresql.JSON), sa.Column("at", sa.DateTime(timezone=True)))
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        op.execute("DELETE FROM events WHERE id > 15")
        op.execute("UPDATE events SET doc = '{}', at = NULL WHERE id <= 5")
    """,
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("SET TimeZone = 'Asia/Tokyo'")
    db.execute(
        "INSERT INTO events (doc, at) SELECT json_build_object('g', g), "
        "'2026-01-01 10:00+00'::timestamptz + g * interval '1 hour' FROM generate_series(1, 20) g"
    )
    before = table_checksum(db, "public", "events")
    _upgrade(cli, database_url, store)
    doc = _rollback(cli, database_url, store)
    table = _table(doc, "public.events")
    assert (table["reinserted_rows"], table["restored_rows"], table["conflicts"]) == (5, 5, 0)
    assert table["verified"] and doc["verified"]
    assert table_checksum(db, "public", "events") == before
    assert _rows(db, "INSERT INTO events (doc) VALUES ('{}') RETURNING id") == [(21,)]


def test_snapshot_outside_the_window_or_pruned_is_refused(project, cli, db, database_url, tmp_path):
    from datetime import datetime, timedelta, timezone

    from dbrollback.snapshot.local import LocalStore

    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    (snapshot,) = doc["snapshots"]
    path = store / snapshot["id"] / "manifest.json"
    original = path.read_text()
    manifest = LocalStore(store).load(snapshot["id"])
    old = datetime.now(timezone.utc) - timedelta(days=8)  # the default window is 7 days
    path.write_text(manifest.model_copy(update={"created_at": old}).model_dump_json())
    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "rollback window" in refused.json["message"]
    path.write_text(original)

    db.execute("UPDATE dbrollback.snapshots SET deleted_at = now() WHERE id = %s", (snapshot["id"],))
    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "pruned" in refused.json["message"]
    assert _version(db) == [("r2",)] and rolled_back_runs(db) == {}


def _two_runs(project, cli, db, database_url: str, store) -> tuple[dict, dict, tuple[int, str]]:
    """Two upgrade runs (r2, then r3+r4), each followed by an application write."""
    _two_lossy(project)
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 30)
    before = _accounts_checksum(db)
    first = _upgrade(cli, database_url, store, "r2")
    db.execute("UPDATE accounts SET email = 'between' WHERE id = 1")
    second = _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET amount = 77 WHERE id = 2")
    return first, second, before


def _assert_both_runs_undone(db, before: tuple[int, str]) -> None:
    """The pre-upgrade data is back except the two application writes, which were kept."""
    assert _rows(db, "SELECT email, amount::text, legacy FROM accounts WHERE id IN (1, 2) ORDER BY id") == [
        ("between", "1.25", "L1"),
        ("User2@X.org", "77.00", "L2"),
    ]
    db.execute("UPDATE accounts SET email = 'User1@X.org' WHERE id = 1")
    db.execute("UPDATE accounts SET amount = 2.25 WHERE id = 2")
    assert _accounts_checksum(db) == before


def test_two_runs_rolled_back_in_order(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    first, second, before = _two_runs(project, cli, db, database_url, store)

    newest = _rollback(cli, database_url, store)
    assert (newest["run_id"], newest["reverted_revisions"]) == (second["run_id"], ["r4", "r3"])
    assert newest["verified"] and _version(db) == [("r2",)]
    older = _rollback(cli, database_url, store)
    assert (older["run_id"], older["reverted_revisions"]) == (first["run_id"], ["r2"])
    assert older["verified"] and _version(db) == [("r1",)]
    _assert_both_runs_undone(db, before)


def test_library_call_without_assume_yes_asks_confirm(project, cli, db, database_url, tmp_path):
    from dbrollback.errors import RefusedForSafety

    store = tmp_path / "store"
    doc = _upgraded(project, cli, db, database_url, store)
    settings = _settings(project, database_url, store)
    with pytest.raises(RefusedForSafety):
        rollback(settings, assume_yes=False)
    shown: list[list[str]] = []
    with pytest.raises(RefusedForSafety):
        rollback(settings, assume_yes=False, confirm=lambda plan: shown.append(plan.revisions) is not None)
    assert shown == [["r2"]] and _version(db) == [("r2",)]
    result = rollback(settings, assume_yes=False, confirm=lambda plan: True)
    assert result.run_id == doc["run_id"] and result.verified and _version(db) == [("r1",)]
