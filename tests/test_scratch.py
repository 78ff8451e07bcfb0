"""Schema-only scratch copies (issue #3, migration analysis): same server, private server, cleanup."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from dbrollback.analysis.scratch import SCRATCH_PREFIX, ScratchUnavailable, open_scratch, scratch_copy

SCHEMA = 'Sch; "é"'
TABLE = 'we"ird tä;ble'


def _scratch_databases(db: psycopg.Connection) -> list[str]:
    rows = db.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (SCRATCH_PREFIX,))
    return [r[0] for r in rows.fetchall()]


def _private_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dbrb-scratch-*")}


def _source(db: psycopg.Connection) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    db.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text NOT NULL DEFAULT 'x')").format(
            sql.Identifier(SCHEMA, TABLE), sql.Identifier('Quoted "Col"')
        )
    )
    db.execute(sql.SQL("INSERT INTO {} (id) VALUES (1), (2)").format(sql.Identifier(SCHEMA, TABLE)))
    db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    db.execute("INSERT INTO alembic_version VALUES ('abc'), ('def')")
    db.execute("CREATE SCHEMA dbrollback; CREATE TABLE dbrollback.runs (id int)")


def test_same_server_copy_has_schema_and_version_rows_only(database_url: str, db: psycopg.Connection) -> None:
    _source(db)
    with open_scratch(database_url) as scratch:
        assert scratch.kind == "same_server"
        assert scratch.database.startswith(SCRATCH_PREFIX)
        assert _scratch_databases(db) == [scratch.database]
        with psycopg.connect(scratch.url) as copy:
            tables = copy.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ).fetchall()
            assert tables == [(SCHEMA, TABLE), ("public", "alembic_version")]
            rows = copy.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, TABLE)))
            assert rows.fetchone() == (0,)
            versions = copy.execute("SELECT version_num FROM alembic_version ORDER BY 1").fetchall()
            assert versions == [("abc",), ("def",)]
            default = copy.execute(
                "SELECT column_default FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
                (TABLE, 'Quoted "Col"'),
            ).fetchone()
            assert default == ("'x'::text",)
    assert _scratch_databases(db) == []
    # the source is untouched
    assert db.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, TABLE))
    ).fetchone() == (2,)


def test_copy_is_dropped_when_the_body_fails(database_url: str, db: psycopg.Connection) -> None:
    _source(db)
    with pytest.raises(RuntimeError, match="boom"), scratch_copy(database_url) as url:
        # a session left open in the copy must not keep it alive (DROP … WITH (FORCE))
        lingering = psycopg.connect(url)
        raise RuntimeError("boom")
    lingering.close()
    assert _scratch_databases(db) == []


def test_version_table_in_its_own_schema_and_search_path(database_url: str, db: psycopg.Connection) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    db.execute(sql.SQL("CREATE TABLE {} (version_num text)").format(sql.Identifier(SCHEMA, "ver")))
    db.execute(sql.SQL("INSERT INTO {} VALUES ('r9')").format(sql.Identifier(SCHEMA, "ver")))
    dbname = make_url(database_url).database
    assert dbname is not None
    db.execute(
        sql.SQL("ALTER DATABASE {} SET search_path TO {}, public").format(
            sql.Identifier(dbname), sql.Identifier(SCHEMA)
        )
    )
    with (
        scratch_copy(database_url, version_table="ver", version_table_schema=SCHEMA) as url,
        psycopg.connect(url) as copy,
    ):
        assert copy.execute("SELECT version_num FROM ver").fetchall() == [("r9",)]
        path = copy.execute("SHOW search_path").fetchone()
        assert path is not None and path[0] == f'"{SCHEMA.replace(chr(34), chr(34) * 2)}", public'


@pytest.fixture
def limited_role(server_url: str, database_url: str, db: psycopg.Connection) -> Iterator[tuple[str, str]]:
    """A login role that owns the test database but may not create databases; (url, password)."""
    role = f"app {uuid.uuid4().hex[:8]}"
    password = "pa ss@w:o%rd/é"
    with psycopg.connect(server_url, autocommit=True) as admin:
        try:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server does not let us create roles")
        me = admin.execute("SELECT current_user").fetchone()
        assert me is not None
        dbname = make_url(database_url).database
        assert dbname is not None
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(role))
        )
        db.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        parts = urlsplit(database_url)
        netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
        url = urlunsplit(parts._replace(netloc=netloc))
        try:
            yield url, password
        finally:
            admin.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(me[0]))
            )
            db.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(role), sql.Identifier(me[0]))
            )
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_private_server_when_create_database_is_not_permitted(limited_role: tuple[str, str],
                                                              db: psycopg.Connection) -> None:  # fmt: skip
    url, password = limited_role
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO orders VALUES (1, 9.5)")
    notes: list[str] = []
    before = _private_dirs()
    with open_scratch(url, notify=notes.append) as scratch:
        assert scratch.kind == "private_server"
        assert "permission denied to create database" in scratch.note
        assert _scratch_databases(db) == []  # nothing was created on the source's server
        with psycopg.connect(scratch.url) as copy:
            assert copy.execute("SELECT count(*) FROM orders").fetchone() == (0,)
            cols = copy.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' ORDER BY 1"
            ).fetchall()
            assert cols == [("id",), ("total",)]
        server_dir = _private_dirs() - before
        assert len(server_dir) == 1
    assert _private_dirs() - before == set()
    assert notes and all(password not in n for n in notes)


def test_unavailable_when_neither_works(limited_role: tuple[str, str], db: psycopg.Connection) -> None:
    url, password = limited_role
    # A table the role may not read: pg_dump cannot lock it, wherever the copy would go.
    db.execute("CREATE TABLE secret (id int)")
    before = _private_dirs()
    with pytest.raises(ScratchUnavailable) as caught, scratch_copy(url):
        pytest.fail("no copy should have been made")
    message = caught.value.message
    assert "permission denied to create database" in message
    assert "secret" in message
    for form in (password, "pa%20ss", "pa ss"):
        assert form not in message and form not in caught.value.reason
    assert _private_dirs() - before == set()
    assert _scratch_databases(db) == []
