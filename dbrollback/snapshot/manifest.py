"""The manifest of a snapshot, stored as ``manifest.json`` next to its data files.

A manifest names the database only by its name: never a URL, user, host or password.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

FORMAT_VERSION = 2


class ColumnInfo(BaseModel):
    name: str
    type: str = Field(description="format_type() text, e.g. 'numeric(10,2)' or 'integer[]'")
    nullable: bool
    default: str | None = Field(
        default=None, description="pg_get_expr() of the default, or of the generation expression"
    )
    generated: bool = False


class FileEntry(BaseModel):
    name: str
    bytes: int
    sha256: str


class TableManifest(BaseModel):
    schema_name: str
    table_name: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    row_count: int
    checksum: str
    files: list[FileEntry]
    note: str = ""
    # How the files encode rows: COPY text (UTF-8) since format 2; binary COPY before.
    copy_format: Literal["text", "binary"] = "binary"

    @property
    def copy_columns(self) -> list[str]:
        """The columns present in the COPY data, in order: all but generated ones."""
        return [c.name for c in self.columns if not c.generated]


class SnapshotManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    id: str
    created_at: datetime
    run_id: int | None = None
    revision: str | None = None
    label: str | None = None
    server_version: str
    database: str
    database_id: str | None = Field(default=None, description="dbrollback.identity of the database")
    tables: list[TableManifest]
    expires_at: datetime | None = None


def parse_manifest(data: bytes, snapshot_id: str) -> SnapshotManifest:
    """Read a stored manifest.json; damage (bad JSON, missing fields, wrong id) is SnapshotCorrupt."""
    from pydantic import ValidationError

    from dbrollback.errors import SnapshotCorrupt

    try:
        manifest = SnapshotManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id}: manifest.json is damaged ({where}: {first['msg']})",
            id=snapshot_id, file="manifest.json",
        ) from None  # fmt: skip
    if manifest.format_version > FORMAT_VERSION:
        from dbrollback.errors import SnapshotError

        raise SnapshotError(
            f"Snapshot {snapshot_id} was written by a newer dbrollback (manifest format "
            f"{manifest.format_version}; this one reads up to {FORMAT_VERSION}); upgrade dbrollback",
            id=snapshot_id,
        )
    if manifest.id != snapshot_id:
        raise SnapshotCorrupt(
            f"Snapshot {snapshot_id}: manifest.json belongs to snapshot {manifest.id}",
            id=snapshot_id, file="manifest.json",
        )  # fmt: skip
    return manifest
