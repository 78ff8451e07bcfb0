"""What every snapshot store offers, and how a store URL picks one.

A store holds snapshots as ``<id>/manifest.json`` plus data files. Files are written atomically
and the manifest is written last, so a snapshot is listed only once it is complete; a restore
needs nothing but the store (the catalog's list of snapshots is a convenience).

Store URLs: ``file:///abs/dir`` or a plain path (local directory), and
``s3://bucket/prefix?endpoint_url=...&region=...&sse=aws:kms&sse_kms_key_id=...``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

from dbrollback.errors import ConfigError
from dbrollback.snapshot.manifest import FileEntry, SnapshotManifest


@runtime_checkable
class SnapshotStore(Protocol):
    @property
    def location(self) -> str:
        """Where a snapshot lives, for display: a directory or an s3:// URL (never a secret)."""
        ...

    def probe(self) -> None:
        """Check the store can be written now (write and delete a small object); raise SnapshotError."""
        ...

    def free_bytes(self) -> int | None:
        """Space left for new snapshots, or None when the store cannot tell (S3)."""
        ...

    def write_file(self, snapshot_id: str, name: str, chunks: Iterable[bytes]) -> FileEntry: ...

    def publish(self, manifest: SnapshotManifest) -> str: ...

    def discard(self, snapshot_id: str) -> None: ...

    def delete(self, snapshot_id: str) -> None:
        """Remove a published snapshot: manifest first (it stops being listed), then its files."""
        ...

    def stale_partials(self, older_than: timedelta) -> builtins.list[str]:
        """Ids of unpublished snapshots (left by a killed capture) untouched for `older_than`."""
        ...

    def list(self) -> list[SnapshotManifest]: ...

    def load(self, snapshot_id: str) -> SnapshotManifest: ...

    def open_file(self, snapshot_id: str, name: str) -> BinaryIO: ...

    def verify(self, snapshot_id: str) -> builtins.list[str]: ...

    def snapshot_location(self, snapshot_id: str) -> str: ...


def file_problem(entry: FileEntry, size: int | None, sha256: str | None) -> str | None:
    """How a stored file (None: missing) differs from its manifest entry; None when it matches."""
    if size is None or sha256 is None:
        return f"{entry.name}: missing (expected {entry.bytes} bytes, sha256 {entry.sha256})"
    if size != entry.bytes:
        return (f"{entry.name}: size {size} bytes, expected {entry.bytes} bytes; "
                f"sha256 expected {entry.sha256}, actual {sha256}")  # fmt: skip
    if sha256 != entry.sha256:
        return f"{entry.name}: sha256 mismatch: expected {entry.sha256}, actual {sha256}"
    return None


def open_store(url: str, *, base_dir: Path | None = None) -> SnapshotStore:
    """The store named by `url`; a relative path is taken relative to `base_dir` (or the cwd)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from dbrollback.snapshot.s3 import S3Store

        if not parts.netloc:
            raise ConfigError(f"S3 store URL needs a bucket: {url!r} (expected s3://bucket/prefix)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region", "sse", "sse_kms_key_id"}
        if unknown:
            raise ConfigError(f"Unknown S3 store option(s) {', '.join(sorted(unknown))} in store URL")
        return S3Store(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
            sse=query.get("sse"),
            sse_kms_key_id=query.get("sse_kms_key_id"),
        )
    from dbrollback.snapshot.local import LocalStore

    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file:// store URL must be local: {url!r}")
        path = Path(unquote(parts.path))
    elif parts.scheme == "" or (len(parts.scheme) == 1 and url[1:3] in (":\\", ":/")):
        path = Path(url)
    else:
        raise ConfigError(
            f"Unsupported store URL {url!r}: use file://DIR, a directory path, or s3://bucket/prefix"
        )
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return LocalStore(path)
