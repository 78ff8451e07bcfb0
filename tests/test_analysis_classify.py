"""Tests for dbrollback.analysis.classify: statement classification without a database."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from dbrollback.analysis.classify import StatementEffect, TableRef, classify_sql

# (sql, expected kinds, expected lossy per effect, expected table per effect, expected columns per effect)
# A table is written "name" or "schema.name"; None when the effect touches no table.
CASES: list[tuple[str, list[str], list[bool], list[str | None], list[tuple[str, ...]]]] = [
    ("CREATE TABLE t (id int PRIMARY KEY, x text)", ["create_table"], [False], ["t"], [()]),
    ("CREATE TABLE s.t2 AS SELECT id, x FROM t", ["create_table"], [False], ["s.t2"], [()]),
    ("SELECT 1 AS one INTO t3", ["create_table"], [False], ["t3"], [()]),
    ("DROP TABLE t", ["drop_table"], [True], ["t"], [()]),
    (
        "DROP TABLE IF EXISTS a, s.b CASCADE",
        ["drop_table", "drop_table"],
        [True, True],
        ["a", "s.b"],
        [(), ()],
    ),
    (
        "ALTER TABLE products DROP COLUMN legacy_code",
        ["drop_column"],
        [True],
        ["products"],
        [("legacy_code",)],
    ),
    (
        "ALTER TABLE products ALTER COLUMN weight_kg TYPE integer USING round(weight_kg)::integer",
        ["alter_column_type"],
        [True],
        ["products"],
        [("weight_kg",)],
    ),
    ("ALTER TABLE t ALTER COLUMN x TYPE varchar(500)", ["alter_column_type"], [True], ["t"], [("x",)]),
    ("ALTER TABLE orders ADD COLUMN notes text", ["add_column"], [False], ["orders"], [("notes",)]),
    ("CREATE INDEX ix_t_x ON t (x)", ["create_index"], [False], ["t"], [("x",)]),
    ("CREATE UNIQUE INDEX CONCURRENTLY ix ON s.t (lower(x))", ["create_index"], [False], ["s.t"], [()]),
    ("DROP INDEX ix_t_x", ["drop_index"], [False], [None], [()]),
    ("DROP INDEX CONCURRENTLY IF EXISTS s.ix", ["drop_index"], [False], [None], [()]),
    ("UPDATE customers SET email = lower(email)", ["update"], [True], ["customers"], [("email",)]),
    (
        "UPDATE s.customers SET email = lower(email), phone = NULL WHERE id = 1",
        ["update"],
        [True],
        ["s.customers"],
        [("email", "phone")],
    ),
    ("DELETE FROM t", ["delete"], [True], ["t"], [()]),
    ("DELETE FROM t WHERE id > 10", ["delete"], [True], ["t"], [()]),
    ("TRUNCATE t", ["truncate"], [True], ["t"], [()]),
    (
        "TRUNCATE TABLE a, s.b RESTART IDENTITY",
        ["truncate", "truncate"],
        [True, True],
        ["a", "s.b"],
        [(), ()],
    ),
    ("INSERT INTO t (id, x) VALUES (1, 'a')", ["insert"], [False], ["t"], [("id", "x")]),
    ("INSERT INTO t2 SELECT id, x FROM t", ["insert"], [False], ["t2"], [()]),
    (
        "INSERT INTO t (id, x) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET x = excluded.x",
        ["insert"],
        [True],
        ["t"],
        [("id", "x")],
    ),
    ("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING", ["insert"], [False], ["t"], [("id",)]),
    ("ALTER TABLE t RENAME TO t_old", ["rename_table"], [False], ["t"], [()]),
    ("ALTER TABLE s.t RENAME COLUMN x TO y", ["rename_column"], [False], ["s.t"], [("x",)]),
    ("ALTER TABLE t DROP CONSTRAINT uq_t_x", ["drop_constraint"], [True], ["t"], [()]),
    ("ALTER TABLE t ADD CONSTRAINT uq_t_x UNIQUE (x, id)", ["add_constraint"], [False], ["t"], [("x", "id")]),
    (
        "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES c (id)",
        ["add_constraint"],
        [False],
        ["t"],
        [("cid",)],
    ),
    ("ALTER TABLE t ALTER COLUMN x SET NOT NULL", ["set_not_null"], [False], ["t"], [("x",)]),
    ("ALTER TABLE t ALTER COLUMN x DROP NOT NULL", ["drop_not_null"], [False], ["t"], [("x",)]),
    ("ALTER TABLE t ALTER COLUMN x DROP DEFAULT", ["drop_default"], [False], ["t"], [("x",)]),
    ("ALTER TABLE t ALTER COLUMN x SET DEFAULT 'n'", ["set_default"], [False], ["t"], [("x",)]),
    ("DROP SCHEMA legacy CASCADE", ["drop_schema"], [True], [None], [()]),
    ("DROP SCHEMA legacy", ["drop_schema"], [False], [None], [()]),
    ("SELECT count(*) FROM t WHERE lower(x) = 'a'", ["select"], [False], ["t"], [()]),
    ("SELECT 1", ["select"], [False], [None], [()]),
    ("SELECT set_config('search_path', 'public', false)", ["select"], [False], [None], [()]),
    (
        "WITH gone AS (DELETE FROM t RETURNING id) SELECT count(*) FROM gone",
        ["select"],
        [True],
        ["gone"],
        [()],
    ),
    ("CREATE SCHEMA reporting", ["other"], [False], [None], [()]),
    ("BEGIN", ["other"], [False], [None], [()]),
    ("COMMENT ON TABLE t IS 'x'", ["other"], [False], [None], [()]),
    ("DROP SEQUENCE t_id_seq", ["other"], [True], [None], [()]),
    ("DROP TYPE mood CASCADE", ["other"], [True], [None], [()]),
    ("DROP VIEW v", ["other"], [False], [None], [()]),
    ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", ["other"], [False], ["t"], [()]),
    ("ALTER INDEX ix RENAME TO ix2", ["other"], [False], [None], [()]),
    # Quoted identifiers: spaces, doubled quotes, semicolons, non-ASCII.
    ('DROP TABLE "we""ird; tä ble"', ["drop_table"], [True], ['we"ird; tä ble'], [()]),
    (
        'ALTER TABLE "Sch ema"."Tä;ble" DROP COLUMN "Cöl ""1"""',
        ["drop_column"],
        [True],
        ["Sch ema.Tä;ble"],
        [('Cöl "1"',)],
    ),
    ('UPDATE "ünï" SET "a;b" = 1', ["update"], [True], ["ünï"], [("a;b",)]),
    # Several subcommands of one ALTER TABLE.
    (
        "ALTER TABLE t ADD COLUMN y int, DROP COLUMN x, ALTER COLUMN z TYPE bigint, ALTER COLUMN y SET NOT NULL",
        ["add_column", "drop_column", "alter_column_type", "set_not_null"],
        [False, True, True, False],
        ["t", "t", "t", "t"],
        [("y",), ("x",), ("z",), ("y",)],
    ),
    # Several statements in one string.
    (
        "CREATE TABLE n (id int); INSERT INTO n VALUES (1);\nUPDATE n SET id = 2; DROP TABLE n;",
        ["create_table", "insert", "update", "drop_table"],
        [False, False, True, True],
        ["n", "n", "n", "n"],
        [(), (), ("id",), ()],
    ),
]


def _ref(table: str | None) -> TableRef | None:
    if table is None:
        return None
    schema, _, name = table.rpartition(".") if table.count(".") == 1 else ("", "", table)
    return TableRef(schema or None, name)


@pytest.mark.parametrize(
    ("sql", "kinds", "lossy", "tables", "columns"), CASES, ids=[c[0][:60] for c in CASES]
)
def test_classify(
    sql: str, kinds: list[str], lossy: list[bool], tables: list[str | None], columns: list[tuple[str, ...]]
) -> None:
    effects = classify_sql(sql)
    assert [e.kind for e in effects] == kinds
    assert [e.lossy for e in effects] == lossy
    assert [e.table for e in effects] == [_ref(t) for t in tables]
    assert [e.columns for e in effects] == columns
    assert not any(e.opaque for e in effects)
    assert all(e.reason for e in effects)


OPAQUE_CASES: list[tuple[str, str]] = [
    ("DO $$ BEGIN DELETE FROM t; END $$", "other"),
    ("DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", "other"),
    ("SELECT my_migration_fn()", "select"),
    ("SELECT public.lower('x')", "select"),
    ("SELECT setval('t_id_seq', (SELECT max(id) FROM t))", "select"),
    ("COPY t FROM '/tmp/data.csv'", "other"),
    ("EXECUTE prepared_thing(1)", "other"),
    ("CALL do_things()", "other"),
    ("EXPLAIN ANALYZE DELETE FROM t", "other"),
    ("INSERT INTO t (x) SELECT my_fn()", "insert"),
]


@pytest.mark.parametrize(("sql", "kind"), OPAQUE_CASES)
def test_opaque_statements_are_flagged(sql: str, kind: str) -> None:
    (effect,) = classify_sql(sql)
    assert effect.opaque
    assert effect.kind == kind
    assert effect.reason


@pytest.mark.parametrize(
    "sql", ["SELEC 1", "ALTER TABLE t DROP COLUMN", "UPDATE t SET x = (1", "DROP TABLE ;;"]
)
def test_unparseable_sql_is_one_opaque_effect(sql: str) -> None:
    (effect,) = classify_sql(sql)
    assert effect == StatementEffect(
        sql=sql, kind="other", table=None, columns=(), lossy=False, opaque=True, reason=effect.reason
    )
    assert "syntax error" in effect.reason


@pytest.mark.parametrize("sql", ["", "   \n", "-- only a comment\n", "/* c */ ;;"])
def test_no_statements(sql: str) -> None:
    assert classify_sql(sql) == []


def test_statement_text_is_sliced_from_the_original_string() -> None:
    sql = 'UPDATE "tä" SET x = \'ü; still the string\';\n  DROP TABLE "we""ird; tä ble" ; SELECT \'é\''
    effects = classify_sql(sql)
    assert [e.sql for e in effects] == [
        "UPDATE \"tä\" SET x = 'ü; still the string'",
        'DROP TABLE "we""ird; tä ble"',
        "SELECT 'é'",
    ]
    # Every subcommand of an ALTER TABLE carries the whole statement.
    alter = "ALTER TABLE t DROP COLUMN a, DROP COLUMN b"
    assert [e.sql for e in classify_sql(alter + ";")] == [alter, alter]


def test_reasons_name_what_is_lost() -> None:
    (drop,) = classify_sql("ALTER TABLE products DROP COLUMN legacy_code")
    assert drop.reason == "drops column products.legacy_code and its data"
    (retype,) = classify_sql(
        "ALTER TABLE products ALTER COLUMN weight_kg TYPE integer USING round(weight_kg)"
    )
    assert "weight_kg" in retype.reason
    assert "USING" in retype.reason
    assert "round(weight_kg)" in retype.reason
    (plain,) = classify_sql("ALTER TABLE t ALTER COLUMN x TYPE bigint")
    assert "USING" not in plain.reason
    (select_fn,) = classify_sql("SELECT my_fn()")
    assert "my_fn" in select_fn.reason


def test_effects_are_hashable_values() -> None:
    first = classify_sql("DROP TABLE t")
    second = classify_sql("DROP TABLE t")
    assert first == second
    assert len({*first, *second}) == 1


# --- the shop example, as Alembic emits it offline --------------------------------------------------

SHOP_INI = Path(__file__).parents[1] / "migrations_examples" / "shop" / "alembic.ini"
_RUNNING = re.compile(r"^-- Running upgrade (\S+) -> (\S+)\s*$", re.MULTILINE)


def _offline_sql_by_revision() -> dict[str, str]:
    buffer = io.StringIO()
    cfg = Config(str(SHOP_INI), output_buffer=buffer)
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://x@localhost/x")
    # 0010 uses dbrollback.expand, which needs a live connection (no offline SQL).
    command.upgrade(cfg, "0003_index_orders:0009_drop_newsletter", sql=True)
    output = buffer.getvalue()
    markers = list(_RUNNING.finditer(output))
    assert markers, output
    chunks: dict[str, str] = {}
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        end = following.start() if following else len(output)
        chunks[marker.group(2)] = output[marker.end() : end]
    return chunks


def _data_effects(sql: str) -> list[StatementEffect]:
    """Effects of a revision's SQL, without Alembic's own bookkeeping and transaction control."""
    return [
        e
        for e in classify_sql(sql)
        if e.table != TableRef(None, "alembic_version") and e.sql.upper() not in ("BEGIN", "COMMIT")
    ]


def test_shop_example_offline_sql() -> None:
    chunks = _offline_sql_by_revision()
    assert sorted(chunks) == [
        "0004_normalise_emails",
        "0005_split_full_name",
        "0006_weight_to_integer",
        "0007_drop_legacy_code",
        "0008_add_order_notes",
        "0009_drop_newsletter",
    ]
    effects = {revision: _data_effects(sql) for revision, sql in chunks.items()}
    summary = {
        revision: [(e.kind, str(e.table), e.columns, e.lossy) for e in found]
        for revision, found in effects.items()
    }
    assert summary == {
        "0004_normalise_emails": [("update", "customers", ("email",), True)],
        "0005_split_full_name": [
            ("add_column", "customers", ("first_name",), False),
            ("add_column", "customers", ("last_name",), False),
            ("update", "customers", ("first_name", "last_name"), True),
            ("drop_column", "customers", ("full_name",), True),
        ],
        "0006_weight_to_integer": [("alter_column_type", "products", ("weight_kg",), True)],
        "0007_drop_legacy_code": [("drop_column", "products", ("legacy_code",), True)],
        "0008_add_order_notes": [("add_column", "orders", ("notes",), False)],
        "0009_drop_newsletter": [("drop_table", "newsletter_signups", (), True)],
    }
    lossy_revisions = {revision for revision, found in effects.items() if any(e.lossy for e in found)}
    assert lossy_revisions == set(chunks) - {"0008_add_order_notes"}
    assert not any(e.opaque for found in effects.values() for e in found)
    assert "USING" in effects["0006_weight_to_integer"][0].reason

    # The whole script, bookkeeping included, parses; only the version-table UPDATEs and the
    # transaction control are filtered out above.
    everything = classify_sql("".join(chunks.values()))
    assert sum(e.table == TableRef(None, "alembic_version") for e in everything) == len(chunks)
