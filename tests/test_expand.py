"""dbrollback.expand through the real CLI on a real server (issue #6): the dual-write trigger, the
backfill run by `upgrade`, `contract`, `abort`, the downgrade and `rollback` paths, every helper, and
the refusals. Writers from several processes at once are in test_expand_concurrency.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import CliResult, Project

ROWS = 3000
ABORT = "from dbrollback import expand\nexpand.abort()"

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'Ödd "tab"; le'
ODD_OLD = 'nä "me"; c'
ODD_NEW = 'fü ll"; n'
ODD_OTHER = 'ot "her"; ß'
ODD_INDEX = 'ix "ödd"; i'


# -- helpers ------------------------------------------------------------------------------------


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _run(cli, *args: str, code: int = 0) -> CliResult:
    result = cli(*args)
    assert result.code == code, f"exit {result.code}\nout: {result.out}\nerr: {result.err}"
    assert "Traceback" not in result.out + result.err
    return result


def _regclass(schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string(None)


def _describe(db: psycopg.Connection, table: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about ``table`` (a quoted, qualified name) a schema change can alter."""
    oid = db.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]  # type: ignore[index]
    return {
        "columns": db.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (oid,),
        ).fetchall(),
        "constraints": db.execute(
            """SELECT conname, contype, pg_get_constraintdef(oid), convalidated FROM pg_constraint
               WHERE conrelid = %s ORDER BY conname""",
            (oid,),
        ).fetchall(),
        "indexes": db.execute(
            """SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = %s ORDER BY c.relname""",
            (oid,),
        ).fetchall(),
        "triggers": db.execute(
            """SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger
               WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname""",
            (oid,),
        ).fetchall(),
    }


def _columns(db: psycopg.Connection, table: str) -> list[str]:
    return [c[0] for c in _describe(db, table)["columns"]]


def _leftovers(db: psycopg.Connection) -> list[str]:
    """Dual-write triggers and functions and temporary NOT NULL checks still in the database."""
    rows = db.execute(
        r"""SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE '\_dbrb\_expand%'
            UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE '\_dbrb\_expand%'
            UNION ALL SELECT 'constraint ' || conname FROM pg_constraint WHERE conname LIKE '\_dbrb\_nn%'"""
    ).fetchall()
    return sorted(r[0] for r in rows)


def _version(db: psycopg.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT version_num FROM alembic_version")]


def _expansions(db: psycopg.Connection) -> list[tuple[int, str | None, str, str]]:
    if db.execute("SELECT to_regclass('dbrollback.expansions')").fetchone() == (None,):
        return []
    return db.execute("SELECT id, revision, kind, status FROM dbrollback.expansions ORDER BY id").fetchall()


def _pairs(
    db: psycopg.Connection, table: str = "customers", old: str = "name", new: str = "full_name"
) -> dict:
    query = sql.SQL("SELECT id, {}, {} FROM {} ORDER BY id").format(
        sql.Identifier(old), sql.Identifier(new), sql.SQL(table)
    )
    return {r[0]: (r[1], r[2]) for r in db.execute(query)}


def _customers(project: Project, extra_r1: str = "") -> None:
    """r1: customers (id, name NOT NULL DEFAULT 'anon', note) with ROWS rows; r2 renames name to
    full_name, its downgrade is expand.abort()."""
    project.add_revision(
        "r1",
        None,
        f"""
        op.create_table(
            "customers",
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("name", sa.Text, nullable=False, server_default="anon"),
            sa.Column("note", sa.String(20)),
            sa.Column("created", sa.DateTime(timezone=True), server_default=sa.text("now()")),
            sa.CheckConstraint("id > 0", name="id_positive"),
            sa.UniqueConstraint("note", name="note_unique"),
        )
        op.create_index("ix_created", "customers", ["created"])
        op.execute("INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, {ROWS}) g")
        {extra_r1}
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.rename_column("customers", "name", "full_name")',
        ABORT,
    )


def _write_both_ways(database_url: str) -> dict[int, str]:
    """Old code (name) and new code (full_name) write from their own connections; the values every
    written row must end with, by id."""
    expected = {}
    with (
        psycopg.connect(database_url, autocommit=True) as old,
        psycopg.connect(database_url, autocommit=True) as new,
    ):
        old.execute("UPDATE customers SET name = 'old upd' WHERE id = 1")
        expected[1] = "old upd"
        new.execute("UPDATE customers SET full_name = 'new upd' WHERE id = 2")
        expected[2] = "new upd"
        row = old.execute("INSERT INTO customers (name) VALUES ('old ins') RETURNING id").fetchone()
        expected[row[0]] = "old ins"  # type: ignore[index]
        row = new.execute("INSERT INTO customers (full_name) VALUES ('new ins') RETURNING id").fetchone()
        expected[row[0]] = "new ins"  # type: ignore[index]
        # both columns, consistently: allowed
        new.execute("UPDATE customers SET full_name = 'both', name = 'both' WHERE id = 4")
        expected[4] = "both"
        # the old column written by old code after new code wrote the row: old code wins
        new.execute("UPDATE customers SET full_name = 'new first' WHERE id = 5")
        old.execute("UPDATE customers SET name = 'old later' WHERE id = 5")
        expected[5] = "old later"
    return expected


# -- rename_column: the whole lifecycle ---------------------------------------------------------


def test_rename_column_lifecycle_upgrade_dual_write_contract(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project)
    up = _run(cli, "upgrade", "--json", *args).json
    (done,) = up["expansions"]
    assert done["backfill"]["status"] == "done"
    assert done["backfill"]["rows_updated"] == ROWS
    pairs = _pairs(db)
    assert len(pairs) == ROWS
    assert all(name == full == f"c{i}" for i, (name, full) in pairs.items())
    assert _columns(db, "customers") == ["id", "name", "note", "created", "full_name"]

    expected = _write_both_ways(database_url)

    # a write setting both columns to values that do not correspond fails; the row is unchanged
    with psycopg.connect(database_url, autocommit=True) as app:
        for statement in (
            "UPDATE customers SET name = 'x', full_name = 'y' WHERE id = 3",
            "INSERT INTO customers (id, name, full_name) VALUES (999999, 'x', 'y')",
        ):
            with pytest.raises(psycopg.errors.CheckViolation) as caught:
                app.execute(statement)
            assert caught.value.sqlstate == "23514"
            assert "do not correspond" in str(caught.value)
        # an INSERT with no value: the old column's DEFAULT in both
        row = app.execute("INSERT INTO customers DEFAULT VALUES RETURNING id, name, full_name").fetchone()
        assert row is not None and row[1:] == ("anon", "anon")
        expected[row[0]] = "anon"
    assert db.execute("SELECT name, full_name FROM customers WHERE id = 3").fetchone() == ("c3", "c3")
    assert db.execute("SELECT count(*) FROM customers WHERE id = 999999").fetchone() == (0,)

    wanted = {i: f"c{i}" for i in range(1, ROWS + 1)} | expected
    assert _pairs(db) == {i: (v, v) for i, v in wanted.items()}

    status = _run(cli, "status", "--json", *args).json
    (shown,) = status["open_expansions"]
    assert (shown["revision"], shown["kind"], shown["table"], shown["change"]) == (
        "r2",
        "rename_column",
        "public.customers",
        "name -> full_name",
    )
    assert shown["backfill"]["status"] == "done"
    assert shown["backfill"]["rows_updated"] == ROWS

    before_contract = _describe(db, "customers")
    dry = _run(cli, "contract", "--dry-run", "--json", *args).json
    assert dry["dry_run"] is True
    (checked,) = dry["expansions"]
    assert checked["checked_rows"] == len(wanted)
    assert checked["out_of_sync_rows"] == 0
    assert checked["snapshot_id"] is None
    assert _describe(db, "customers") == before_contract
    assert [e[3] for e in _expansions(db)] == ["open"]
    assert len(_leftovers(db)) == 2  # the trigger and its function

    doc = _run(cli, "contract", "--yes", "--json", *args).json
    (contracted,) = doc["expansions"]
    assert contracted["action"] == "contracted"
    assert contracted["out_of_sync_rows"] == 0
    assert "column name" in contracted["dropped"]
    snapshot_id = contracted["snapshot_id"]
    assert snapshot_id
    after = _describe(db, "customers")
    assert [c[:4] for c in after["columns"]] == [
        ("id", "bigint", True, "nextval('customers_id_seq'::regclass)"),
        ("note", "character varying(20)", False, None),
        ("created", "timestamp with time zone", False, "now()"),
        ("full_name", "text", True, "'anon'::text"),
    ]
    assert [c[:3] for c in after["constraints"] if c[1] != "n"] == [  # PostgreSQL 18 lists NOT NULL too
        ("customers_pkey", "p", "PRIMARY KEY (id)"),
        ("id_positive", "c", "CHECK ((id > 0))"),
        ("note_unique", "u", "UNIQUE (note)"),
    ]
    assert after["triggers"] == []
    assert _leftovers(db) == []
    assert [e[3] for e in _expansions(db)] == ["contracted"]
    got = dict(db.execute("SELECT id, full_name FROM customers").fetchall())
    assert got == wanted
    # new code's insert without a value gets the old column's default
    assert db.execute("INSERT INTO customers DEFAULT VALUES RETURNING full_name").fetchone() == ("anon",)

    listed = _run(cli, "snapshot", "list", "--json", *args).json
    assert snapshot_id in [s["id"] for s in listed]


# -- abort: the table exactly as before, plus every write ---------------------------------------


def _expanded(project, cli, db, database_url, store) -> tuple[dict, dict[int, str]]:
    """customers at r1 (described), then r2 applied by its own run, then writes both ways."""
    _customers(project)
    _run(cli, "upgrade", "r1", *_args(database_url, store))
    before = _describe(db, "customers")
    _run(cli, "upgrade", *_args(database_url, store))
    assert _describe(db, "customers") != before
    expected = {i: f"c{i}" for i in range(1, ROWS + 1)} | _write_both_ways(database_url)
    with psycopg.connect(database_url, autocommit=True) as app:
        row = app.execute("INSERT INTO customers DEFAULT VALUES RETURNING id").fetchone()
        expected[row[0]] = "anon"  # type: ignore[index]
    return before, expected


def _assert_as_before(db: psycopg.Connection, before: dict, expected: dict[int, str]) -> None:
    assert _describe(db, "customers") == before
    assert dict(db.execute("SELECT id, name FROM customers").fetchall()) == expected
    assert _leftovers(db) == []
    # the old column's default is back on the column (it lived in the trigger meanwhile)
    assert db.execute("INSERT INTO customers DEFAULT VALUES RETURNING name").fetchone() == ("anon",)


def test_abort_leaves_the_table_as_before_plus_every_write(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    before, expected = _expanded(project, cli, db, database_url, store)
    dry = _run(cli, "abort", "--dry-run", "--json", *_args(database_url, store)).json
    assert [e["action"] for e in dry["expansions"]] == ["would abort"]
    assert "full_name" in _columns(db, "customers")

    doc = _run(cli, "abort", "--yes", "--json", *_args(database_url, store)).json
    (aborted,) = doc["expansions"]
    assert aborted["action"] == "aborted"
    assert "column full_name" in aborted["dropped"]
    _assert_as_before(db, before, expected)
    assert [e[3] for e in _expansions(db)] == ["aborted"]
    assert _version(db) == ["r2"]  # abort leaves the revision applied

    # its downgrade (expand.abort()) is then a no-op
    _run(cli, "downgrade", "r1", *_args(database_url, store))
    assert _version(db) == ["r1"]
    assert _describe(db, "customers") == before


def test_downgrade_runs_expand_abort(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    before, expected = _expanded(project, cli, db, database_url, store)
    _run(cli, "downgrade", "-1", *_args(database_url, store))
    assert _version(db) == ["r1"]
    _assert_as_before(db, before, expected)
    assert db.execute("SELECT status FROM dbrollback.expansions").fetchall() == [("aborted",)]


def test_rollback_of_the_run_that_opened_it_aborts(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    before, expected = _expanded(project, cli, db, database_url, store)
    doc = _run(cli, "rollback", "--yes", "--json", *_args(database_url, store)).json
    assert doc["verified"] is True
    assert doc["reverted_revisions"] == ["r2"]
    assert _version(db) == ["r1"]
    _assert_as_before(db, before, expected)
    # aborted by the revision's downgrade (expand.abort()), in the rollback's transaction
    assert db.execute("SELECT status, closed_by FROM dbrollback.expansions").fetchall() == [
        ("aborted", "downgrade")
    ]


def _hand_written_downgrade(project: Project) -> None:
    """r2's downgrade rewritten by hand, without expand.abort() (lint's expand-without-abort)."""
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.rename_column("customers", "name", "full_name")',
        'op.drop_column("customers", "full_name")',
    )


def test_rollback_says_it_aborted_the_expansion(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    before, expected = _expanded(project, cli, db, database_url, store)
    _hand_written_downgrade(project)
    result = _run(cli, "rollback", "--yes", *_args(database_url, store))
    # the downgrade dropped the column; the rollback aborted what it left (trigger, old DEFAULT)
    assert "Note: expansion 1 of r2 (public.customers: name -> full_name) aborted" in result.out
    _assert_as_before(db, before, expected)
    assert db.execute("SELECT status, closed_by FROM dbrollback.expansions").fetchall() == [
        ("aborted", "rollback")
    ]


def test_rollback_json_reports_the_aborted_expansion(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _expanded(project, cli, db, database_url, store)
    _hand_written_downgrade(project)
    doc = _run(cli, "rollback", "--yes", "--json", *_args(database_url, store)).json
    assert any("expansion 1 of r2" in n and "aborted" in n for n in doc.get("notes", [])), doc


def test_downgrade_written_by_hand_is_followed_by_an_abort(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    before, expected = _expanded(project, cli, db, database_url, store)
    _hand_written_downgrade(project)
    _run(cli, "downgrade", "r1", *_args(database_url, store))
    _assert_as_before(db, before, expected)  # no trigger left to break writes, DEFAULT back


def test_rollback_after_contract_is_refused(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project)
    _run(cli, "upgrade", "r1", *args)
    _run(cli, "upgrade", *args)
    _run(cli, "contract", "--yes", *args)
    described = _describe(db, "customers")
    data = db.execute("SELECT * FROM customers ORDER BY id").fetchall()
    result = _run(cli, "rollback", "--yes", "--json", *args, code=3)
    assert result.json["error"] == "refused"
    assert "contracted" in result.json["message"]
    assert "snapshot" in result.json["message"]
    assert _version(db) == ["r2"]
    assert _describe(db, "customers") == described
    assert db.execute("SELECT * FROM customers ORDER BY id").fetchall() == data
    # the downgrade itself says the same instead of leaving a half-undone table
    result = _run(cli, "abort", "--yes", "r2", *args, code=3)
    assert "already closed" in result.err


# -- change_column_type, split_column, add_not_null_column ---------------------------------------


def test_change_column_type_backfill_never_rewrites_the_old_column(project, cli, db, database_url, tmp_path):
    """numeric(10,3) -> integer cents: ``up`` rounds away the third decimal and ``down`` cannot bring it
    back, so a backfill that wrote the old column through ``down`` would change 1.005 into 1.01."""
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("price", sa.Numeric(10, 3), nullable=False))
        op.execute("INSERT INTO items SELECT g, g + 0.005 FROM generate_series(1, 2000) g")
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.change_column_type("items", "price", "integer", new_column="price_cents",
                                  up="round(price * 100)", down="price_cents / 100.0")
        """,
        ABORT,
    )
    _run(cli, "upgrade", "r1", *args)
    old_xmins = dict(db.execute("SELECT id, xmin::text FROM items").fetchall())
    _run(cli, "upgrade", *args)
    rows = db.execute("SELECT id, price, price_cents FROM items ORDER BY id").fetchall()
    assert rows == [(i, Decimal(i) + Decimal("0.005"), i * 100 + 1) for i in range(1, 2001)]
    assert dict(db.execute("SELECT id, xmin::text FROM items").fetchall()) != old_xmins  # rows were updated

    with psycopg.connect(database_url, autocommit=True) as new_code:
        new_code.execute("UPDATE items SET price_cents = 12345 WHERE id = 1")
        new_code.execute("INSERT INTO items (id, price_cents) VALUES (5001, 250)")
    with psycopg.connect(database_url, autocommit=True) as old_code:
        old_code.execute("UPDATE items SET price = 2.345 WHERE id = 2")
        old_code.execute("INSERT INTO items (id, price) VALUES (5002, 7.5)")
        with pytest.raises(psycopg.errors.CheckViolation):
            old_code.execute("UPDATE items SET price = 1, price_cents = 1 WHERE id = 3")
    got = {
        r[0]: r[1:]
        for r in db.execute("SELECT id, price, price_cents FROM items WHERE id IN (1,2,3,5001,5002)")
    }
    assert got == {
        1: (Decimal("123.450"), 12345),
        2: (Decimal("2.345"), 235),
        3: (Decimal("3.005"), 301),
        5001: (Decimal("2.500"), 250),
        5002: (Decimal("7.500"), 750),
    }
    # a write of the new column that agrees with the row keeps the old value's extra precision
    with psycopg.connect(database_url, autocommit=True) as new_code:
        new_code.execute("UPDATE items SET price_cents = 401 WHERE id = 4")
    assert db.execute("SELECT price FROM items WHERE id = 4").fetchone() == (Decimal("4.005"),)

    _run(cli, "contract", "--yes", *args)
    assert _columns(db, "items") == ["id", "price_cents"]
    assert db.execute(
        "SELECT is_nullable, data_type FROM information_schema.columns WHERE table_name = 'items' "
        "AND column_name = 'price_cents'"
    ).fetchone() == ("NO", "integer")
    cents = dict(db.execute("SELECT id, price_cents FROM items").fetchall())
    assert cents == {i: i * 100 + 1 for i in range(3, 2001)} | {1: 12345, 2: 235, 5001: 250, 5002: 750}


def test_split_column(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("people", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("full_name", sa.Text))
        op.execute("INSERT INTO people SELECT g, 'First' || g || ' Last' || g FROM generate_series(1, 1000) g")
        op.execute("INSERT INTO people VALUES (1001, 'Cher'), (1002, NULL)")
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.split_column("people", "full_name", {
            "first_name": ("text", "split_part(full_name, ' ', 1)"),
            "last_name": ("text", "split_part(full_name, ' ', 2)"),
        }, down="first_name || ' ' || last_name")
        """,
        ABORT,
    )
    _run(cli, "upgrade", *args)
    rows = {r[0]: r[1:] for r in db.execute("SELECT id, full_name, first_name, last_name FROM people")}
    expected = {i: (f"First{i} Last{i}", f"First{i}", f"Last{i}") for i in range(1, 1001)}
    # 'Cher' splits into ('Cher', '') and stays 'Cher': down ('Cher ') is never written back by the backfill
    expected |= {1001: ("Cher", "Cher", ""), 1002: (None, None, None)}
    assert rows == expected

    with psycopg.connect(database_url, autocommit=True) as new_code:
        new_code.execute("UPDATE people SET first_name = 'Ada' WHERE id = 1")
        new_code.execute("INSERT INTO people (id, first_name, last_name) VALUES (2000, 'Grace', 'Hopper')")
    with psycopg.connect(database_url, autocommit=True) as old_code:
        old_code.execute("UPDATE people SET full_name = 'Alan Turing' WHERE id = 2")
        old_code.execute("INSERT INTO people (id, full_name) VALUES (2001, 'Edsger Dijkstra')")
    expected |= {
        1: ("Ada Last1", "Ada", "Last1"),
        2: ("Alan Turing", "Alan", "Turing"),
        2000: ("Grace Hopper", "Grace", "Hopper"),
        2001: ("Edsger Dijkstra", "Edsger", "Dijkstra"),
    }
    assert {
        r[0]: r[1:] for r in db.execute("SELECT id, full_name, first_name, last_name FROM people")
    } == expected

    doc = _run(cli, "contract", "--yes", "--json", *args).json
    assert doc["expansions"][0]["out_of_sync_rows"] == 0
    assert _columns(db, "people") == ["id", "first_name", "last_name"]
    assert {r[0]: r[1:] for r in db.execute("SELECT id, first_name, last_name FROM people")} == {
        i: v[1:] for i, v in expected.items()
    }
    assert _leftovers(db) == []


def test_add_not_null_column(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("qty", sa.Integer, nullable=False), sa.Column("price", sa.Numeric(8, 2)))
        op.execute("INSERT INTO orders SELECT g, g % 7 + 1, g * 1.5 FROM generate_series(1, 2000) g")
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.add_not_null_column("orders", "total", "numeric(12,2)", backfill="qty * coalesce(price, 0)")
        """,
        ABORT,
    )
    _run(cli, "upgrade", *args)
    nullable = "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'total'"
    assert db.execute(nullable).fetchone() == ("YES",)
    assert db.execute("SELECT count(*) FROM orders WHERE total IS DISTINCT FROM qty * price").fetchone() == (
        0,
    )
    with psycopg.connect(database_url, autocommit=True) as old_code:  # does not know the column
        row = old_code.execute(
            "INSERT INTO orders (id, qty, price) VALUES (3000, 3, 2.5) RETURNING total"
        ).fetchone()
        assert row == (Decimal("7.50"),)
        old_code.execute("INSERT INTO orders (id, qty) VALUES (3001, 4)")
        old_code.execute("UPDATE orders SET qty = 10 WHERE id = 1")  # total is not recomputed: it is set
    assert db.execute("SELECT total FROM orders WHERE id = 3001").fetchone() == (Decimal("0.00"),)
    assert db.execute("SELECT total FROM orders WHERE id = 1").fetchone() == (Decimal("3.00"),)

    _run(cli, "contract", "--yes", *args)
    assert db.execute(nullable).fetchone() == ("NO",)
    assert _leftovers(db) == []  # no trigger, no _dbrb_nn_ CHECK left
    assert db.execute("SELECT count(*) FROM orders WHERE total IS NULL").fetchone() == (0,)
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.execute("INSERT INTO orders (id, qty, price) VALUES (4000, 1, 1)")


# -- add_foreign_key and create_index -------------------------------------------------------------


def _parents_children(project: Project, orphan: bool = False) -> None:
    project.add_revision(
        "r1",
        None,
        f"""
        op.create_table("parents", sa.Column("id", sa.Integer, primary_key=True))
        op.create_table("children", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("parent_id", sa.Integer))
        op.execute("INSERT INTO parents SELECT generate_series(1, 100)")
        op.execute("INSERT INTO children SELECT g, g % 100 + 1 FROM generate_series(1, 1000) g")
        {'op.execute("INSERT INTO children VALUES (5000, 999)")' if orphan else ""}
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.add_foreign_key("fk_parent", "children", "parents", ["parent_id"], ["id"], ondelete="CASCADE")
        """,
        ABORT,
    )


def _fk(db: psycopg.Connection) -> list[tuple]:
    return db.execute(
        "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'fk_parent'"
    ).fetchall()


def test_add_foreign_key_validated_then_aborted(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _parents_children(project)
    doc = _run(cli, "upgrade", "--json", *args).json
    assert doc["expansions"] == [{"expansion_id": 1, "validated": "fk_parent"}]
    assert _fk(db) == [(True, "FOREIGN KEY (parent_id) REFERENCES parents(id) ON DELETE CASCADE")]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO children VALUES (9000, 12345)")
    _run(cli, "abort", "--yes", *args)
    assert _fk(db) == []
    assert [e[3] for e in _expansions(db)] == ["aborted"]
    db.execute("INSERT INTO children VALUES (9000, 12345)")


def _orphan_upgraded(project, cli, database_url, store) -> CliResult:
    _parents_children(project, orphan=True)
    _run(cli, "upgrade", "r1", *_args(database_url, store))
    result = cli("upgrade", "--json", *_args(database_url, store))
    assert "Traceback" not in result.out + result.err
    return result


def test_add_foreign_key_with_an_orphan_row(project, cli, db, database_url, tmp_path):
    """As things are: the revision commits (NOT VALID accepts the old rows) and the validation after
    it fails; the upgrade exits non-zero naming the constraint, r2 stays applied with the constraint
    NOT VALID (new writes are checked), the expansion stays open, contract fails and changes nothing
    until the orphan is fixed, then validates it."""
    store = tmp_path / "store"
    args = _args(database_url, store)
    result = _orphan_upgraded(project, cli, database_url, store)
    assert result.code != 0
    assert "fk_parent" in result.json["message"]
    assert _version(db) == ["r2"]
    assert _fk(db) == [(False, "FOREIGN KEY (parent_id) REFERENCES parents(id) ON DELETE CASCADE NOT VALID")]
    assert [e[3] for e in _expansions(db)] == ["open"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO children VALUES (9000, 12345)")
    failed = cli("contract", "--yes", "--json", *args)
    assert failed.code != 0 and "fk_parent" in failed.json["message"]
    assert _fk(db)[0][0] is False
    assert [e[3] for e in _expansions(db)] == ["open"]

    db.execute("DELETE FROM children WHERE id = 5000")
    _run(cli, "contract", "--yes", *args)
    assert _fk(db)[0][0] is True
    assert [e[3] for e in _expansions(db)] == ["contracted"]


def test_upgrade_names_a_failed_foreign_key_validation_clearly(project, cli, db, database_url, tmp_path):
    result = _orphan_upgraded(project, cli, database_url, tmp_path / "store")
    assert result.json["error"] != "unexpected"
    assert result.code in (3, 4)
    assert "stay applied" in result.json["message"]


def test_contract_refuses_a_foreign_key_that_rows_violate(project, cli, db, database_url, tmp_path):
    args = _args(database_url, tmp_path / "store")
    _orphan_upgraded(project, cli, database_url, tmp_path / "store")
    assert _run(cli, "contract", "--dry-run", *args, code=3)
    result = _run(cli, "contract", "--yes", "--json", *args, code=3)
    assert "fk_parent" in result.json["message"]


def test_create_index_rebuilds_an_invalid_leftover_then_abort_drops_it(
    project, cli, db, database_url, tmp_path
):
    """A unique index built CONCURRENTLY on duplicate data fails and leaves an INVALID index; the next
    attempt (duplicates fixed) drops it and builds a valid one."""
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer))
        op.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 2000) g")
        op.execute("UPDATE t SET v = 1 WHERE id = 2")
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        'from dbrollback import expand\nexpand.create_index("ix_t_v", "t", ["v"], unique=True)',
        ABORT,
    )
    state = (
        "SELECT i.indisvalid, i.indexrelid::oid FROM pg_index i WHERE i.indexrelid = to_regclass('ix_t_v')"
    )
    _run(cli, "upgrade", "r1", *args)
    result = _run(cli, "upgrade", "--json", *args, code=4)
    assert "ix_t_v" in result.json["message"] or "duplicate" in result.json["message"]
    assert _version(db) == ["r1"]
    invalid = db.execute(state).fetchone()
    assert invalid is not None and invalid[0] is False

    db.execute("UPDATE t SET v = 2 WHERE id = 2")
    _run(cli, "upgrade", *args)
    assert _version(db) == ["r2"]
    valid = db.execute(state).fetchone()
    assert valid is not None and valid[0] is True and valid[1] != invalid[1]
    assert db.execute("SELECT pg_get_indexdef('ix_t_v'::regclass)").fetchone() == (
        "CREATE UNIQUE INDEX ix_t_v ON public.t USING btree (v)",
    )
    assert [e[1:] for e in _expansions(db)] == [("r2", "index", "open")]
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO t VALUES (5000, 1)")

    _run(cli, "abort", "--yes", *args)
    assert db.execute("SELECT to_regclass('ix_t_v')").fetchone() == (None,)
    assert [e[3] for e in _expansions(db)] == ["aborted"]


def _index_project(project: Project, cli, database_url: str, tmp_path: Path) -> list[str]:
    """t(id, v) with 500 rows at r1; r2 (pending) builds ix_t_v with expand.create_index."""
    args = _args(database_url, tmp_path / "store")
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer))
        op.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 500) g")
        """,
    )
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.create_index("ix_t_v", "t", ["v"])', ABORT
    )
    _run(cli, "upgrade", "r1", *args)
    return args


def test_create_index_replaces_an_index_marked_invalid(project, cli, db, database_url, tmp_path):
    args = _index_project(project, cli, database_url, tmp_path)
    db.execute("CREATE INDEX ix_t_v ON t (id)")  # the wrong definition, and INVALID
    db.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_t_v'::regclass")
    _run(cli, "upgrade", *args)
    assert db.execute(
        "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indexrelid = 'ix_t_v'::regclass"
    ).fetchone() == (True, "CREATE INDEX ix_t_v ON public.t USING btree (v)")


def test_create_index_is_built_concurrently_without_blocking_writes(project, cli, db, database_url, tmp_path):
    """While a transaction that wrote the table stays open, the build waits for it (as CREATE INDEX
    CONCURRENTLY does) and other sessions go on writing (a plain CREATE INDEX would queue them)."""
    args = _index_project(project, cli, database_url, tmp_path)
    building = (
        "SELECT command, phase FROM pg_stat_progress_create_index "
        "WHERE datname = current_database() AND relid = 't'::regclass"
    )
    with psycopg.connect(database_url) as writer:
        writer.execute("UPDATE t SET v = v WHERE id = 1")  # an open transaction that wrote t
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbrollback", "upgrade", "--lock-timeout", "5min", *args],
            cwd=project.root,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120  # a guard against hanging, not a performance limit
            waiting = ("CREATE INDEX CONCURRENTLY", "waiting for writers before build")
            while (progress := db.execute(building).fetchone()) != waiting:
                assert progress is None or progress[0] == waiting[0], progress
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"the index build never waited for the writer: {progress}"
                time.sleep(0.02)
            with psycopg.connect(database_url, autocommit=True) as other:
                other.execute("SET lock_timeout = '10s'")
                other.execute("INSERT INTO t VALUES (1000, 1000)")
                other.execute("UPDATE t SET v = -2 WHERE id = 2")
            writer.commit()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, (out, err)
    assert db.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_t_v'::regclass").fetchone() == (
        True,
    )
    assert db.execute("SELECT count(*) FROM t WHERE v = -2 OR id = 1000").fetchone() == (2,)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "op.execute('CREATE UNIQUE INDEX nk_u ON nk (k)')",  # unique, but k may be NULL
    ],
    ids=["no key", "unique nullable"],
)
def test_table_without_a_usable_key_is_refused(project, cli, db, database_url, tmp_path, key):
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        f"""
        op.create_table("nk", sa.Column("k", sa.Integer), sa.Column("v", sa.Text))
        op.execute("INSERT INTO nk SELECT g, 'v' || g FROM generate_series(1, 10) g")
        {key}
        """,
    )
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("nk", "v", "w")', ABORT
    )
    _run(cli, "upgrade", "r1", *args)
    before = _describe(db, "nk")
    result = _run(cli, "upgrade", *args, code=3)
    assert "primary key" in result.err
    assert "unique index on NOT NULL columns" in result.err
    assert _describe(db, "nk") == before
    assert _version(db) == ["r1"]
    assert _expansions(db) == []
    assert _leftovers(db) == []


def test_a_unique_index_on_not_null_columns_is_enough(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("nk", sa.Column("k", sa.Integer, nullable=False), sa.Column("v", sa.Text))
        op.execute("CREATE UNIQUE INDEX nk_u ON nk (k)")
        op.execute("INSERT INTO nk SELECT g, 'v' || g FROM generate_series(1, 10) g")
        """,
    )
    project.add_revision(
        "r2", "r1", 'from dbrollback import expand\nexpand.rename_column("nk", "v", "w")', ABORT
    )
    _run(cli, "upgrade", *_args(database_url, store))
    assert db.execute("SELECT count(*) FROM nk WHERE w = v").fetchone() == (10,)


def test_contract_refused_until_the_backfill_is_done(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project)
    _run(cli, "upgrade", "--no-backfill", *args)
    assert db.execute("SELECT count(*) FROM customers WHERE full_name IS NULL").fetchone() == (ROWS,)
    before = _describe(db, "customers")
    result = _run(cli, "contract", "--yes", *args, code=3)
    assert "dbrollback backfill --resume" in result.err
    assert "Nothing was changed" in result.err
    assert _describe(db, "customers") == before
    assert [e[3] for e in _expansions(db)] == ["open"]
    # the dry run says the same
    _run(cli, "contract", "--dry-run", *args, code=3)

    _run(cli, "backfill", "--resume", *args)
    doc = _run(cli, "contract", "--yes", "--json", *args).json
    assert doc["expansions"][0]["checked_rows"] == ROWS
    assert dict(db.execute("SELECT id, full_name FROM customers").fetchall()) == {
        i: f"c{i}" for i in range(1, ROWS + 1)
    }


def test_contract_refused_while_an_index_uses_the_old_column(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project, extra_r1='op.create_index("ix_name", "customers", ["name"])')
    _run(cli, "upgrade", *args)
    before = _describe(db, "customers")
    result = _run(cli, "contract", "--yes", *args, code=3)
    assert "index ix_name" in result.err
    assert "--drop-dependents" in result.err
    assert _describe(db, "customers") == before

    _run(cli, "contract", "--yes", "--drop-dependents", *args)
    assert _columns(db, "customers") == ["id", "note", "created", "full_name"]
    assert db.execute("SELECT to_regclass('ix_name')").fetchone() == (None,)


def test_contract_and_abort_without_anything_open(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    # no catalog at all yet
    assert _run(cli, "contract", "--yes", *args, code=2).err
    _customers(project)
    _run(cli, "upgrade", "r1", *args)
    result = _run(cli, "contract", "--yes", "--json", *args, code=2)
    assert "No open expansion" in result.json["message"]
    _run(cli, "abort", "--yes", *args, code=2)


def test_contract_and_abort_need_yes_without_a_terminal(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project)
    _run(cli, "upgrade", *args)
    before = _describe(db, "customers")
    assert "--yes" in _run(cli, "contract", *args, code=3).err
    assert "--yes" in _run(cli, "abort", *args, code=3).err
    assert _describe(db, "customers") == before
    assert [e[3] for e in _expansions(db)] == ["open"]


def test_abort_of_a_contracted_revision_is_refused(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _customers(project)
    _run(cli, "upgrade", *args)
    _run(cli, "contract", "--yes", "r2", *args)
    before = _describe(db, "customers")
    result = _run(cli, "abort", "--yes", "--json", "r2", *args, code=3)
    assert "contracted" in result.json["message"]
    assert _describe(db, "customers") == before
    assert [e[3] for e in _expansions(db)] == ["contracted"]


@pytest.mark.parametrize(
    ("up", "says"),
    [
        ("round(nosuch * 100)", "nosuch"),
        ("(SELECT max(price) FROM items) * 100", "Subqueries"),
        ("price * 100; DROP TABLE items", "price * 100; DROP TABLE items"),
    ],
    ids=["unknown column", "subquery", "two statements"],
)
def test_bad_expressions_fail_the_revision_and_change_nothing(
    project, cli, db, database_url, tmp_path, up, says
):
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("price", sa.Numeric(10, 2)))
        op.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 10) g")
        """,
    )
    project.add_revision(
        "r2",
        "r1",
        f"""
        from dbrollback import expand
        expand.change_column_type("items", "price", "integer", up={up!r}, down="price_new / 100.0")
        """,
        ABORT,
    )
    _run(cli, "upgrade", "r1", *args)
    before = _describe(db, "items")

    def unchanged() -> None:
        assert _describe(db, "items") == before
        assert _version(db) == ["r1"]
        assert _expansions(db) == []
        assert db.execute("SELECT count(*) FROM items").fetchone() == (10,)

    # By default the upgrade first runs the revisions on a schema-only copy to see what to snapshot;
    # the helper's ConfigError surfaces there already, as the same configuration error.
    planned = _run(cli, "upgrade", "--json", *args, code=2)
    assert planned.json["error"] == "config"
    assert says in planned.json["message"] and "Revision r2" in planned.json["message"]
    unchanged()
    # Without the planning step the revision itself raises it: a configuration error.
    result = _run(cli, "upgrade", "--json", "--no-snapshot", *args, code=2)
    assert result.json["error"] == "config"
    assert says in result.json["message"]
    unchanged()
    plain = _run(cli, "upgrade", "--no-snapshot", *args, code=2)
    assert says in plain.err
    unchanged()


# -- identifiers that need quoting ----------------------------------------------------------------


def _odd_project(project: Project) -> None:
    names = f"S, T, OLD, NEW, OTHER, IX = {ODD_SCHEMA!r}, {ODD_TABLE!r}, {ODD_OLD!r}, {ODD_NEW!r}, {ODD_OTHER!r}, {ODD_INDEX!r}"
    project.add_revision(
        "r1",
        None,
        """
        op.execute(sa.schema.CreateSchema(S))
        op.create_table(T, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column(OLD, sa.Text, nullable=False, server_default="dflt"),
                        sa.Column(OTHER, sa.Integer), schema=S)
        tbl = sa.table(T, sa.column("id"), sa.column(OLD), sa.column(OTHER), schema=S)
        op.bulk_insert(tbl, [{"id": i, OLD: f"v{i}", OTHER: i} for i in range(1, 201)])
        """,
        header=names,
    )
    project.add_revision(
        "r2",
        "r1",
        """
        from dbrollback import expand
        expand.rename_column(T, OLD, NEW, schema=S)
        expand.create_index(IX, T, [OTHER], schema=S)
        """,
        ABORT,
        header=names,
    )


@pytest.mark.parametrize("close", ["contract", "abort"])
def test_identifiers_with_quotes_spaces_semicolons_and_unicode(
    project, cli, db, database_url, tmp_path, close
):
    store = tmp_path / "store"
    args = _args(database_url, store)
    _odd_project(project)
    table = _regclass(ODD_SCHEMA, ODD_TABLE)
    _run(cli, "upgrade", "r1", *args)
    before = _describe(db, table)
    _run(cli, "upgrade", *args)
    assert _pairs(db, table, ODD_OLD, ODD_NEW) == {i: (f"v{i}", f"v{i}") for i in range(1, 201)}
    assert db.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (_regclass(ODD_SCHEMA, ODD_INDEX),)
    ).fetchone() == (True,)
    expected = {i: f"v{i}" for i in range(1, 201)}
    with psycopg.connect(database_url, autocommit=True) as app:
        t, old, new = sql.SQL(table), sql.Identifier(ODD_OLD), sql.Identifier(ODD_NEW)
        app.execute(sql.SQL("UPDATE {} SET {} = 'öld; \"x' WHERE id = 1").format(t, old))
        app.execute(sql.SQL("UPDATE {} SET {} = 'nëw' WHERE id = 2").format(t, new))
        app.execute(sql.SQL("INSERT INTO {} (id, {}) VALUES (500, 'ins new')").format(t, new))
        app.execute(sql.SQL("INSERT INTO {} (id) VALUES (501)").format(t))
        expected |= {1: 'öld; "x', 2: "nëw", 500: "ins new", 501: "dflt"}
    assert _pairs(db, table, ODD_OLD, ODD_NEW) == {i: (v, v) for i, v in expected.items()}

    status = _run(cli, "status", "--json", *args).json
    assert {e["table"] for e in status["open_expansions"]} == {f"{ODD_SCHEMA}.{ODD_TABLE}"}

    _run(cli, close, "--yes", *args)
    assert _leftovers(db) == []
    if close == "abort":
        assert _describe(db, table) == before
        column = ODD_OLD
    else:
        assert _columns(db, table) == ["id", ODD_OTHER, ODD_NEW]
        assert _describe(db, table)["columns"][-1][2:4] == (True, "'dflt'::text")
        column = ODD_NEW
    query = sql.SQL("SELECT id, {} FROM {}").format(sql.Identifier(column), sql.SQL(table))
    assert dict(db.execute(query).fetchall()) == expected
    statuses = {e[3] for e in _expansions(db)}
    assert statuses == {"aborted" if close == "abort" else "contracted"}
