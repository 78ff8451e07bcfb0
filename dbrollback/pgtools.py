"""Running PostgreSQL's client programs (psql, pg_dump) from the embedded wheel safely.

The password never goes on a command line (where `ps` shows it): it travels in PGPASSWORD.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def tool_connection(url: str) -> tuple[str, dict[str, str]]:
    """A conninfo string without the password, and an environment carrying it instead."""
    params = conninfo_to_dict(url)
    params.setdefault("fallback_application_name", "dbrollback")
    password = params.pop("password", None)
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGCLIENTENCODING"] = "UTF8"
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env
