"""Stream a captured table file back into a table with binary COPY (the basis for restore)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import psycopg
import zstandard
from psycopg import sql

from dbrollback.errors import SnapshotCorrupt
from dbrollback.snapshot.manifest import TableManifest
from dbrollback.snapshot.store import SnapshotStore

_READ_CHUNK = 1 << 20


def copy_in_query(schema: str, table: str, columns: list[str], copy_format: str = "text",
                  freeze: bool = False) -> sql.Composed:  # fmt: skip
    options = "FORMAT binary" if copy_format == "binary" else "FORMAT text, ENCODING 'UTF8'"
    if freeze:  # only for a table created or truncated in this (sub)transaction
        options += ", FREEZE"
    return sql.SQL("COPY {}.{} ({}) FROM STDIN ({})").format(
        sql.Identifier(schema),
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(options),
    )


def load_table_copy(
    conn: psycopg.Connection,
    store: SnapshotStore,
    snapshot_id: str,
    table_manifest: TableManifest,
    target_schema: str,
    target_table: str,
    *,
    on_bytes: Callable[[int], None] | None = None,
    freeze: bool = False,
) -> int:
    """COPY the table's captured rows into target_schema.target_table; returns the rows loaded.

    The target must have the captured (non-generated) columns with the same types. The file's
    sha256 and the zstd frame are checked while streaming; on a mismatch the COPY is aborted, so
    a corrupt file loads nothing (within the caller's transaction, or the COPY's own).

    `on_bytes(n)` is called while the data streams, after each block is sent to the server, with
    the number of *stored* (compressed) file bytes that block consumed. They add up to the sum of
    ``table_manifest.files[*].bytes``, which callers can use as the total of a progress bar (binary
    COPY gives no per-row count until it ends, and the decompressed size is not recorded).
    """
    columns = table_manifest.copy_columns
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("SET LOCAL lc_monetary = 'C'")  # money is read as it was written
    total = 0
    # One COPY per file: each file is a complete binary COPY stream (a table read in parallel key
    # ranges has one file per range).
    for entry in table_manifest.files:
        with conn.cursor() as cur:
            query = copy_in_query(target_schema, target_table, columns, table_manifest.copy_format, freeze)
            with cur.copy(query) as copy:
                digest, size = hashlib.sha256(), 0
                decompressor = zstandard.ZstdDecompressor().decompressobj()
                with store.open_file(snapshot_id, entry.name) as fh:
                    while block := fh.read(_READ_CHUNK):
                        digest.update(block)
                        size += len(block)
                        try:
                            out = decompressor.decompress(block)
                        except zstandard.ZstdError as exc:
                            message = f"{entry.name}: corrupt zstd data: {exc}"
                            raise SnapshotCorrupt(message, file=entry.name) from None
                        if out:
                            copy.write(out)
                        if on_bytes is not None:
                            on_bytes(len(block))
                if size != entry.bytes or digest.hexdigest() != entry.sha256:
                    raise SnapshotCorrupt(
                        f"{entry.name}: sha256 expected {entry.sha256}, actual {digest.hexdigest()}",
                        file=entry.name, expected=entry.sha256, actual=digest.hexdigest(),
                    )  # fmt: skip
                if not decompressor.eof:
                    raise SnapshotCorrupt(f"{entry.name}: truncated zstd data", file=entry.name)
            total += max(cur.rowcount, 0)
    return total
