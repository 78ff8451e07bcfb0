"""A snapshot store in an S3 bucket (AWS S3 or an S3-compatible store such as MinIO).

Layout under ``s3://bucket/prefix``::

    <prefix>/<id>/manifest.json     put last; a snapshot exists only once this object exists
    <prefix>/<id>/<n>.copy.zst      data files, streamed with a multipart upload

S3 never shows a partly written object: a multipart upload becomes visible only when it is
completed, and is aborted on any error. The manifest is put only after every data file was
checked to exist with the right size, so list() never returns a partial snapshot.

Error messages name ``s3://bucket/prefix`` and the S3 error code; they never contain credentials
(only the error code and the server's short message are used, never the raw request or response).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

import boto3
from botocore import exceptions as bx
from botocore.config import Config

from dbrollback.errors import ConfigError, SnapshotCorrupt, SnapshotError, StoreUnavailable
from dbrollback.snapshot.local import _ID_RE, _NAME_RE, MANIFEST, _check
from dbrollback.snapshot.manifest import FileEntry, SnapshotManifest, parse_manifest
from dbrollback.snapshot.store import file_problem
from dbrollback.urls import redact

PART_SIZE = 8 << 20
# S3 allows at most 10,000 parts. Parts grow by PART_SIZE every 1,000 parts (8 MiB … 80 MiB), so
# one file can reach ~430 GiB while at most one part (≤ 80 MiB) is held in memory.
_PARTS_PER_STEP = 1000
_MAX_PARTS = 10_000
_READ_CHUNK = 1 << 20
_DELETE_BATCH = 1000
_SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
_BOTO_ERRORS = (bx.BotoCoreError, bx.ClientError)

# Client errors meaning "this store cannot be used now" (exit 3) rather than a bad request.
_UNAVAILABLE_CODES = {
    "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidBucketName", "SlowDown",
    "ServiceUnavailable", "InternalError", "RequestTimeout", "403", "301",
}  # fmt: skip
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_FRIENDLY = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied",
    "403": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "the credentials were rejected",
    "SignatureDoesNotMatch": "the credentials were rejected",
    "ExpiredToken": "the credentials have expired",
    "PermanentRedirect": "the bucket is in another region (set ?region= in the store URL)",
    "301": "the bucket is in another region (set ?region= in the store URL)",
}


def part_size(part_number: int) -> int:
    """Size of part `part_number` (1-based) of a multipart upload."""
    return PART_SIZE * (1 + (part_number - 1) // _PARTS_PER_STEP)


class _S3Reader(io.RawIOBase):
    """A raw stream over a GetObject body that reports S3/network failures as dbrollback errors."""

    def __init__(self, body: Any, store: S3Store, what: str) -> None:
        super().__init__()
        self._body, self._store, self._what = body, store, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except _BOTO_ERRORS as exc:
            raise self._store._error(exc, f"read {self._what}") from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _Multipart:
    """One multipart upload, created lazily with the first part."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store, self.key = store, key
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    @property
    def next_number(self) -> int:
        return len(self.parts) + 1

    def send(self, body: bytes) -> None:
        store = self.store
        if self.next_number > _MAX_PARTS:
            raise SnapshotError(f"S3 store {store.location}: {self.key} is too large for one S3 object")
        if self.upload_id is None:
            self.upload_id = store.client.create_multipart_upload(
                Bucket=store.bucket, Key=self.key, **store._sse_args()
            )["UploadId"]
        response = store.client.upload_part(
            Bucket=store.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=self.next_number, Body=body
        )
        self.parts.append({"ETag": response["ETag"], "PartNumber": self.next_number})

    def complete(self) -> None:
        store = self.store
        store.client.complete_multipart_upload(
            Bucket=store.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )
        self.upload_id = None

    def abort(self) -> None:
        """Drop the uploaded parts (they would be billed forever); the original error matters more."""
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
            self.upload_id = None


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ConfigError("S3 store needs a bucket name")
        if sse_kms_key_id and not sse:
            sse = "aws:kms"  # a KMS key implies KMS encryption
        if sse is not None and sse not in _SSE_VALUES:
            raise ConfigError(
                f"Unknown S3 server-side encryption {sse!r}; use one of {', '.join(_SSE_VALUES)}"
            )
        if sse_kms_key_id and sse == "AES256":
            raise ConfigError(f"sse_kms_key_id needs sse=aws:kms, not sse={sse}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.client = client if client is not None else self._make_client()

    def _make_client(self) -> Any:
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=64,  # capture may write from one thread per --jobs
            # S3-compatible stores (MinIO...) are usually reached by path, not bucket.host names
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        try:
            return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
        except ValueError as exc:  # botocore's "Invalid endpoint: ..."
            raise ConfigError(f"Invalid S3 store settings: {redact(str(exc))}") from None
        except bx.BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
            raise self._error(exc, "create an S3 client") from None

    # -- names ------------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def snapshot_location(self, snapshot_id: str) -> str:
        return f"s3://{self.bucket}/{self._snapshot_prefix(snapshot_id)}".rstrip("/")

    def _snapshot_prefix(self, snapshot_id: str) -> str:
        return f"{self._base}{_check('id', snapshot_id, _ID_RE)}/"

    def _key(self, snapshot_id: str, name: str) -> str:
        return self._snapshot_prefix(snapshot_id) + _check("name", name, _NAME_RE)

    def _sse_args(self) -> dict[str, str]:
        args = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    # -- errors -----------------------------------------------------------------------------------
    def _endpoint(self) -> str:
        return redact(self.endpoint_url) if self.endpoint_url else f"S3 in region {self.region}"

    def _error(self, exc: BaseException, action: str) -> SnapshotError:
        """A dbrollback error for a botocore failure: the code and a safe reason, never a secret."""
        unavailable = True
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            server = redact(str(error.get("Message") or "")).strip()[:300]
            friendly = _FRIENDLY.get(code)
            reason = f"{friendly} ({code}{': ' + server if server else ''})" if friendly else (
                f"{code}: {server}" if server else code
            )  # fmt: skip
            unavailable = code in _UNAVAILABLE_CODES or code.startswith("KMS.") or status >= 500
        elif isinstance(exc, bx.NoCredentialsError):
            code = "NoCredentialsError"
            reason = (
                "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or use an instance role)"
            )
        elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            code, reason = type(exc).__name__, f"cannot connect to {self._endpoint()}"
        elif isinstance(exc, bx.ReadTimeoutError):
            code, reason = type(exc).__name__, f"timed out waiting for {self._endpoint()}"
        else:
            code, reason = type(exc).__name__, redact(str(exc)) or type(exc).__name__
        cls = StoreUnavailable if unavailable else SnapshotError
        return cls(f"S3 store {self.location}: cannot {action}: {reason}", store=self.location, code=code)

    @staticmethod
    def _not_found(exc: BaseException) -> bool:
        return (
            isinstance(exc, bx.ClientError) and exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES
        )

    def _head(self, key: str, what: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when it does not exist."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except _BOTO_ERRORS as exc:
            if self._not_found(exc):
                return None
            raise self._error(exc, f"check {what}") from None

    # -- writing ----------------------------------------------------------------------------------
    def probe(self) -> None:
        """Fail now, with a clear message, if snapshots cannot be written here (put + delete)."""
        key = f"{self._base}.probe-{secrets.token_hex(4)}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"dbrollback store probe\n",
                                   **self._sse_args())  # fmt: skip
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            error = self._error(exc, "write a test object")
            raise StoreUnavailable(error.message, **error.fields) from None

    def write_file(self, snapshot_id: str, name: str, chunks: Iterable[bytes]) -> FileEntry:
        """Stream chunks into the object `name` (multipart, 8 MiB parts); returns size and sha256."""
        key = self._key(snapshot_id, name)
        if self._head(key, f"file {name}") is not None:
            raise SnapshotError(f"Snapshot {snapshot_id} already has a file {name}", id=snapshot_id)
        digest, size = hashlib.sha256(), 0
        buffer = bytearray()  # at most one part (plus one chunk) is held in memory
        upload = _Multipart(self, key)
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                buffer += chunk
                digest.update(chunk)
                size += len(chunk)
                while len(buffer) >= (want := part_size(upload.next_number)):
                    upload.send(bytes(buffer[:want]))
                    del buffer[:want]
            sha256 = digest.hexdigest()
            if upload.upload_id is None:  # small file: one plain PUT
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer),
                                       Metadata={"sha256": sha256}, **self._sse_args())  # fmt: skip
            else:
                if buffer:
                    upload.send(bytes(buffer))
                # The sha256 lives in the manifest; multipart objects carry no metadata copy of it
                # (setting metadata after the upload would cost a server-side copy of the object).
                upload.complete()
        except BaseException as exc:
            upload.abort()
            if isinstance(exc, _BOTO_ERRORS):
                raise self._error(exc, f"write {name} of snapshot {snapshot_id}") from None
            raise
        return FileEntry(name=name, bytes=size, sha256=sha256)

    def publish(self, manifest: SnapshotManifest) -> str:
        """Put manifest.json, last, once every data file exists with its size: now it is listed."""
        for table in manifest.tables:
            for entry in table.files:
                head = self._head(self._key(manifest.id, entry.name), f"file {entry.name}")
                if head is None:
                    raise SnapshotError(
                        f"Cannot publish snapshot {manifest.id}: file {entry.name} is missing",
                        id=manifest.id,
                    )
                if int(head.get("ContentLength", -1)) != entry.bytes:
                    raise SnapshotError(
                        f"Cannot publish snapshot {manifest.id}: file {entry.name} has "
                        f"{head.get('ContentLength')} bytes, expected {entry.bytes}",
                        id=manifest.id,
                    )
        key = self._key(manifest.id, MANIFEST)
        if self._head(key, MANIFEST) is not None:
            raise SnapshotError(f"Snapshot {manifest.id} already has a file {MANIFEST}", id=manifest.id)
        data = manifest.model_dump_json(indent=2).encode() + b"\n"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json",
                                   Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                                   **self._sse_args())  # fmt: skip
        except _BOTO_ERRORS as exc:
            raise self._error(exc, f"publish snapshot {manifest.id}") from None
        return self.snapshot_location(manifest.id)

    def _delete_prefix(self, prefix: str, what: str) -> None:
        try:
            keys: builtins.list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
                result = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if result.get("Errors"):
                    first = result["Errors"][0]
                    raise SnapshotError(
                        f"S3 store {self.location}: cannot {what}: {len(result['Errors'])} object(s) not "
                        f"deleted, e.g. {first.get('Key')} ({first.get('Code')})",
                        store=self.location, code=first.get("Code"),
                    )  # fmt: skip
        except _BOTO_ERRORS as exc:
            raise self._error(exc, what) from None

    def delete(self, snapshot_id: str) -> None:
        """Remove a published snapshot: the manifest goes first, so it is never half-listed."""
        key = self._key(snapshot_id, MANIFEST)
        if self._head(key, MANIFEST) is None:
            raise SnapshotError(f"No snapshot {snapshot_id} in {self.location}", id=snapshot_id)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, f"delete snapshot {snapshot_id}") from None
        self._delete_prefix(self._snapshot_prefix(snapshot_id), f"delete snapshot {snapshot_id}")

    def discard(self, snapshot_id: str) -> None:
        """Remove an unpublished (partial) snapshot; a published one is never touched here."""
        if self._head(self._key(snapshot_id, MANIFEST), MANIFEST) is not None:
            raise SnapshotError(f"Snapshot {snapshot_id} is published; not discarding it", id=snapshot_id)
        self._abort_uploads(self._snapshot_prefix(snapshot_id))
        self._delete_prefix(self._snapshot_prefix(snapshot_id), f"discard snapshot {snapshot_id}")

    def free_bytes(self) -> int | None:
        return None  # buckets have no fixed size

    def stale_partials(self, older_than: timedelta) -> builtins.list[str]:
        cutoff = datetime.now(timezone.utc) - older_than
        newest: dict[str, datetime] = {}
        published: set[str] = set()

        def seen(key: str, when: datetime) -> None:
            snapshot_id, _, name = key[len(self._base) :].partition("/")
            if not name or not _ID_RE.fullmatch(snapshot_id):
                return
            if name == MANIFEST:
                published.add(snapshot_id)
            newest[snapshot_id] = max(newest.get(snapshot_id, when), when)

        try:
            for page in self._pages("list_objects_v2", self._base):
                for obj in page.get("Contents", []):
                    seen(obj["Key"], obj["LastModified"])
            # An upload still in progress counts as activity.
            for page in self._pages("list_multipart_uploads", self._base):
                for upload in page.get("Uploads", []):
                    seen(upload["Key"], upload["Initiated"])
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "list unpublished snapshots") from None
        return sorted(s for s, when in newest.items() if s not in published and when < cutoff)

    def _pages(self, operation: str, prefix: str) -> Iterable[dict[str, Any]]:
        return self.client.get_paginator(operation).paginate(Bucket=self.bucket, Prefix=prefix)

    def _abort_uploads(self, prefix: str) -> None:
        """Abort multipart uploads left open by a killed writer (their parts cost storage)."""
        try:
            for page in self._pages("list_multipart_uploads", prefix):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])  # fmt: skip
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "abort unfinished uploads") from None

    # -- reading ----------------------------------------------------------------------------------
    def list(self) -> builtins.list[SnapshotManifest]:
        """Published snapshots, oldest first; prefixes without a manifest are ignored."""
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._base, Delimiter="/"
            )
            ids = [
                p["Prefix"][len(self._base) : -1] for page in pages for p in page.get("CommonPrefixes", [])
            ]
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "list snapshots") from None
        for snapshot_id in sorted(ids):
            if _ID_RE.fullmatch(snapshot_id) and snapshot_id not in (".", ".."):
                with contextlib.suppress(SnapshotCorrupt):  # damaged: `show`/`verify ID` say why
                    manifest = self._load(snapshot_id)
                    if manifest is not None:
                        found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.id))

    def _load(self, snapshot_id: str) -> SnapshotManifest | None:
        key = self._key(snapshot_id, MANIFEST)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                text = body.read()
        except _BOTO_ERRORS as exc:
            if self._not_found(exc):
                return None
            raise self._error(exc, f"read the manifest of snapshot {snapshot_id}") from None
        return parse_manifest(text, snapshot_id)

    def load(self, snapshot_id: str) -> SnapshotManifest:
        manifest = self._load(snapshot_id)
        if manifest is None:
            raise SnapshotError(f"No snapshot {snapshot_id} in {self.location}", id=snapshot_id)
        return manifest

    def open_file(self, snapshot_id: str, name: str) -> BinaryIO:
        key = self._key(snapshot_id, name)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            if self._not_found(exc):
                raise SnapshotCorrupt(
                    f"Snapshot {snapshot_id}: file {name} is missing", id=snapshot_id, file=name
                ) from None
            raise self._error(exc, f"read {name} of snapshot {snapshot_id}") from None
        raw = _S3Reader(response["Body"], self, f"{name} of snapshot {snapshot_id}")
        return io.BufferedReader(raw, buffer_size=_READ_CHUNK)

    def verify(self, snapshot_id: str) -> builtins.list[str]:
        """Re-read every data file; one message per problem (empty list: all files intact)."""
        manifest = self.load(snapshot_id)
        problems: builtins.list[str] = []
        for table in manifest.tables:
            for entry in table.files:
                size: int | None = None
                sha: str | None = None
                try:
                    fh = self.open_file(snapshot_id, entry.name)
                except SnapshotCorrupt:
                    fh = None
                if fh is not None:
                    digest, size = hashlib.sha256(), 0
                    with fh:
                        while block := fh.read(_READ_CHUNK):
                            digest.update(block)
                            size += len(block)
                    sha = digest.hexdigest()
                problem = file_problem(entry, size, sha)
                if problem:
                    problems.append(problem)
        return problems
