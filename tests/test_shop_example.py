"""Tests for the ``shop`` example Alembic project and its seed script.

They run real migrations against a real PostgreSQL database provided by the
``database_url`` fixture (a libpq ``postgresql://`` URL of a fresh, empty
database).
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from types import ModuleType
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

SHOP_DIR = pathlib.Path(__file__).parents[1] / "migrations_examples" / "shop"
ALEMBIC_INI = SHOP_DIR / "alembic.ini"

REVISIONS = [
    "0001_create_tables",
    "0002_add_customer_phone",
    "0003_index_orders",
    "0004_normalise_emails",
    "0005_split_full_name",
    "0006_weight_to_integer",
    "0007_drop_legacy_code",
    "0008_add_order_notes",
    "0009_drop_newsletter",
    "0010_rename_first_name",
]
SEEDED_TABLES = ["customers", "products", "orders", "order_items", "newsletter_signups"]
CUSTOMERS = 600


def _load_seed_module() -> ModuleType:
    # Load seed.py from the source tree by path (it ships as
    # dbrollback.examples.shop.seed, but these tests target the repo copy).
    spec = importlib.util.spec_from_file_location("shop_seed_under_test", SHOP_DIR / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shop_seed = _load_seed_module()


def _sqlalchemy_url(libpq_url: str) -> str:
    scheme, rest = libpq_url.split("://", 1)
    assert scheme in ("postgresql", "postgres"), libpq_url
    return "postgresql+psycopg://" + rest


def _set_url(cfg: Config, database_url: str) -> None:
    # ConfigParser interpolation: a percent-encoded URL (e.g. a socket path in
    # ?host=%2Ftmp%2F...) must have its '%' doubled.
    cfg.set_main_option("sqlalchemy.url", _sqlalchemy_url(database_url).replace("%", "%%"))


def _config(database_url: str) -> Config:
    cfg = Config(str(ALEMBIC_INI))
    _set_url(cfg, database_url)
    # Keep pytest's logging handlers in place.
    cfg.attributes["configure_logger"] = False
    return cfg


def _one(conn: psycopg.Connection, query: str) -> tuple[Any, ...]:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row


def _scalar(conn: psycopg.Connection, query: str) -> Any:
    return _one(conn, query)[0]


def _version(conn: psycopg.Connection) -> list[str]:
    if _scalar(conn, "SELECT to_regclass('alembic_version')") is None:
        return []
    return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def _checksums(conn: psycopg.Connection) -> dict[str, tuple[Any, ...]]:
    """Row count and md5 over every column of every row, per seeded table."""
    out = {}
    for table in SEEDED_TABLES:
        out[table] = _one(
            conn,
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {table} AS t",
        )
    return out


def _foreign_keys(conn: psycopg.Connection) -> list[tuple[str, str, str, bool]]:
    return conn.execute(
        """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
        FROM pg_constraint
        WHERE contype = 'f' AND connamespace = 'public'::regnamespace
        ORDER BY 1, 2
        """
    ).fetchall()


@pytest.fixture
def shop(database_url: str) -> Iterator[tuple[Config, psycopg.Connection]]:
    """Alembic config and an autocommit psycopg connection for the fresh database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield _config(database_url), conn


@pytest.fixture
def seeded(
    database_url: str, shop: tuple[Config, psycopg.Connection]
) -> tuple[Config, psycopg.Connection, dict[str, int]]:
    """The shop at SEED_REVISION, seeded with CUSTOMERS customers."""
    cfg, conn = shop
    command.upgrade(cfg, shop_seed.SEED_REVISION)
    with psycopg.connect(database_url) as seed_conn:
        counts = shop_seed.seed(seed_conn, CUSTOMERS)
    return cfg, conn, counts


def test_revision_chain_is_linear_and_complete() -> None:
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    walked = [rev.revision for rev in script.walk_revisions("base", "heads")]
    assert list(reversed(walked)) == REVISIONS
    assert script.get_heads() == ["0010_rename_first_name"]
    assert shop_seed.SEED_REVISION == "0003_index_orders"
    for path in (SHOP_DIR / "versions").glob("*.py"):
        assert path.stem in REVISIONS
    assert not (SHOP_DIR / "versions" / "__init__.py").exists()


def test_seed_is_deterministic(database_url: str, shop: tuple[Config, psycopg.Connection]) -> None:
    cfg, conn = shop

    def fresh_seed(seed: int) -> dict[str, tuple[Any, ...]]:
        command.downgrade(cfg, "base")
        command.upgrade(cfg, shop_seed.SEED_REVISION)
        with psycopg.connect(database_url) as seed_conn:
            shop_seed.seed(seed_conn, 300, seed=seed)
        return _checksums(conn)

    first = fresh_seed(42)
    second = fresh_seed(42)
    other = fresh_seed(43)
    assert first == second
    assert all(count > 0 for count, _ in first.values())
    assert all(first[t][1] != other[t][1] for t in SEEDED_TABLES)


def test_seed_contents_at_seed_revision(
    seeded: tuple[Config, psycopg.Connection, dict[str, int]],
) -> None:
    _cfg, conn, counts = seeded
    assert _version(conn) == [shop_seed.SEED_REVISION]
    for table in SEEDED_TABLES:
        assert _scalar(conn, f"SELECT count(*) FROM {table}") == counts[table]
    assert counts["customers"] == CUSTOMERS
    assert counts["products"] == max(10, CUSTOMERS // 10)
    assert counts["newsletter_signups"] == CUSTOMERS // 3
    assert 1.5 * CUSTOMERS < counts["orders"] < 2.5 * CUSTOMERS
    assert counts["orders"] <= counts["order_items"] <= 4 * counts["orders"]

    mixed = _scalar(conn, "SELECT count(*) FROM customers WHERE email <> lower(email)")
    assert 0.2 * CUSTOMERS < mixed < 0.4 * CUSTOMERS
    # lower-casing must not create duplicates, or 0004 would fail
    assert _scalar(conn, "SELECT count(DISTINCT lower(email)) FROM customers") == CUSTOMERS
    assert _scalar(conn, "SELECT count(*) FROM customers WHERE strpos(full_name, ' ') = 0") > 0
    assert _scalar(conn, "SELECT count(*) FROM customers WHERE full_name ~ '^[^ ]+ [^ ]+ [^ ]+$'") > 0
    assert _scalar(conn, "SELECT count(*) FROM products WHERE weight_kg <> round(weight_kg)") > 0
    null_codes = _scalar(conn, "SELECT count(*) FROM products WHERE legacy_code IS NULL")
    assert 0 < null_codes < counts["products"]
    assert (
        _scalar(
            conn,
            """
            SELECT count(*) FROM orders o
            WHERE o.total <> (SELECT sum(i.quantity * i.unit_price)
                              FROM order_items i WHERE i.order_id = o.id)
            """,
        )
        == 0
    )
    # identity sequences were moved past the seeded ids
    new_id = _scalar(
        conn,
        "INSERT INTO customers (full_name, email) VALUES ('New Person', 'new@example.com') RETURNING id",
    )
    assert new_id == CUSTOMERS + 1


def test_seed_leaves_foreign_keys_as_they_were(
    database_url: str, shop: tuple[Config, psycopg.Connection]
) -> None:
    cfg, conn = shop
    command.upgrade(cfg, shop_seed.SEED_REVISION)
    before = _foreign_keys(conn)
    assert len(before) == 3
    with psycopg.connect(database_url) as seed_conn:
        shop_seed.seed(seed_conn, 50)
    assert _foreign_keys(conn) == before


def test_seed_refuses_other_revisions(database_url: str, shop: tuple[Config, psycopg.Connection]) -> None:
    cfg, conn = shop
    command.upgrade(cfg, "head")
    with psycopg.connect(database_url) as seed_conn, pytest.raises(RuntimeError, match="0003"):
        shop_seed.seed(seed_conn, 10)
    assert _scalar(conn, "SELECT count(*) FROM customers") == 0


def test_upgrade_to_head_transforms_seeded_data(
    seeded: tuple[Config, psycopg.Connection, dict[str, int]],
) -> None:
    cfg, conn, counts = seeded
    customers_before = dict(
        (r[0], (r[1], r[2])) for r in conn.execute("SELECT id, full_name, email FROM customers")
    )
    weights_before: dict[int, Decimal] = dict(conn.execute("SELECT id, weight_kg FROM products").fetchall())

    command.upgrade(cfg, "head")
    assert _version(conn) == ["0010_rename_first_name"]

    rows = conn.execute("SELECT id, first_name, last_name, email FROM customers").fetchall()
    assert len(rows) == counts["customers"]
    for cid, first, last, email in rows:
        full_name, old_email = customers_before[cid]
        assert email == old_email.lower()
        if " " in full_name:
            assert [first, last] == full_name.split(" ", 1)
        else:
            assert (first, last) == (full_name, None)

    weights: dict[int, int] = dict(conn.execute("SELECT id, weight_kg FROM products").fetchall())
    for pid, old in weights_before.items():
        assert isinstance(weights[pid], int)
        assert weights[pid] == int(old.to_integral_value(rounding=ROUND_HALF_UP))

    columns = {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    }
    assert ("products", "legacy_code") not in columns
    assert ("customers", "full_name") not in columns
    assert ("orders", "notes") in columns
    assert _scalar(conn, "SELECT to_regclass('newsletter_signups')") is None
    assert _scalar(conn, "SELECT count(*) FROM order_items") == counts["order_items"]


def test_downgrade_to_seed_revision_shows_what_is_lost(
    seeded: tuple[Config, psycopg.Connection, dict[str, int]],
) -> None:
    cfg, conn, counts = seeded
    before = {r[0]: r[1:] for r in conn.execute("SELECT id, full_name, email, phone FROM customers")}
    command.upgrade(cfg, "head")
    command.downgrade(cfg, shop_seed.SEED_REVISION)
    assert _version(conn) == [shop_seed.SEED_REVISION]

    after = {r[0]: r[1:] for r in conn.execute("SELECT id, full_name, email, phone FROM customers")}
    assert after.keys() == before.keys()
    for cid, (full_name, email, phone) in before.items():
        # 0005 round-trips exactly; 0004 does not (the case is gone)
        assert after[cid] == (full_name, email.lower(), phone)
    assert sum(1 for cid in before if before[cid][1] != after[cid][1]) > 0

    # 0006: fractions gone; 0007: legacy codes gone; 0009: signups gone
    assert _scalar(conn, "SELECT count(*) FROM products WHERE weight_kg <> round(weight_kg)") == 0
    assert _scalar(conn, "SELECT count(*) FROM products WHERE legacy_code IS NOT NULL") == 0
    assert _scalar(conn, "SELECT count(*) FROM newsletter_signups") == 0
    assert _scalar(conn, "SELECT count(*) FROM orders") == counts["orders"]
    assert _scalar(conn, "SELECT count(*) FROM order_items") == counts["order_items"]
    assert isinstance(_scalar(conn, "SELECT weight_kg FROM products LIMIT 1"), Decimal)


def test_full_downgrade_to_base_and_back(
    seeded: tuple[Config, psycopg.Connection, dict[str, int]],
) -> None:
    cfg, conn, _counts = seeded
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert _version(conn) == []
    tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["alembic_version"]

    command.upgrade(cfg, "head")
    assert _version(conn) == ["0010_rename_first_name"]
    # step by step, every downgrade() and upgrade() works on its own
    for expected in reversed(REVISIONS[:-1]):
        command.downgrade(cfg, "-1")
        assert _version(conn) == [expected]
    command.downgrade(cfg, "-1")
    assert _version(conn) == []
    for expected in REVISIONS:
        command.upgrade(cfg, "+1")
        assert _version(conn) == [expected]


def test_env_uses_connection_passed_in_attributes(
    database_url: str, shop: tuple[Config, psycopg.Connection]
) -> None:
    _cfg, conn = shop
    # A deliberately wrong URL proves the handed-in connection is used.
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://nobody@/nothing?host=/nonexistent")
    engine = sa.create_engine(_sqlalchemy_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as sa_conn:
            cfg.attributes["connection"] = sa_conn
            with sa_conn.begin() as trans:
                command.upgrade(cfg, "head")
                trans.rollback()
        # the caller's rollback undid everything (PostgreSQL DDL is transactional)
        assert _version(conn) == []

        with engine.connect() as sa_conn:
            cfg.attributes["connection"] = sa_conn
            with sa_conn.begin():
                command.upgrade(cfg, shop_seed.SEED_REVISION)
        assert _version(conn) == [shop_seed.SEED_REVISION]
    finally:
        engine.dispose()


def test_offline_sql_generation(database_url: str) -> None:
    buffer = io.StringIO()
    cfg = Config(str(ALEMBIC_INI), output_buffer=buffer)
    _set_url(cfg, database_url)
    cfg.attributes["configure_logger"] = False
    # 0010_rename_first_name (dbrollback.expand) reads the live table: it has no offline form.
    command.upgrade(cfg, "0009_drop_newsletter", sql=True)
    upgrade_sql = buffer.getvalue()
    assert "CREATE TABLE customers" in upgrade_sql
    assert "USING round(weight_kg)::integer" in upgrade_sql
    assert "DROP TABLE newsletter_signups" in upgrade_sql
    buffer.seek(0)
    buffer.truncate()
    command.downgrade(cfg, "0009_drop_newsletter:base", sql=True)
    assert "DROP TABLE customers" in buffer.getvalue()
