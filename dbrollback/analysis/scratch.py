"""A throwaway schema-only copy of a database, to run pending revisions on without touching it.

The copy is made with the embedded wheel's pg_dump --schema-only streamed into psql, into either

(a) a new database ``dbrb_scratch_<hex>`` on the same server (CREATE DATABASE … TEMPLATE template0),
    dropped WITH (FORCE) afterwards, or, where the role may not create databases or the schema does
    not restore there,
(b) a private embedded server started in a temporary directory, destroyed afterwards.

A schema-only dump has no rows, so the rows of the Alembic version table are copied too (COPY out
of the source, COPY into the copy): Alembic must see the same current heads there.
Passwords never reach a command line, an error or a log: tools get them through PGPASSWORD.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from dbrollback.embedded import DEFAULT_DATABASE, EmbeddedServer, binary
from dbrollback.errors import DbrollbackError, EmbeddedServerError
from dbrollback.pgtools import tool_connection
from dbrollback.urls import redact

__all__ = ["SCRATCH_PREFIX", "Scratch", "ScratchUnavailable", "open_scratch", "scratch_copy"]

SCRATCH_PREFIX = "dbrb_scratch_"
_DBNAME_IN_QUERY = re.compile(r"((?:^|&)dbname=)[^&]*")
_TOOL_TIMEOUT = 600  # seconds for one pg_dump | psql of a schema; a schema is small
# Durability is irrelevant for a copy that lives for one command.
_PRIVATE_SERVER_OPTIONS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class ScratchUnavailable(DbrollbackError):
    """No schema-only copy could be made (no CREATE DATABASE, and no private server either)."""

    kind = "scratch_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Cannot make a schema-only copy of the database: {redact(reason)}")
        self.reason = redact(reason)


class _DumpFailed(Exception):
    """pg_dump could not read the source: no other destination would help."""


class _RestoreFailed(Exception):
    """psql could not replay the schema into the destination."""


@dataclass(frozen=True)
class Scratch:
    url: str  # libpq URL of the copy
    database: str  # its database name (dbrb_scratch_<hex>)
    kind: str  # "same_server" | "private_server"
    note: str  # why a private server was needed, if it was

    def describe(self) -> str:
        if self.kind == "same_server":
            return f"scratch database {self.database} on the same server"
        return f"scratch database {self.database} on a private embedded server ({self.note})"


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def scratch_copy(source_libpq_url: str, *, exclude_schemas: Sequence[str] = ("dbrollback",),
                 version_table: str | None = "alembic_version",
                 version_table_schema: str | None = None) -> Iterator[str]:  # fmt: skip
    """A libpq URL of a throwaway schema-only copy of the source (plus its version table's rows)."""
    with open_scratch(source_libpq_url, exclude_schemas=exclude_schemas, version_table=version_table,
                      version_table_schema=version_table_schema) as scratch:  # fmt: skip
        yield scratch.url


@contextlib.contextmanager
def open_scratch(source_libpq_url: str, *, exclude_schemas: Sequence[str] = ("dbrollback",),
                 version_table: str | None = "alembic_version", version_table_schema: str | None = None,
                 lock_wait_timeout_ms: int | None = None,
                 notify: Callable[[str], None] = _quiet) -> Iterator[Scratch]:  # fmt: skip
    """Like :func:`scratch_copy`, yielding where the copy lives. Raises ScratchUnavailable.

    `lock_wait_timeout_ms`: pg_dump gives up (ScratchUnavailable) rather than queue behind a
    session holding a table lock; the caller then falls back to offline analysis.
    """
    from dbrollback.snapshot.capture import psql_can_reach

    if not psql_can_reach(source_libpq_url):
        # The wheel's pg_dump has no TLS: it would fail, or send the schema in cleartext.
        raise ScratchUnavailable(
            "the bundled pg_dump cannot use TLS, which a connection to this server needs or should use"
        )
    name = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"
    same_server_url = _with_database(source_libpq_url, name)  # before anything is created
    dump_args = _dump_args(exclude_schemas)
    if lock_wait_timeout_ms is not None:
        dump_args.append(f"--lock-wait-timeout={max(1, lock_wait_timeout_ms)}ms")
    first_reason = ""
    try:
        _create_same_server(source_libpq_url, name)
        same_server: str | None = same_server_url
    except psycopg.Error as exc:
        same_server = None
        first_reason = f"CREATE DATABASE failed: {_pg_error(exc)}"
    if same_server is not None:
        keep = False
        try:
            _copy_schema(source_libpq_url, same_server, dump_args)
            _copy_version_rows(source_libpq_url, same_server, version_table, version_table_schema)
            keep = True
        except _DumpFailed as exc:
            raise ScratchUnavailable(f"pg_dump failed: {exc}") from None
        except (_RestoreFailed, psycopg.Error) as exc:
            detail = _pg_error(exc) if isinstance(exc, psycopg.Error) else str(exc)
            first_reason = f"the schema did not restore into a new database on the same server: {detail}"
        finally:
            if not keep:
                _drop_database(source_libpq_url, name, notify)
        if keep:
            try:
                yield Scratch(same_server, name, "same_server", "")
            finally:
                _drop_database(source_libpq_url, name, notify)
            return
    notify(f"Using a private embedded server for the schema-only copy ({first_reason})")
    with _private_server(source_libpq_url, name, dump_args, version_table, version_table_schema,
                         first_reason) as url:  # fmt: skip
        yield Scratch(url, name, "private_server", first_reason)


# -- destinations -----------------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    """The same libpq URL naming another database; everything else is kept exactly as written
    (re-rendering through SQLAlchemy would decode characters libpq needs encoded)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ScratchUnavailable("expected a postgresql:// URL for the source database")
    query = _DBNAME_IN_QUERY.sub(lambda m: m.group(1) + quote(database, safe=""), parts.query)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database, safe=""), query, parts.fragment))


def _create_same_server(source: str, name: str) -> None:
    with psycopg.connect(source, autocommit=True, connect_timeout=10) as admin:
        row = admin.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_catalog.pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
        plain = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        created = False
        if row is not None:
            # The source's encoding and locale, so identifiers and literals restore exactly.
            matched = sql.SQL("{} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                plain, sql.Literal(row[0]), sql.Literal(row[1]), sql.Literal(row[2])
            )
            try:
                admin.execute(matched)
                created = True
            except psycopg.errors.InsufficientPrivilege:
                raise
            except psycopg.Error:
                pass  # e.g. a locale this server cannot use for template0: take the server default
        if not created:
            admin.execute(plain)
        try:
            _set_search_path(admin, name, _search_path(admin))
        except psycopg.Error:
            _drop_database(source, name, _quiet)
            raise


def _search_path(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT current_setting('search_path')").fetchone()
    return str(row[0]) if row else ""


def _set_search_path(admin: psycopg.Connection, database: str, search_path: str) -> None:
    """Give the copy the search_path the migrations see on the source, so unqualified names
    resolve alike (a schema-only dump does not carry ALTER DATABASE … SET)."""
    # set_config + FROM CURRENT takes the value as the server parsed it: no list re-quoting.
    admin.execute("SELECT set_config('search_path', %s, false)", (search_path,))
    admin.execute(sql.SQL("ALTER DATABASE {} SET search_path FROM CURRENT").format(sql.Identifier(database)))


def _drop_database(source: str, name: str, notify: Callable[[str], None]) -> None:
    try:
        with psycopg.connect(source, autocommit=True, connect_timeout=10) as admin:
            ident = sql.Identifier(name)
            try:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            except psycopg.errors.SyntaxError:  # before PostgreSQL 13
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
    except psycopg.Error as exc:
        notify(f"Could not drop the scratch database {name}; drop it by hand: {_pg_error(exc)}")


@contextlib.contextmanager
def _private_server(source: str, name: str, dump_args: list[str], version_table: str | None,
                    version_table_schema: str | None, first_reason: str) -> Iterator[str]:  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="dbrb-scratch-"))
    server = EmbeddedServer(root / "pgdata")
    try:
        try:
            status = server.start(_PRIVATE_SERVER_OPTIONS)
            admin_url = status.url(DEFAULT_DATABASE)
            with psycopg.connect(source, autocommit=True, connect_timeout=10) as src:
                search_path = _search_path(src)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
                _set_search_path(admin, name, search_path)
            url = status.url(name)
            _copy_schema(source, url, dump_args)
            _copy_version_rows(source, url, version_table, version_table_schema)
        except (_DumpFailed, _RestoreFailed, EmbeddedServerError, psycopg.Error) as exc:
            raise ScratchUnavailable(f"{first_reason}; a private embedded server failed too: {exc}") from None
        yield url
    finally:
        with contextlib.suppress(EmbeddedServerError, OSError):
            server.destroy()
        shutil.rmtree(root, ignore_errors=True)


# -- copying ------------------------------------------------------------------------------------


def _pattern(name: str) -> str:
    """A pg_dump name pattern matching exactly ``name`` (inside double quotes nothing is special)."""
    return '"' + name.replace('"', '""') + '"'


def _dump_args(exclude_schemas: Sequence[str]) -> list[str]:
    # Owners, grants, comments, publications… do not matter for running migrations and could
    # fail to restore (roles missing on a private server, COMMENT ON EXTENSION needs ownership).
    args = ["--schema-only", "--no-owner", "--no-privileges", "--no-comments", "--no-publications",
            "--no-subscriptions", "--no-security-labels", "--no-tablespaces", "--no-password"]  # fmt: skip
    for schema in exclude_schemas:
        args.append(f"--exclude-schema={_pattern(schema)}")
    return args


def _copy_schema(source: str, destination: str, dump_args: list[str]) -> None:
    """pg_dump --schema-only of the source streamed into psql on the destination."""
    source_info, source_env = tool_connection(source)
    dest_info, dest_env = tool_connection(destination)
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as restore_err:
        dump = subprocess.Popen(
            [str(binary("pg_dump")), *dump_args, f"--dbname={source_info}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=dump_err, env=source_env,
        )  # fmt: skip
        try:
            restore = subprocess.Popen(
                [str(binary("psql")), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
                 f"--dbname={dest_info}"],
                stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=restore_err, env=dest_env,
            )  # fmt: skip
        except OSError:
            dump.kill()
            dump.wait()
            raise
        assert dump.stdout is not None
        dump.stdout.close()  # psql holds the read end now; pg_dump sees SIGPIPE if psql stops
        try:
            restore_code = restore.wait(timeout=_TOOL_TIMEOUT)
            dump_code = dump.wait(timeout=_TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            restore.kill()
            dump.kill()
            restore.wait()
            dump.wait()
            raise _RestoreFailed(f"pg_dump | psql took longer than {_TOOL_TIMEOUT}s") from None
        if dump_code != 0 and restore_code == 0:
            raise _DumpFailed(_tail(dump_err) or f"exit code {dump_code}")
        if restore_code != 0:
            raise _RestoreFailed(_tail(restore_err) or f"psql exit code {restore_code}")
        if dump_code != 0:
            raise _DumpFailed(_tail(dump_err) or f"exit code {dump_code}")


def _tail(stream: IO[bytes], lines: int = 5) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").strip()
    return redact("\n".join(text.splitlines()[-lines:]))


def _copy_version_rows(source: str, destination: str, version_table: str | None,
                       version_table_schema: str | None) -> None:  # fmt: skip
    if not version_table:
        return
    with psycopg.connect(source, connect_timeout=10) as src:
        row = src.execute(
            """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.oid = to_regclass(CASE WHEN %s::text IS NULL THEN quote_ident(%s)
                                              ELSE quote_ident(%s) || '.' || quote_ident(%s) END)""",
            (version_table_schema, version_table, version_table_schema, version_table),
        ).fetchone()
        if row is None:
            return  # nothing applied yet: Alembic creates the table in the copy as it would here
        table = sql.Identifier(row[0], row[1])
        with (
            psycopg.connect(destination, connect_timeout=10) as dst,
            src.cursor().copy(sql.SQL("COPY {} TO STDOUT").format(table)) as out,
            dst.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(table)) as into,
        ):
            for block in out:
                into.write(block)


def _pg_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)
