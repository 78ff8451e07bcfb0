"""Deterministic seed data for the ``shop`` example project.

The seed fills a database that is at :data:`SEED_REVISION` (all tables exist,
none of the data migrations have run yet) with realistic-looking rows:

* ``customers``: ``customers`` rows.  Most full names are "First Last", about
  12% carry a middle name ("First Middle Last"), about 2% are a single name.
  About 30% of the emails are in mixed case, so ``0004_normalise_emails`` has
  something to change.  Emails are unique even after lower-casing.
* ``products``: ``max(10, customers // 10)`` rows, weights with 3 decimals,
  ``legacy_code`` set for about half of them (NULL otherwise).
* ``orders``: 0-4 per customer (about 2 on average); ``total`` is the exact
  sum of ``quantity * unit_price`` over the order's items.
* ``order_items``: 1-4 per order.
* ``newsletter_signups``: ``customers // 3`` rows.

The same ``customers`` and ``seed`` always produce identical rows (ids
included): all randomness comes from ``random.Random(seed)`` and every
timestamp is derived from a fixed base time, never from ``now()``.

Command line::

    python seed.py DATABASE_URL [--customers N] [--seed S]
"""

from __future__ import annotations

import argparse
import bisect
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import psycopg
from psycopg import sql

T = TypeVar("T")

#: The revision the seed expects the database to be at.
SEED_REVISION = "0003_index_orders"

_TABLES = ("customers", "products", "orders", "order_items", "newsletter_signups")

_BASE_TIME = datetime(2022, 1, 1, tzinfo=timezone.utc)
_TWO_YEARS = 730 * 86400
_ONE_YEAR = 365 * 86400

_FIRST_NAMES = (
    "Ada", "Alan", "Alice", "Amara", "Anna", "Ben", "Carla", "Chen", "Clara",
    "Daniel", "David", "Elena", "Emma", "Ethan", "Fatima", "Felix", "Grace",
    "Hana", "Hugo", "Ines", "Isaac", "Jonas", "Julia", "Kai", "Kofi", "Lara",
    "Leo", "Lina", "Lucas", "Maya", "Mateo", "Mei", "Nadia", "Noah", "Olivia",
    "Omar", "Paula", "Priya", "Rafael", "Sara", "Sofia", "Tariq", "Theo",
    "Yara", "Yusuf", "Zoe",
)  # fmt: skip

_LAST_NAMES = (
    "Adams", "Bauer", "Brown", "Costa", "de la Cruz", "Dubois", "Evans",
    "Fischer", "Garcia", "Hansen", "Ito", "Jansen", "Khan", "Kowalski",
    "Larsen", "Lopez", "Martin", "Meyer", "Moreau", "Nakamura", "Novak",
    "Okafor", "O'Brien", "Patel", "Rossi", "Santos", "Schmidt", "Silva",
    "Smith", "Smith-Jones", "Tanaka", "Taylor", "van Dijk", "Walker", "Wang",
    "Weber", "Wilson", "Young", "Zhang",
)  # fmt: skip

_STREETS = (
    "Acacia Avenue", "Baker Street", "Canal Road", "Church Lane",
    "Elm Street", "Harbour View", "High Street", "Market Square",
    "Mill Road", "Oak Drive", "Park Lane", "Queen's Road", "River Walk",
    "Station Road", "Victoria Street", "Windmill Hill",
)  # fmt: skip

_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example")

_ADJECTIVES = (
    "Classic", "Compact", "Deluxe", "Eco", "Ergonomic", "Heavy-Duty",
    "Lightweight", "Modern", "Portable", "Premium", "Rustic", "Smart",
    "Vintage", "Waterproof",
)  # fmt: skip

_MATERIALS = (
    "Aluminium", "Bamboo", "Ceramic", "Copper", "Cotton", "Glass", "Leather",
    "Linen", "Oak", "Steel", "Walnut", "Wool",
)  # fmt: skip

_NOUNS = (
    "Backpack", "Blanket", "Bottle", "Bowl", "Chair", "Clock", "Desk Lamp",
    "Frying Pan", "Kettle", "Mug", "Notebook", "Planter", "Shelf", "Stool",
    "Teapot", "Toolbox", "Tray", "Umbrella", "Vase", "Wallet",
)  # fmt: skip

# order statuses; _STATUS_CUMULATIVE holds the cumulative frequencies
_STATUSES = ("new", "paid", "shipped", "delivered", "cancelled")
_STATUS_CUMULATIVE = (0.10, 0.25, 0.40, 0.90)  # bisect() maps [0, 1) onto _STATUSES
_QUANTITIES = (1, 1, 1, 2, 2, 3, 5)


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _kilograms(grams: int) -> str:
    return f"{grams // 1000}.{grams % 1000:03d}"


def _check_revision(conn: psycopg.Connection) -> None:
    cur = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    row = cur.fetchone()
    if row is None or not row[0]:
        raise RuntimeError(
            f"no alembic_version table; upgrade the database to {SEED_REVISION} before seeding"
        )
    versions = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
    if versions != [SEED_REVISION]:
        raise RuntimeError(
            f"seed() expects the database at revision {SEED_REVISION}, found {versions or 'none'}"
        )


def _pick(rnd: Callable[[], float], seq: Sequence[T]) -> T:
    # int(rnd() * n) is several times faster than rng.choice()/randrange(),
    # which matters at a million rows; it is just as deterministic.
    return seq[int(rnd() * len(seq))]


def _customer_rows(
    rnd: Callable[[], float], n: int, emails: list[str], created: list[datetime]
) -> Iterator[tuple[object, ...]]:
    """Rows for customers; records each lower-cased email and created_at."""
    for cid in range(1, n + 1):
        first = _pick(rnd, _FIRST_NAMES)
        last = _pick(rnd, _LAST_NAMES)
        shape = rnd()
        if shape < 0.02:
            full_name = first
            local = f"{first}.{cid}"
        elif shape < 0.14:
            middle = _pick(rnd, _FIRST_NAMES)
            full_name = f"{first} {middle} {last}"
            local = f"{first}.{middle[0]}.{last}.{cid}"
        else:
            full_name = f"{first} {last}"
            local = f"{first}.{last}.{cid}"
        local = local.replace(" ", "").replace("'", "")
        domain = _pick(rnd, _EMAIL_DOMAINS)
        # The id in the local part keeps emails unique even after lower().
        lower_email = f"{local}@{domain}".lower()
        mixed = rnd()
        if mixed < 0.10:
            email = f"{local}@{domain}"  # "Ada.Smith.7@example.com"
        elif mixed < 0.20:
            email = lower_email.upper()
        elif mixed < 0.30:
            email = f"{local.lower()}@{domain.upper()}"
        else:
            email = lower_email
        created_at = _BASE_TIME + timedelta(seconds=int(rnd() * _TWO_YEARS))
        # ~70% left a phone number (0002_add_customer_phone exists at SEED_REVISION)
        has_phone = rnd() < 0.7
        phone = f"+1-555-{int(rnd() * 1000):03d}-{int(rnd() * 10000):04d}" if has_phone else None
        emails.append(lower_email)
        created.append(created_at)
        yield (cid, full_name, email, created_at, phone)


def _product_rows(
    rnd: Callable[[], float], n: int, prices: list[int]
) -> Iterator[tuple[object, ...]]:
    """Rows for products; records each price (in cents)."""
    for pid in range(1, n + 1):
        name = f"{_pick(rnd, _ADJECTIVES)} {_pick(rnd, _MATERIALS)} {_pick(rnd, _NOUNS)}"
        price = 199 + int(rnd() * 49_800)  # 1.99 .. 499.98
        grams = 50 + int(rnd() * 24_950)  # 0.050 .. 24.999 kg
        # about half the products still carry a code from the old system
        legacy_code = f"LC-{int(rnd() * 1_000_000):06d}" if rnd() < 0.5 else None
        prices.append(price)
        yield (pid, f"SKU-{pid:06d}", name, _money(price), _kilograms(grams), legacy_code)


def _order_rows(
    rnd: Callable[[], float],
    created: list[datetime],
    prices: list[int],
    items: list[tuple[int, int, int, int, str]],
) -> Iterator[tuple[object, ...]]:
    """Rows for orders (0-4 per customer); appends their order_items to items.

    This is the hot loop of the seed (about 700k rows at 100k customers), so
    lookups are bound to locals and the price strings are formatted once.
    """
    n_products = len(prices)
    price_strs = [_money(p) for p in prices]
    add_item = items.append
    quantities = _QUANTITIES
    n_quantities = len(quantities)
    oid = 0
    item_id = len(items)
    for cid, customer_created in enumerate(created, start=1):
        for _ in range(int(rnd() * 5)):
            oid += 1
            total = 0
            for _ in range(1 + int(rnd() * 4)):
                pid = 1 + int(rnd() * n_products)
                quantity = quantities[int(rnd() * n_quantities)]
                if rnd() < 0.1:  # occasional 15% discount
                    unit_price = prices[pid - 1] * 85 // 100
                    unit_price_str = _money(unit_price)
                else:
                    unit_price = prices[pid - 1]
                    unit_price_str = price_strs[pid - 1]
                total += quantity * unit_price
                item_id += 1
                add_item((item_id, oid, pid, quantity, unit_price_str))
            status = _STATUSES[bisect.bisect(_STATUS_CUMULATIVE, rnd())]
            placed_at = customer_created + timedelta(seconds=int(rnd() * _ONE_YEAR))
            yield (oid, cid, status, _money(total), placed_at)


def _signup_rows(
    rnd: Callable[[], float], n: int, customer_emails: list[str]
) -> Iterator[tuple[object, ...]]:
    """Rows for newsletter_signups: half by customers, half by other readers."""
    for sid in range(1, n + 1):
        if customer_emails and rnd() < 0.5:
            email = _pick(rnd, customer_emails)
        else:
            street = _pick(rnd, _STREETS).split()[0].lower().replace("'", "")
            email = f"{street}.reader{sid}@{_pick(rnd, _EMAIL_DOMAINS)}"
        signed_up_at = _BASE_TIME + timedelta(seconds=int(rnd() * _TWO_YEARS))
        yield (sid, email, signed_up_at)


def _copy(cur: psycopg.Cursor, table: str, columns: str, rows: Iterable[Sequence[object]]) -> int:
    count = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), sql.SQL(columns))
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _drop_foreign_keys(cur: psycopg.Cursor) -> list[tuple[str, str, str, str]]:
    """Drop the FK constraints of the shop tables; return what is needed to re-add them.

    Foreign keys are checked row by row at the end of each COPY, which is by
    far the slowest part of seeding (about half the time at 100k customers).
    Re-adding the constraints afterwards validates them in one set-based query
    each, with the same names and definitions as before.
    """
    cur.execute(
        """
        SELECT n.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c
        JOIN pg_class r ON r.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = r.relnamespace
        WHERE c.contype = 'f'
          AND c.conrelid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)
        ORDER BY n.nspname, r.relname, c.conname
        """,
        (list(_TABLES),),
    )
    fks = cur.fetchall()
    for schema, table, name, _definition in fks:
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)
            )
        )
    return fks


def _restore_foreign_keys(cur: psycopg.Cursor, fks: list[tuple[str, str, str, str]]) -> None:
    for schema, table, name, definition in fks:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
            )
        )


def seed(conn: psycopg.Connection, customers: int = 1000, *, seed: int = 42) -> dict[str, int]:
    """Fill the shop at SEED_REVISION; returns rows inserted per table.

    The tables must be empty (ids are generated here, starting at 1).  All
    statements run inside ``with conn.transaction():``; on an idle connection
    that block commits on success and rolls everything back on error.  If the
    caller already has a transaction open, psycopg turns the block into a
    savepoint and committing is left to the caller.

    For speed the foreign keys of the shop tables are dropped for the bulk
    load and re-added (same names and definitions, validated) before the
    block ends, so this needs to run as the tables' owner.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    # Every random choice comes from this one stream, in a fixed order.
    rnd = random.Random(seed).random
    counts: dict[str, int] = {}
    customer_emails: list[str] = []  # lower-cased, index = customer id - 1
    customer_created: list[datetime] = []
    product_prices: list[int] = []  # cents, index = product id - 1
    items: list[tuple[int, int, int, int, str]] = []

    with conn.transaction():
        _check_revision(conn)
        cur = conn.cursor()
        fks = _drop_foreign_keys(cur)

        counts["customers"] = _copy(
            cur,
            "customers",
            "id, full_name, email, created_at, phone",
            _customer_rows(rnd, customers, customer_emails, customer_created),
        )
        counts["products"] = _copy(
            cur,
            "products",
            "id, sku, name, price, weight_kg, legacy_code",
            _product_rows(rnd, max(10, customers // 10), product_prices),
        )
        counts["orders"] = _copy(
            cur,
            "orders",
            "id, customer_id, status, total, placed_at",
            _order_rows(rnd, customer_created, product_prices, items),
        )
        counts["order_items"] = _copy(
            cur, "order_items", "id, order_id, product_id, quantity, unit_price", items
        )
        del items
        counts["newsletter_signups"] = _copy(
            cur,
            "newsletter_signups",
            "id, email, signed_up_at",
            _signup_rows(rnd, customers // 3, customer_emails),
        )

        _restore_foreign_keys(cur, fks)
        # Move every identity sequence past the ids used above, so later
        # inserts that rely on the identity default do not collide.
        for table in _TABLES:
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                    "coalesce((SELECT max(id) FROM {}), 0) + 1, false)"
                ).format(sql.Identifier(table)),
                (table,),
            )

    return counts


def _libpq_url(url: str) -> str:
    """Turn a SQLAlchemy-style URL (``postgresql+psycopg://``) into a libpq one."""
    return re.sub(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", r"\1://", url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Seed the shop example database (expects revision {SEED_REVISION})."
    )
    parser.add_argument("database_url", metavar="DATABASE_URL")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    with psycopg.connect(_libpq_url(args.database_url)) as conn:
        counts = seed(conn, args.customers, seed=args.seed)
    for table, count in counts.items():
        print(f"{table}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
