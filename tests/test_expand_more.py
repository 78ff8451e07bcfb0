"""More expand/contract behaviour on the real server: several open expansions at once, `up` reading
other columns, downgrades after contract, and `expand.backfill()` in an autocommit block."""

from __future__ import annotations

import psycopg

from .conftest import Project
from .test_expand import ABORT, _args, _expansions, _leftovers, _run, _version


def _orders(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("qty", sa.Integer, nullable=False), sa.Column("price", sa.Numeric(10, 2)),
                        sa.Column("status", sa.Text))
        op.execute("INSERT INTO orders SELECT g, g % 7 + 1, g * 1.5, 'new' FROM generate_series(1, 300) g")
        """,
    )


def test_a_second_expansion_upgrades_while_the_first_is_open(project, cli, db, database_url, tmp_path):
    # The default upgrade runs the pending revisions on a schema-only copy first (to plan
    # snapshots); the open expansion's trigger must come across with its function.
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("orders", "status", "state")', ABORT
    )
    project.add_revision(
        "r3",
        "r2",
        'from dbrollback import expand\nexpand.add_synced_column("orders", "price_cents", "bigint", '
        'old_column="price", up="round(price * 100)", down="price_cents / 100.0")',
        ABORT,
    )
    _run(cli, "upgrade", "r2", *args)
    plan = _run(cli, "plan", "--json", *args).json
    assert [r["revision"] for r in plan["revisions"]] == ["r3"]
    _run(cli, "upgrade", *args)
    assert _version(db) == ["r3"]
    assert db.execute(
        "SELECT count(*) FROM orders WHERE state IS DISTINCT FROM status OR price_cents <> round(price * 100)"
    ).fetchone() == (0,)
    status = _run(cli, "status", "--json", *args).json
    assert [(e["revision"], e["backfill"]["status"]) for e in status["open_expansions"]] == [
        ("r2", "done"),
        ("r3", "done"),
    ]
    # contract of one revision leaves the other open
    _run(cli, "contract", "r2", "--yes", *args)
    assert [(e[1], e[3]) for e in _expansions(db)] == [("r2", "contracted"), ("r3", "open")]
    db.execute("UPDATE orders SET price_cents = 999 WHERE id = 1")
    assert str(db.execute("SELECT price FROM orders WHERE id = 1").fetchone()[0]) == "9.99"  # type: ignore[index]


def test_up_reading_another_column_follows_writes_to_it(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.add_synced_column("orders", "total", "numeric(12,2)", '
        'old_column="price", up="price * qty")',
        ABORT,
    )
    _run(cli, "upgrade", *args)
    db.execute("UPDATE orders SET qty = 100 WHERE id = 5")  # only the other column `up` reads
    assert db.execute("SELECT total FROM orders WHERE id = 5").fetchone()[0] == 750  # type: ignore[index]
    # no down: new code may not write the new column alone
    try:
        db.execute("UPDATE orders SET total = 1 WHERE id = 6")
        raise AssertionError("a write of the computed column alone must fail")
    except psycopg.errors.CheckViolation as exc:
        assert "computed from price" in str(exc)
    doc = _run(cli, "contract", "--dry-run", "--json", *args).json
    assert doc["expansions"][0]["out_of_sync_rows"] == 0


def test_downgrade_of_a_contracted_expansion_is_refused(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("orders", "status", "state")', ABORT
    )
    _run(cli, "upgrade", *args)
    _run(cli, "contract", "--yes", *args)
    result = _run(cli, "downgrade", "r1", "--json", *args, code=3)
    assert "contracted" in result.json["message"]
    assert _version(db) == ["r2"]
    columns = [r[0] for r in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position"
    )]  # fmt: skip
    assert columns == ["id", "qty", "price", "state"]
    # abort of it is refused too
    _run(cli, "abort", "r2", "--yes", *args, code=3)


def test_expand_backfill_in_an_autocommit_block(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2",
        "r1",
        """
        op.add_column("orders", sa.Column("price_cents", sa.BigInteger))
        from dbrollback import expand
        with op.get_context().autocommit_block():
            expand.backfill("orders", set="price_cents = round(price * 100)", where="price_cents IS NULL",
                            initial_batch_rows=50, target_batch_ms=0)
        """,
        'op.drop_column("orders", "price_cents")',
    )
    _run(cli, "upgrade", *args)
    assert db.execute(
        "SELECT count(*) FROM orders WHERE price_cents IS DISTINCT FROM round(price * 100)"
    ).fetchone() == (0,)
    (row,) = db.execute("SELECT status, rows_updated, batches FROM dbrollback.backfills").fetchall()
    assert row[0] == "done" and row[1] == 300 and row[2] >= 6
    assert _leftovers(db) == []


def test_expand_backfill_inside_the_transaction_is_refused(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.backfill("orders", set="qty = qty + 1")',
    )
    _run(cli, "upgrade", "r1", *args)
    result = _run(cli, "upgrade", "--json", *args, code=2)
    assert "autocommit_block" in result.json["message"]
    assert _version(db) == ["r1"]
    assert db.execute("SELECT sum(qty) FROM orders").fetchone() == (
        db.execute("SELECT sum(g % 7 + 1) FROM generate_series(1, 300) g").fetchone()
    )


def test_a_data_backfill_on_an_expanded_table_goes_through_the_dual_write_trigger(
    project, cli, db, database_url, tmp_path
):
    # The expansion's own backfill skips its trigger (it writes exactly what the trigger would);
    # any other backfill of the table must not: the new column follows the old one.
    args = _args(database_url, tmp_path / "store")
    _orders(project)
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("orders", "status", "state")', ABORT
    )
    _run(cli, "upgrade", *args)
    _run(cli, "backfill", "orders", "--set", "status = 'shipped'", "--where", "id <= 100", *args)
    assert db.execute(
        "SELECT count(*) FILTER (WHERE state = 'shipped'), count(*) FILTER (WHERE state IS DISTINCT FROM status) "
        "FROM orders"
    ).fetchone() == (100, 0)
    (trigger,) = db.execute(
        r"SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname LIKE '\_dbrb\_expand%'"
    ).fetchone()  # type: ignore[misc]
    assert "current_setting('dbrollback.backfilling'" in trigger
