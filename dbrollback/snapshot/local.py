"""A snapshot store on the local file system.

Layout under ``root``::

    <id>/manifest.json      written last; a snapshot exists only once this file exists
    <id>/<n>.copy.zst       data files (mode 0600)
    <id>/.partial/          temporary names while writing; removed by publish()

Every write goes to a temporary name, is fsynced, then renamed into place (atomic on POSIX), and
the directory is fsynced. A crash therefore leaves either nothing or a complete file, and a
snapshot whose manifest was never published is invisible to list().
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from dbrollback.errors import SnapshotCorrupt, SnapshotError, StoreUnavailable
from dbrollback.snapshot.manifest import FileEntry, SnapshotManifest, parse_manifest
from dbrollback.snapshot.store import file_problem

MANIFEST = "manifest.json"
PARTIAL = ".partial"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_READ_CHUNK = 1 << 20


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value) or value in (".", ".."):
        raise SnapshotError(f"Invalid snapshot {kind}: {value!r}", **{kind: value})
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(_READ_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    @property
    def location(self) -> str:
        return str(self.root)

    def snapshot_location(self, snapshot_id: str) -> str:
        return str(self.snapshot_dir(snapshot_id))

    def probe(self) -> None:
        """Fail now, with a clear message, if snapshots cannot be written here (permissions, space)."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.root / f".probe-{secrets.token_hex(4)}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"dbrollback store probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StoreUnavailable(f"Snapshot store {self.root} is not writable: {reason}") from None

    def free_bytes(self) -> int | None:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free

    # -- paths --------------------------------------------------------------------------------
    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.root / _check("id", snapshot_id, _ID_RE)

    def _partial_dir(self, snapshot_id: str) -> Path:
        directory = self.snapshot_dir(snapshot_id) / PARTIAL
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory

    # -- writing ------------------------------------------------------------------------------
    def write_file(self, snapshot_id: str, name: str, chunks: Iterable[bytes]) -> FileEntry:
        """Stream chunks into the snapshot's file `name` (atomically); returns its size and sha256."""
        _check("name", name, _NAME_RE)
        final = self.snapshot_dir(snapshot_id) / name
        if final.exists():
            raise SnapshotError(f"Snapshot {snapshot_id} already has a file {name}", id=snapshot_id)
        tmp = self._partial_dir(snapshot_id) / f"{name}.{secrets.token_hex(4)}.tmp"
        digest, size = hashlib.sha256(), 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb", closefd=False) as fh:
                for chunk in chunks:
                    if not chunk:
                        continue
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return FileEntry(name=name, bytes=size, sha256=digest.hexdigest())

    def publish(self, manifest: SnapshotManifest) -> str:
        """Write manifest.json atomically, last: from now on the snapshot is listed."""
        directory = self.snapshot_dir(manifest.id)
        for table in manifest.tables:
            for entry in table.files:
                if not (directory / entry.name).is_file():
                    raise SnapshotError(
                        f"Cannot publish snapshot {manifest.id}: file {entry.name} is missing",
                        id=manifest.id,
                    )
        data = manifest.model_dump_json(indent=2).encode() + b"\n"
        self.write_file(manifest.id, MANIFEST, [data])
        shutil.rmtree(directory / PARTIAL, ignore_errors=True)
        _fsync_dir(directory)
        _fsync_dir(self.root)
        return str(directory)

    def delete(self, snapshot_id: str) -> None:
        """Remove a published snapshot: the manifest goes first, so it is never half-listed."""
        directory = self.snapshot_dir(snapshot_id)
        manifest = directory / MANIFEST
        if not manifest.is_file():
            raise SnapshotError(f"No snapshot {snapshot_id} in {self.root}", id=snapshot_id)
        manifest.unlink()
        _fsync_dir(directory)
        shutil.rmtree(directory, ignore_errors=True)
        _fsync_dir(self.root)

    def discard(self, snapshot_id: str) -> None:
        """Remove an unpublished (partial) snapshot; a published one is never touched here."""
        directory = self.snapshot_dir(snapshot_id)
        if (directory / MANIFEST).exists():
            raise SnapshotError(f"Snapshot {snapshot_id} is published; not discarding it", id=snapshot_id)
        shutil.rmtree(directory, ignore_errors=True)

    def stale_partials(self, older_than: timedelta) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than.total_seconds()
        stale = []
        for child in sorted(self.root.iterdir()):
            if not (child.is_dir() and _ID_RE.fullmatch(child.name)) or (child / MANIFEST).exists():
                continue
            newest = max([child.stat().st_mtime] + [p.stat().st_mtime for p in child.rglob("*")])
            if newest < cutoff:
                stale.append(child.name)
        return stale

    # -- reading ------------------------------------------------------------------------------
    def list(self) -> list[SnapshotManifest]:
        """Published snapshots, oldest first; directories without a manifest are ignored."""
        if not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and _ID_RE.fullmatch(child.name) and (child / MANIFEST).is_file():
                with contextlib.suppress(SnapshotCorrupt):  # damaged: `show`/`verify ID` say why
                    found.append(self.load(child.name))
        return sorted(found, key=lambda m: (m.created_at, m.id))

    def load(self, snapshot_id: str) -> SnapshotManifest:
        path = self.snapshot_dir(snapshot_id) / MANIFEST
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"No snapshot {snapshot_id} in {self.root}", id=snapshot_id) from None
        return parse_manifest(text, snapshot_id)

    def open_file(self, snapshot_id: str, name: str) -> BinaryIO:
        path = self.snapshot_dir(snapshot_id) / _check("name", name, _NAME_RE)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise SnapshotCorrupt(
                f"Snapshot {snapshot_id}: file {name} is missing", id=snapshot_id, file=name
            ) from None

    def verify(self, snapshot_id: str) -> builtins.list[str]:
        """Re-read every data file; one message per problem (empty list: all files intact)."""
        manifest = self.load(snapshot_id)
        directory = self.snapshot_dir(snapshot_id)
        problems: builtins.list[str] = []
        for table in manifest.tables:
            for entry in table.files:
                path = directory / entry.name
                size, sha = _hash_file(path) if path.is_file() else (None, None)
                problem = file_problem(entry, size, sha)
                if problem:
                    problems.append(problem)
        return problems
