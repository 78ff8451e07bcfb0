"""`dbrollback check` on revisions written with the dbrollback.expand helpers: up, down (expand.abort())
and up again leave the schema and the data as they were, and a downgrade without expand.abort() is
caught by check as by lint (expand-without-abort / missing-downgrade)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from dbrollback.lint import lint_file

from .conftest import Project

HEADER = "from dbrollback import expand\n"

TABLES = """
op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("name", sa.Text, nullable=False), sa.Column("email", sa.Text))
op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("customer_id", sa.Integer),
                sa.Column("total", sa.Integer, nullable=False), sa.Column("placed_at", sa.DateTime))
"""
DROP_TABLES = 'op.drop_table("orders")\nop.drop_table("customers")'

EXPAND = """
expand.rename_column("customers", "name", "full_name")
expand.add_not_null_column("customers", "region", "text", backfill="'eu'")
expand.create_index("ix_customers_email", "customers", ["email"])
"""

OTHER_HELPERS = """
expand.change_column_type("orders", "total", "numeric(12,2)", up="total::numeric(12,2)",
                          down="round(total_new)::integer")
expand.add_synced_column("customers", "email_lower", "text", up="lower(email)", old_column="email")
expand.split_column("customers", "name", {"first": ("text", "split_part(name, ' ', 1)"),
                                          "rest": ("text", "substr(name, strpos(name, ' ') + 1)")})
expand.add_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])
expand.create_index("ix_orders_placed_at", "orders", ["placed_at"], where="placed_at IS NOT NULL")
"""

HAND_WRITTEN_DOWNGRADE = """
op.drop_index("ix_customers_email", table_name="customers")
op.drop_column("customers", "region")
op.drop_column("customers", "full_name")
"""


def _by_revision(document: Any) -> dict[str, dict[str, Any]]:
    return {r["revision"]: r for r in document["revisions"]}


def _passed(revision: dict[str, Any]) -> bool:
    return (
        revision["status"], revision["upgrade"], revision["downgrade"], revision["schema_roundtrip"],
        revision["data_roundtrip"], revision["reupgrade"], revision["schema_differences"], revision["lost"],
        revision["unverified"], revision["error"], revision["notes"],
    ) == ("ok", "ok", "ok", "ok", "ok", "ok", [], [], [], None, [])  # fmt: skip


def _expansions(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT revision, kind, status, closed_by FROM dbrollback.expansions ORDER BY id"
    ).fetchall()


def _stable(text: str) -> str:
    """Trigger/function names without their random part (_dbrb_expand_<id>_<hex>)."""
    return re.sub(r"(_dbrb_expand_)0*(\d+)_[0-9a-f]{6}", r"\1\2", text)


def _triggers(db: psycopg.Connection, table: str) -> list[str]:
    rows = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY tgname",
        (table,),
    )
    return [_stable(r[0]) for r in rows.fetchall()]


def _columns(db: psycopg.Connection, table: str) -> list[str]:
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    return [r[0] for r in rows.fetchall()]


def test_check_passes_on_rename_not_null_and_index_undone_by_abort(project: Project, cli, database_url: str,
                                                                   db: psycopg.Connection) -> None:  # fmt: skip
    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision("r2", "r1", EXPAND, "expand.abort()", header=HEADER)

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 0, result.out + result.err
    document: Any = result.json
    revisions = _by_revision(document)
    assert _passed(revisions["r1"]) and _passed(revisions["r2"]), revisions
    assert document["summary"] == {"ok": 2, "failed": 0, "not_checked": 0} and document["notes"] == []
    # What the round trip did, as the database it left at r2 shows: the downgrade's expand.abort()
    # closed the first upgrade's expansions, the upgrade after it opened them again.
    assert _expansions(db) == [
        ("r2", "rename_column", "aborted", "downgrade"),
        ("r2", "not_null_column", "aborted", "downgrade"),
        ("r2", "index", "aborted", "downgrade"),
        ("r2", "rename_column", "open", None),
        ("r2", "not_null_column", "open", None),
        ("r2", "index", "open", None),
    ]
    assert _triggers(db, "customers") == ["_dbrb_expand_4", "_dbrb_expand_5"]
    assert _columns(db, "customers") == ["id", "name", "email", "full_name", "region"]
    index = db.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.ix_customers_email'::regclass"
    ).fetchone()
    assert index == (True,)  # built CONCURRENTLY in the autocommit block, under check's runner too
    # The rows the check wrote went through the sync triggers: every row has its name.
    counts = db.execute("SELECT count(*), count(*) FILTER (WHERE name IS NULL) FROM customers").fetchone()
    assert counts is not None and counts[0] > 0 and counts[1] == 0
    # Lint agrees: only the info that abort drops the values written to region.
    assert [(f.rule, f.severity) for f in lint_file(project.versions / "r2.py")] == [
        ("downgrade-drops-new-data", "info")
    ]


def test_check_passes_on_every_other_helper(project: Project, cli, database_url: str) -> None:
    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision("r2", "r1", OTHER_HELPERS, "expand.abort()", header=HEADER)
    project.add_revision("r3", "r2", 'op.add_column("orders", sa.Column("note", sa.Text))',
                         'op.drop_column("orders", "note")')  # fmt: skip

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 0, result.out + result.err
    revisions = _by_revision(result.json)
    assert list(revisions) == ["r1", "r2", "r3"]
    assert all(_passed(revision) for revision in revisions.values()), revisions
    assert lint_file(project.versions / "r2.py") == []


def test_downgrade_without_abort_fails_check_as_lint_says(project: Project, cli, database_url: str) -> None:
    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision("r2", "r1", EXPAND, "pass", header=HEADER)

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 1
    r2 = _by_revision(result.json)["r2"]
    assert (r2["status"], r2["downgrade"], r2["schema_roundtrip"], r2["reupgrade"]) == (
        "failed", "ok", "diff", "error",
    )  # fmt: skip
    assert [_stable(d["object"]) for d in r2["schema_differences"]] == [
        "column public.customers.full_name",
        "column public.customers.region",
        "index public.ix_customers_email",
        "function public._dbrb_expand_1()",
        "function public._dbrb_expand_2()",
        "trigger _dbrb_expand_1 on public.customers",
        "trigger _dbrb_expand_2 on public.customers",
    ]
    assert "already has a column 'full_name'" in r2["error"]
    assert [f.rule for f in lint_file(project.versions / "r2.py")] == ["missing-downgrade"]


def _alembic_config(project: Project, database_url: str) -> Any:
    from alembic.config import Config

    config = Config(str(project.ini))
    url = make_url(database_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return config


def test_hand_written_downgrade_leaves_a_trigger_that_breaks_writes(project: Project, cli, database_url: str,
                                                                    db: psycopg.Connection) -> None:  # fmt: skip
    """What expand-without-abort warns about: dropping the new columns by hand under plain
    `alembic downgrade` leaves the sync triggers, and every write to the table then fails."""
    from alembic import command

    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision("r2", "r1", EXPAND, HAND_WRITTEN_DOWNGRADE, header=HEADER)
    assert [f.rule for f in lint_file(project.versions / "r2.py") if f.severity == "error"] == [
        "expand-without-abort"
    ]
    config = _alembic_config(project, database_url)
    command.upgrade(config, "r2")
    db.execute("INSERT INTO customers (id, name) VALUES (1, 'Ada')")
    assert db.execute("SELECT full_name, region FROM customers").fetchall() == [("Ada", "eu")]

    command.downgrade(config, "r1")

    assert _columns(db, "customers") == ["id", "name", "email"]
    assert _triggers(db, "customers") == ["_dbrb_expand_1", "_dbrb_expand_2"]
    with pytest.raises(psycopg.errors.UndefinedColumn, match='record "new" has no field "full_name"'):
        db.execute("INSERT INTO customers (id, name) VALUES (2, 'Grace')")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        db.execute("UPDATE customers SET name = 'Ada L.' WHERE id = 1")
    assert [row[2] for row in _expansions(db)] == ["open", "open", "open"]


def test_check_reports_the_triggers_a_hand_written_downgrade_leaves(project: Project, cli,
                                                                    database_url: str) -> None:  # fmt: skip
    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision("r2", "r1", EXPAND, HAND_WRITTEN_DOWNGRADE, header=HEADER)

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 1
    r2 = _by_revision(result.json)["r2"]
    assert (r2["status"], r2["downgrade"], r2["schema_roundtrip"]) == ("failed", "ok", "diff")
    assert [_stable(d["message"]) for d in r2["schema_differences"]] == [
        "function public._dbrb_expand_1() exists after the downgrade but not before the upgrade",
        "function public._dbrb_expand_2() exists after the downgrade but not before the upgrade",
        "trigger _dbrb_expand_1 on public.customers exists after the downgrade but not before the upgrade",
        "trigger _dbrb_expand_2 on public.customers exists after the downgrade but not before the upgrade",
    ]


def test_check_runs_the_backfill_an_expansion_opens(project: Project, cli, database_url: str) -> None:
    # `up` fails on every existing row (division by zero): Alembic alone would pass it, the
    # backfill `dbrollback upgrade` runs after the commit would not.
    project.add_revision("r1", None, TABLES, DROP_TABLES)
    project.add_revision(
        "r2",
        "r1",
        'expand.add_synced_column("customers", "ratio", "numeric", old_column="id", up="1 / (id - id)")',
        "expand.abort()",
        header=HEADER,
    )

    result = cli("check", "--database-url", database_url, "--json")

    assert result.code == 1, result.out + result.err
    r2 = _by_revision(result.json)["r2"]
    problems = json.dumps(r2)
    assert "the backfill it opened failed" in problems and "division by zero" in problems
