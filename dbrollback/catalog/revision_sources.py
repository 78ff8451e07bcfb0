"""The source of every revision `upgrade` applied, kept in the catalog.

A rollback needs a revision's ``downgrade()`` even after the application (and with it the
checkout holding the newer revision files) was rolled back first. Rows are written inside the
revision's own transaction, so a revision is applied if and only if its source is stored.
One row per distinct source text: a revision file edited after it was applied gets a second row;
applying an already stored text again only moves its ``last_*`` columns, so "newest" means the text
applied most recently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class RevisionSource:
    source: str
    sha256: str
    path: str


def read_revision_file(path: str | Path) -> RevisionSource | None:
    """The file's text and the sha256 of its bytes; None for sourceless (.pyc) revisions."""
    file = Path(path)
    if file.suffix != ".py":
        return None
    data = file.read_bytes()
    # Python source is UTF-8 unless it declares otherwise; a stray byte must not stop the upgrade,
    # and the hash stays that of the file as it is on disk.
    return RevisionSource(data.decode("utf-8", errors="replace"), hashlib.sha256(data).hexdigest(), str(file))


def record_revision_source(conn: psycopg.Connection, revision: str, found: RevisionSource,
                           run_id: int) -> None:  # fmt: skip
    """Store ``found`` for ``revision``; the same text stored before is only marked applied again."""
    conn.execute(
        """INSERT INTO dbrollback.revision_sources
               (revision, sha256, path, source, first_run_id, last_run_id)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (revision, sha256) DO UPDATE
               SET last_run_id = EXCLUDED.last_run_id, last_applied_at = clock_timestamp()""",
        (revision, found.sha256, found.path, found.source.replace("\x00", "\ufffd"), run_id, run_id),
    )


def stored_revision_source(conn: psycopg.Connection, revision: str) -> tuple[str, str, str] | None:
    """(source, sha256, path) of the newest stored source of ``revision``, or None."""
    row = conn.execute(
        """SELECT source, sha256, path FROM dbrollback.revision_sources WHERE revision = %s
           ORDER BY last_applied_at DESC, sha256 LIMIT 1""",
        (revision,),
    ).fetchone()
    return (str(row[0]), str(row[1]), str(row[2])) if row else None
