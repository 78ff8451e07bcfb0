"""Cases a review of issue #6 found (each asserts the behaviour a user relies on): an expansion
another one reads, NOT NULL promotion with NULLs, roll-forward after a rollback, hand-written
downgrades, serial renames, values that do not fit, abort during a backfill, earlier runs'
backfills, on the real server."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from .test_expand import ABORT, _args, _run


def _rename_name(project, downgrade: str = ABORT) -> None:
    """r2: t.name renamed to full_name by expand, downgrade expand.abort() unless given."""
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("t", "name", "full_name")', downgrade
    )


def _base(project, cols: str, rows_sql: str) -> None:
    project.add_revision(
        "r1",
        None,
        f"""
        op.execute('''CREATE TABLE t (id bigint PRIMARY KEY, {cols})''')
        op.execute('''{rows_sql}''')
    """,
    )


# 1. a new column that would become NOT NULL but has NULLs: contract refuses and adds no CHECK
def test_contract_refuses_null_where_the_new_column_becomes_not_null(
    project, cli, db, database_url, tmp_path
):
    args = _args(database_url, tmp_path / "s")
    _base(project, "code text NOT NULL", "INSERT INTO t VALUES (1, '10'), (2, 'x')")
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.change_column_type("t", "code", "integer",
            up="CASE WHEN code ~ '^[0-9]+$' THEN code::integer END", down="code_new::text")
    """,
        ABORT,
    )
    _run(cli, "upgrade", *args)
    res = cli("contract", "--yes", "--json", *args)
    leftovers = db.execute(
        r"SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE '\_dbrb\_nn%'"
    ).fetchall()
    # old code keeps writing: must still work while the expansion is open
    db.execute("INSERT INTO t (id, code) VALUES (3, 'y')")
    assert res.code == 3  # should be refused up front, nothing changed
    assert leftovers == []


# 2. rename of a serial (sequence-owned) column: the sequence moves to the new column
def test_contract_of_a_renamed_serial_column_keeps_its_sequence(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "s")
    _base(project, "num serial NOT NULL", "INSERT INTO t (id) VALUES (1), (2)")
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.rename_column("t", "num", "number")
    """,
        ABORT,
    )
    _run(cli, "upgrade", *args)
    db.execute("INSERT INTO t (id) VALUES (3)")
    res = cli("contract", "--yes", *args)
    assert res.code == 0
    assert db.execute("INSERT INTO t (id) VALUES (4) RETURNING number").fetchone() == (4,)


# 3. a value that does not fit the old column fails the write; nothing is silently cut
def test_a_value_that_does_not_fit_fails_the_write_instead_of_being_cut(
    project, cli, db, database_url, tmp_path
):
    args = _args(database_url, tmp_path / "s")
    _base(project, "nick varchar(5)", "INSERT INTO t VALUES (1, 'abc')")
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.change_column_type("t", "nick", "text", up="nick::text", down="nick_new")
    """,
        ABORT,
    )
    _run(cli, "upgrade", *args)
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        db.execute("UPDATE t SET nick_new = 'abcdefghij' WHERE id = 1")
    assert db.execute("SELECT nick, nick_new FROM t WHERE id = 1").fetchone() == ("abc", "abc")
    _run(cli, "abort", "--yes", *args)
    assert db.execute("SELECT nick FROM t WHERE id = 1").fetchone() == ("abc",)


# 4a. `dbrollback downgrade` with a hand-written downgrade: the trigger goes too
def test_downgrade_written_by_hand_leaves_no_trigger_behind(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "s")
    _base(project, "name text", "INSERT INTO t VALUES (1, 'a')")
    _rename_name(project, 'op.drop_column("t", "full_name")')
    _run(cli, "upgrade", *args)
    res = cli("downgrade", "r1", *args)
    assert res.code == 0
    assert db.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal"
    ).fetchone() == (0,)
    db.execute("UPDATE t SET name = 'b' WHERE id = 1")  # old code writes after the downgrade


# 4b. `dbrollback rollback` with the same hand-written downgrade works
def test_rollback_with_a_downgrade_written_by_hand(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "s")
    _base(project, "name text", "INSERT INTO t VALUES (1, 'a')")
    _rename_name(project, 'op.drop_column("t", "full_name")')
    _run(cli, "upgrade", "r1", *args)
    _run(cli, "upgrade", *args)
    res = cli("rollback", "--yes", *args)
    assert res.code == 0


# 5. abort while a backfill runs: the backfill ends cancelled, --resume has nothing to do
def test_abort_during_a_backfill_cancels_it_cleanly(project, cli, db, database_url, tmp_path):
    from dbrollback.backfill.engine import BackfillOptions, run_backfill
    from dbrollback.errors import DbrollbackError

    args = _args(database_url, tmp_path / "s")
    _base(project, "name text", "INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 3000) g")
    _rename_name(project)
    _run(cli, "upgrade", "--no-backfill", *args)
    bid = db.execute("SELECT backfill_id FROM dbrollback.expansions").fetchone()[0]
    errors: list[BaseException] = []

    def go() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            try:
                run_backfill(c, bid, BackfillOptions(initial_batch_rows=10, target_batch_ms=0, pause_ms=50))
            except DbrollbackError as exc:
                errors.append(exc)

    th = threading.Thread(target=go)
    th.start()
    time.sleep(1.0)
    _run(cli, "abort", "--yes", *args)
    th.join()
    status = db.execute("SELECT status, error FROM dbrollback.backfills WHERE id = %s", (bid,)).fetchone()
    res = cli("backfill", "--resume", *args)
    assert status[0] == "cancelled"
    assert res.code == 0


# 6. an earlier run's backfill another session runs: the upgrade applies its revisions and exits 0
def test_an_earlier_runs_backfill_held_elsewhere_does_not_fail_the_upgrade(
    project, cli, db, database_url, tmp_path
):
    from dbrollback.backfill.engine import LOCK_SPACE

    args = _args(database_url, tmp_path / "s")
    _base(project, "name text", "INSERT INTO t VALUES (1, 'a')")
    _rename_name(project)
    _run(cli, "upgrade", "--no-backfill", *args)
    bid = db.execute("SELECT backfill_id FROM dbrollback.expansions").fetchone()[0]
    project.add_revision(
        "r3", "r2", 'op.execute("CREATE TABLE u (id int PRIMARY KEY)")', 'op.execute("DROP TABLE u")'
    )
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, bid))
        res = cli("upgrade", "--json", *args)
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("r3",)]
    assert res.code in (0,)  # applied: not 'refused, nothing changed'


def test_upgrade_after_rollback_keeps_old_code_writes_to_the_old_column(
    project, cli, db, database_url, tmp_path
):
    args = _args(database_url, tmp_path / "s")
    project.add_revision(
        "r1",
        None,
        """
        op.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text, newsletter boolean)")
        op.execute("INSERT INTO customers SELECT g, 'c' || g, true FROM generate_series(1, 10) g")
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        op.drop_column("customers", "newsletter")
        expand.rename_column("customers", "name", "full_name")
    """,
        """
        from dbrollback import expand
        expand.abort()
        op.add_column("customers", sa.Column("newsletter", sa.Boolean))
    """,
    )
    _run(cli, "upgrade", "r1", *args)
    _run(cli, "upgrade", *args)
    _run(cli, "rollback", "--yes", *args)
    # old code, deployed again after the rollback, renames customer 1
    db.execute("UPDATE customers SET name = 'changed while rolled back' WHERE id = 1")
    _run(cli, "upgrade", *args)
    row = db.execute("SELECT name, full_name FROM customers WHERE id = 1").fetchone()
    assert row == ("changed while rolled back", "changed while rolled back")


def _rename_then_slug(project, cli, database_url: str, tmp_path, slug_from: str) -> list[str]:
    """customers(id, name NOT NULL) with 10 rows; r2 renames name to full_name; r3 adds a NOT NULL
    slug computed from ``slug_from``; all upgraded."""
    args = _args(database_url, tmp_path / "s")
    project.add_revision(
        "r1",
        None,
        """
        op.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL)")
        op.execute("INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 10) g")
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.rename_column("customers", "name", "full_name")',
        ABORT,
    )
    project.add_revision(
        "r3",
        "r2",
        "from dbrollback import expand\n"
        f'expand.add_not_null_column("customers", "slug", "text", backfill="lower({slug_from})")',
        ABORT,
    )
    _run(cli, "upgrade", *args)
    return args


def test_a_column_another_open_expansion_reads_is_not_dropped(project, cli, db, database_url, tmp_path):
    args = _rename_then_slug(project, cli, database_url, tmp_path, "name")
    res = cli("contract", "--yes", "--json", "r2", *args)
    assert res.code == 3 and "expansion 2" in res.json["message"]
    # nothing changed: new code's writes still sync both ways, and r3's column is computed
    db.execute("INSERT INTO customers (id, full_name) VALUES (100, 'New')")
    assert db.execute("SELECT name, slug FROM customers WHERE id = 100").fetchone() == ("New", "new")
    # closing r3 first lets r2 go
    _run(cli, "contract", "--yes", "r3", *args)
    _run(cli, "contract", "--yes", "r2", *args)
    assert db.execute("SELECT full_name, slug FROM customers WHERE id = 100").fetchone() == ("New", "new")


def test_a_new_column_another_open_expansion_reads_is_not_aborted(project, cli, db, database_url, tmp_path):
    args = _rename_then_slug(project, cli, database_url, tmp_path, "full_name")
    res = cli("abort", "--yes", "--json", "r2", *args)
    assert res.code == 3 and "expansion 2" in res.json["message"]
    db.execute("INSERT INTO customers (id, name) VALUES (100, 'Old')")
    assert db.execute("SELECT full_name, slug FROM customers WHERE id = 100").fetchone() == ("Old", "old")
    # all of them, newest first, is fine
    _run(cli, "abort", "--yes", *args)
    assert [r[0] for r in db.execute("SELECT status FROM dbrollback.expansions ORDER BY id")] == [
        "aborted"
    ] * 2
