"""The schema of the database as an upgrade run found it, so a rollback can prove it got back there.

Recorded once per run, just before its first revision, with the same normalised reader `dbrollback
check` compares schemas with (:func:`dbrollback.check.schema.capture_schema`): the whole database
minus dbrollback's own schema and the Alembic version table. It is a few catalog queries (~25 ms),
cheap next to any snapshot; the tables the run snapshots are listed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dbrollback.check.schema import SchemaObject, SchemaSnapshot, capture_schema
from dbrollback.check.tables import VersionTable
from dbrollback.snapshot.names import QualifiedName

FORMAT = "check-schema-v1"


@dataclass(frozen=True)
class RunSchema:
    run_id: int
    captured_at: datetime
    tables: list[QualifiedName]  # the tables the run was going to snapshot
    schema: SchemaSnapshot


def schema_to_json(schema: SchemaSnapshot) -> list[dict[str, Any]]:
    return [
        {"kind": o.kind, "name": o.name, "parent": o.parent, "attributes": [list(a) for a in o.attributes]}
        for _, o in sorted(schema.objects.items())
    ]


def schema_from_json(data: list[dict[str, Any]]) -> SchemaSnapshot:
    objects = {
        (o["kind"], o["name"]): SchemaObject(
            o["kind"], o["name"], o["parent"], tuple((str(k), str(v)) for k, v in o["attributes"])
        )
        for o in data
    }
    return SchemaSnapshot(objects)


def record_run_schema(conn: psycopg.Connection, run_id: int, version_table: tuple[str | None, str],
                      tables: list[QualifiedName], *, lock_timeout: str = "0") -> SchemaSnapshot:  # fmt: skip
    """Read the schema now and store it for ``run_id``, in one transaction of ``conn`` (autocommit).

    ``version_table`` is Alembic's (schema or None, name), left out like dbrollback's own schema.
    Deparsing defaults, index expressions, views and trigger conditions takes ACCESS SHARE locks:
    ``lock_timeout`` (PostgreSQL syntax, "0" = wait) bounds the wait for a table someone holds
    exclusively (LockNotAvailable).
    """
    with conn.transaction():
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (lock_timeout,))
        schema = capture_schema(conn, VersionTable(version_table[1], version_table[0]))
        conn.execute(
            "INSERT INTO dbrollback.run_schemas (run_id, format, tables, schema) VALUES (%s, %s, %s, %s)",
            (run_id, FORMAT, Jsonb([list(t) for t in tables]), Jsonb(schema_to_json(schema))),
        )
    return schema


def run_schema(conn: psycopg.Connection, run_id: int) -> RunSchema | None:
    """The schema recorded before ``run_id`` started, or None (no record, or an unknown format)."""
    row = conn.execute(
        "SELECT captured_at, format, tables, schema FROM dbrollback.run_schemas WHERE run_id = %s", (run_id,)
    ).fetchone()
    if row is None or row[1] != FORMAT:
        return None
    captured_at, _, tables, schema = row
    return RunSchema(run_id, captured_at, [(str(s), str(t)) for s, t in tables], schema_from_json(schema))
