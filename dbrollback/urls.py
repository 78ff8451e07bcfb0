"""Database URL parsing: accept the spellings users type, and never show a password."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from dbrollback.errors import ConfigError

if TYPE_CHECKING:  # SQLAlchemy is imported when a URL is parsed: `--help` and redact() stay fast
    from sqlalchemy.engine import URL

_POSTGRES_SCHEMES = {"postgresql", "postgres"}
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")
_PASSWORD_IN_DSN = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.IGNORECASE)
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask every password that looks like part of a URL or a libpq DSN inside ``text``."""
    text = _PASSWORD_IN_URL.sub(r"\g<head>***", text)
    text = _PASSWORD_IN_QUERY.sub(r"\g<head>***", text)
    return _PASSWORD_IN_DSN.sub(r"\g<head>***", text)


def parse_database_url(raw: str) -> URL:
    """Parse ``postgresql://``, ``postgres://`` or ``postgresql+psycopg://`` into a psycopg URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise ConfigError(
            f"Could not parse database URL {redact(raw)!r}; expected postgresql://user@host/dbname",
            url=redact(raw),
        ) from None
    backend = url.drivername.split("+", 1)[0]
    if backend not in _POSTGRES_SCHEMES:
        raise ConfigError(
            f"dbrollback requires PostgreSQL; {redact(raw)!r} is a {backend} URL",
            url=redact(raw),
        )
    return url.set(drivername="postgresql+psycopg")


def sqlalchemy_url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def libpq_url(url: URL) -> str:
    """The same URL in libpq's spelling, for psycopg.connect and command-line tools.

    Built by hand rather than with SQLAlchemy's renderer, which leaves spaces in user names and
    passwords unencoded (libpq rejects those).
    """
    netloc = ""
    if url.username is not None:
        netloc = quote(url.username, safe="")
        if url.password is not None:
            netloc += ":" + quote(str(url.password), safe="")
        netloc += "@"
    if url.host:
        netloc += f"[{url.host}]" if ":" in url.host and not url.host.startswith("[") else url.host
    if url.port is not None:
        netloc += f":{url.port}"
    path = "/" + quote(url.database, safe="") if url.database else "/"
    query = urlencode(sorted(url.query.items()), doseq=True, quote_via=quote)
    return f"postgresql://{netloc}{path}" + (f"?{query}" if query else "")


def display_url(url: URL | str) -> str:
    if isinstance(url, str):
        return redact(url)
    return url.set(drivername="postgresql").render_as_string(hide_password=True)
