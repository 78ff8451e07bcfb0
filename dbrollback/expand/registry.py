"""Open expansions in the catalog (dbrollback.expansions): one row per helper call in a revision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dbrollback.errors import ConfigError
from dbrollback.snapshot.names import QualifiedName

OPEN, CONTRACTED, ABORTED = "open", "contracted", "aborted"


@dataclass
class Expansion:
    id: int
    revision: str | None
    run_id: int | None
    kind: str
    table: QualifiedName
    spec: dict[str, Any]
    status: str
    backfill_id: int | None
    created_at: datetime
    closed_at: datetime | None

    @property
    def table_name(self) -> str:
        return f"{self.table[0]}.{self.table[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "run_id": self.run_id,
            "kind": self.kind,
            "table": self.table_name,
            "status": self.status,
            "backfill_id": self.backfill_id,
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "spec": self.spec,
        }


def _expansion(row: dict[str, Any]) -> Expansion:
    return Expansion(
        id=row["id"],
        revision=row["revision"],
        run_id=row["run_id"],
        kind=row["kind"],
        table=(row["table_schema"], row["table_name"]),
        spec=row["spec"],
        status=row["status"],
        backfill_id=row["backfill_id"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
    )


def record_expansion(
    conn: psycopg.Connection, *, revision: str | None, kind: str, table: QualifiedName, spec: dict[str, Any]
) -> int:
    """Insert an open expansion; the run journaled as running (if any) is the one opening it."""
    row = conn.execute(
        """INSERT INTO dbrollback.expansions (revision, run_id, kind, table_schema, table_name, spec)
           VALUES (%s, (SELECT id FROM dbrollback.runs WHERE status = 'running' ORDER BY id DESC LIMIT 1),
                   %s, %s, %s, %s)
           RETURNING id""",
        (revision, kind, table[0], table[1], Jsonb(spec)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def set_spec(
    conn: psycopg.Connection, expansion_id: int, spec: dict[str, Any], backfill_id: int | None = None
) -> None:
    conn.execute(
        "UPDATE dbrollback.expansions SET spec = %s, backfill_id = coalesce(%s, backfill_id) WHERE id = %s",
        (Jsonb(spec), backfill_id, expansion_id),
    )


def list_expansions(
    conn: psycopg.Connection,
    *,
    revision: str | None = None,
    statuses: tuple[str, ...] = (OPEN,),
    ids: list[int] | None = None,
    exact: bool = False,
) -> list[Expansion]:
    """Expansions in these statuses, oldest first; of one revision if given (a unique prefix of
    one unless ``exact``)."""
    if not _catalog_has_expansions(conn):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT * FROM dbrollback.expansions
               WHERE status = ANY(%s)
                 AND (%s::text IS NULL OR starts_with(revision, %s))
                 AND (%s::bigint[] IS NULL OR id = ANY(%s))
               ORDER BY id""",
            (list(statuses), revision, revision, ids, ids),
        ).fetchall()
    found = [_expansion(r) for r in rows]
    if revision is not None and (exact or any(e.revision == revision for e in found)):
        found = [e for e in found if e.revision == revision]  # an exact id is never a prefix of another
    matched = sorted({e.revision or "" for e in found})
    if revision is not None and len(matched) > 1:
        raise ConfigError(f"Revision prefix {revision!r} is ambiguous: {', '.join(matched)}.")
    return found


def mark_closed(conn: psycopg.Connection, expansion_id: int, status: str, by: str) -> None:
    conn.execute(
        """UPDATE dbrollback.expansions SET status = %s, closed_at = clock_timestamp(), closed_by = %s
           WHERE id = %s""",
        (status, by, expansion_id),
    )


def _catalog_has_expansions(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('dbrollback.expansions') IS NOT NULL").fetchone()
    return bool(row and row[0])
