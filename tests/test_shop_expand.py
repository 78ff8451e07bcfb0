"""The shop example's expand/contract revision (0010_rename_first_name), through the real CLI.

customers.first_name is renamed to given_name with ``expand.rename_column``: ``dbrollback upgrade``
opens the expansion and backfills it, old code (writing first_name) and new code (writing
given_name) then run side by side, and ``contract`` or ``rollback`` ends it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Project

SHOP = Path(__file__).parents[1] / "migrations_examples" / "shop"
REVISION = "0010_rename_first_name"
BEFORE = "0009_drop_newsletter"
CUSTOMERS = 200


def _load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shop_seed_for_expand", SHOP / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shop_seed = _load_seed()


@pytest.fixture
def shop(project: Project, cli, database_url: str) -> list[str]:
    """The seeded shop at 0009_drop_newsletter; returns the options every command needs."""
    root = project.root / "shop"
    shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns("__pycache__"))
    options = ["-c", str(root / "alembic.ini"), "--database-url", database_url]
    assert cli("upgrade", shop_seed.SEED_REVISION, *options).code == 0
    with psycopg.connect(database_url) as conn:
        shop_seed.seed(conn, CUSTOMERS)
    result = cli("upgrade", BEFORE, "--no-snapshot", *options)
    assert result.code == 0, result.err
    return options


def _columns(db: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum"
        )
    ]


def _names(db: psycopg.Connection, column: str) -> dict[int, str | None]:
    query = sql.SQL("SELECT id, {} FROM customers ORDER BY id").format(sql.Identifier(column))
    return dict(db.execute(query).fetchall())


def _dbrollback_triggers(db: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'customers'::regclass AND tgname LIKE '\\_dbrb\\_%'"
        )
    ]


def _expand(cli, options: list[str], db: psycopg.Connection) -> dict[int, str | None]:
    """Upgrade to 0010 and check the expansion is open and backfilled; first_name by id."""
    first_names = _names(db, "first_name")
    result = cli("upgrade", REVISION, "--json", *options)
    assert result.code == 0, result.err
    assert [e["expansion_id"] for e in result.json["expansions"]] == [1]
    assert result.json["expansions"][0]["backfill"]["status"] == "done"
    assert _columns(db)[-1] == "given_name"
    assert _names(db, "given_name") == first_names  # every row copied, NULLs included
    (opened,) = cli("status", "--json", *options).json["open_expansions"]
    assert (opened["revision"], opened["kind"], opened["table"], opened["change"]) == (
        REVISION, "rename_column", "public.customers", "first_name -> given_name"
    )  # fmt: skip
    assert opened["backfill"]["status"] == "done"
    assert len(_dbrollback_triggers(db)) == 1
    return first_names


def _old_and_new_code_write(database_url: str) -> None:
    """The previous release writes first_name, the new one given_name, each on its own connection."""
    with (
        psycopg.connect(database_url, autocommit=True) as old_app,
        psycopg.connect(database_url, autocommit=True) as new_app,
    ):
        old_app.execute("UPDATE customers SET first_name = 'Old-' || id WHERE id <= 5")
        new_app.execute("UPDATE customers SET given_name = 'New-' || id WHERE id BETWEEN 6 AND 10")
        old_app.execute(
            "INSERT INTO customers (first_name, last_name, email) "
            "VALUES ('OldCode', 'Writer', 'old.writer@example.com')"
        )
        new_app.execute(
            "INSERT INTO customers (given_name, last_name, email) "
            "VALUES ('NewCode', 'Writer', 'new.writer@example.com')"
        )
        # Both columns in one write must agree: a mismatch is refused, not silently resolved.
        with pytest.raises(psycopg.errors.CheckViolation, match="do not correspond"):
            new_app.execute("UPDATE customers SET first_name = 'A', given_name = 'B' WHERE id = 11")
        new_app.execute("UPDATE customers SET first_name = 'Both', given_name = 'Both' WHERE id = 12")


def test_expand_old_and_new_code_then_contract(shop, cli, database_url, db):
    first_names = _expand(cli, shop, db)

    _old_and_new_code_write(database_url)

    old, new = _names(db, "first_name"), _names(db, "given_name")
    assert old == new
    expected = dict(first_names)
    expected.update({i: f"Old-{i}" for i in range(1, 6)})
    expected.update({i: f"New-{i}" for i in range(6, 11)})
    expected[12] = "Both"
    inserted = db.execute(
        "SELECT email, given_name FROM customers WHERE email LIKE '%.writer@example.com' ORDER BY email"
    ).fetchall()
    assert inserted == [("new.writer@example.com", "NewCode"), ("old.writer@example.com", "OldCode")]
    assert {i: v for i, v in new.items() if i in expected} == expected

    result = cli("contract", REVISION, "--yes", "--json", *shop)

    assert result.code == 0, result.err
    (contracted,) = result.json["expansions"]
    assert contracted["action"] == "contracted"
    assert (contracted["checked_rows"], contracted["out_of_sync_rows"]) == (len(new), 0)
    assert "column first_name" in contracted["dropped"]
    assert contracted["snapshot_id"]
    assert "first_name" not in _columns(db) and "given_name" in _columns(db)
    assert _names(db, "given_name") == new  # every value, the writes of both releases included
    assert _dbrollback_triggers(db) == []
    assert cli("status", "--json", *shop).json["open_expansions"] == []

    # The old column is gone: a rollback of the run that opened the expansion cannot bring it back.
    refused = cli("rollback", "--yes", "--json", *shop)
    assert refused.code == 3
    assert (refused.json["error"], refused.json["expansion_id"]) == ("refused", 1)
    assert "contracted" in refused.json["message"]
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (REVISION,)
    assert _names(db, "given_name") == new


def test_rollback_aborts_and_keeps_writes_made_through_the_new_column(shop, cli, database_url, db):
    _expand(cli, shop, db)
    _old_and_new_code_write(database_url)
    given = _names(db, "given_name")

    result = cli("rollback", "--yes", "--json", *shop)

    assert result.code == 0, result.err
    assert result.json["reverted_revisions"] == [REVISION]
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (BEFORE,)
    assert "given_name" not in _columns(db)
    assert _names(db, "first_name") == given  # new code's writes reached the old column
    assert _dbrollback_triggers(db) == []
    assert cli("status", "--json", *shop).json["open_expansions"] == []


def test_abort_command_keeps_every_write(shop, cli, database_url, db):
    _expand(cli, shop, db)
    _old_and_new_code_write(database_url)
    given = _names(db, "given_name")

    result = cli("abort", REVISION, "--yes", "--json", *shop)

    assert result.code == 0, result.err
    assert [e["action"] for e in result.json["expansions"]] == ["aborted"]
    assert "given_name" not in _columns(db)
    assert _names(db, "first_name") == given
    assert _dbrollback_triggers(db) == []
    # The revision stays applied; its downgrade (expand.abort()) has nothing left to drop.
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (REVISION,)
    again = cli("abort", REVISION, "--yes", "--json", *shop)
    assert again.code == 3


def test_offline_sql_is_refused_with_a_clear_error() -> None:
    import io

    from alembic import command
    from alembic.config import Config

    from dbrollback.errors import ConfigError

    cfg = Config(str(SHOP / "alembic.ini"), output_buffer=io.StringIO())
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://nobody@/nothing")
    cfg.attributes["configure_logger"] = False
    with pytest.raises(ConfigError, match=r"cannot be rendered as offline SQL \(alembic --sql\)"):
        command.upgrade(cfg, f"{BEFORE}:{REVISION}", sql=True)
