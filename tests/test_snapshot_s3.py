"""The S3 snapshot store (issue #3) against moto's S3 server, spoken to over real HTTP."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from psycopg import sql

from dbrollback.errors import ConfigError, SnapshotCorrupt, SnapshotError, StoreUnavailable
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.manifest import ColumnInfo, FileEntry, SnapshotManifest, TableManifest
from dbrollback.snapshot.s3 import PART_SIZE, S3Store, part_size
from dbrollback.snapshot.store import SnapshotStore, open_store

KEY_ID = "AKIATESTDBROLLBACK01"
SECRET = "s3cr3t-Moto-Key/Never+Shown"
PREFIX = "team a/snäps"
SNAP = "20260101T000000Z-aaaaaa"

_AWS_ENV_TO_DROP = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 (and KMS) server on a free local port, with dummy credentials for this module."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in _AWS_ENV_TO_DROP:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setattr(boto3, "DEFAULT_SESSION", None)  # no credentials cached from elsewhere
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def admin(endpoint: str) -> Any:
    """A plain boto3 client, to set up and inspect the bucket behind the store's back."""
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(admin: Any) -> str:
    name = f"dbr-{uuid.uuid4().hex[:16]}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(bucket, PREFIX, endpoint_url=endpoint)


def keys(admin: Any, bucket: str) -> list[str]:
    pages = admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def get(admin: Any, bucket: str, key: str) -> bytes:
    return bytes(admin.get_object(Bucket=bucket, Key=key)["Body"].read())


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def record_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """The parameters of every `operation` request the client makes from now on."""
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        body = params.get("Body")
        seen.append({**params, "Body": len(body) if isinstance(body, (bytes, bytearray)) else body})

    client.meta.events.register(f"provide-client-params.s3.{operation}", hook)
    return seen


def manifest_for(snapshot_id: str, entries: list[FileEntry], created_at: datetime) -> SnapshotManifest:
    table = TableManifest(
        schema_name="public", table_name="t", row_count=1, checksum="rowhash64-v2:1", primary_key=["id"],
        columns=[ColumnInfo(name="id", type="bigint", nullable=False)], files=entries,
    )  # fmt: skip
    return SnapshotManifest(id=snapshot_id, created_at=created_at, server_version="18.0", database="app",
                            tables=[table])  # fmt: skip


# -- writing --------------------------------------------------------------------------------------


def test_write_file_streams_a_multipart_upload(store: S3Store, admin: Any, bucket: str) -> None:
    data = os.urandom(2 * PART_SIZE + 12_345)  # incompressible, so sizes are what we send
    parts = record_calls(store.client, "UploadPart")
    puts = record_calls(store.client, "PutObject")
    entry = store.write_file(SNAP, "1.copy.zst", chunked(data, 1_000_003))

    assert entry == FileEntry(name="1.copy.zst", bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert [(p["PartNumber"], p["Body"]) for p in parts] == [(1, PART_SIZE), (2, PART_SIZE), (3, 12_345)]
    assert puts == []
    key = f"{PREFIX}/{SNAP}/1.copy.zst"
    assert get(admin, bucket, key) == data
    head = admin.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_small_and_empty_files_use_one_put(store: S3Store, admin: Any, bucket: str) -> None:
    parts = record_calls(store.client, "UploadPart")
    small = store.write_file(SNAP, "1.copy.zst", [b"abc", b"", b"def"])
    empty = store.write_file(SNAP, "2.copy.zst", [])
    assert parts == []
    assert small == FileEntry(name="1.copy.zst", bytes=6, sha256=hashlib.sha256(b"abcdef").hexdigest())
    assert empty == FileEntry(name="2.copy.zst", bytes=0, sha256=hashlib.sha256(b"").hexdigest())
    assert get(admin, bucket, f"{PREFIX}/{SNAP}/1.copy.zst") == b"abcdef"
    head = admin.head_object(Bucket=bucket, Key=f"{PREFIX}/{SNAP}/1.copy.zst")
    assert head["Metadata"] == {"sha256": small.sha256}
    with pytest.raises(SnapshotError, match=re.escape("already has a file 1.copy.zst")):
        store.write_file(SNAP, "1.copy.zst", [b"again"])
    assert get(admin, bucket, f"{PREFIX}/{SNAP}/1.copy.zst") == b"abcdef"


def test_failed_upload_is_aborted_and_leaves_nothing(store: S3Store, admin: Any, bucket: str) -> None:
    parts = record_calls(store.client, "UploadPart")

    def failing() -> Iterator[bytes]:
        yield os.urandom(PART_SIZE + 100)
        raise RuntimeError("COPY broke")

    with pytest.raises(RuntimeError, match="COPY broke"):
        store.write_file(SNAP, "1.copy.zst", failing())
    assert len(parts) == 1  # a part really was uploaded, so the abort had work to do
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys(admin, bucket) == []


def test_part_size_grows_to_fit_large_files_in_10000_parts() -> None:
    assert part_size(1) == part_size(1000) == PART_SIZE == 8 << 20
    assert part_size(1001) == 2 * PART_SIZE
    assert part_size(10_000) == 10 * PART_SIZE  # at most 80 MiB held in memory
    assert sum(part_size(n) for n in range(1, 10_001)) > 400 << 30


def test_invalid_ids_and_names_are_refused(store: S3Store, admin: Any, bucket: str) -> None:
    for bad in ("..", "a/b", "../x", "", ".hidden", "x" * 300):
        with pytest.raises(SnapshotError, match="Invalid snapshot"):
            store.write_file(SNAP, bad, [b"x"])
        with pytest.raises(SnapshotError, match="Invalid snapshot"):
            store.write_file(bad, "1.copy.zst", [b"x"])
        with pytest.raises(SnapshotError, match="Invalid snapshot"):
            store.open_file(SNAP, bad)
    assert keys(admin, bucket) == []


# -- publishing, listing, removing --------------------------------------------------------------


def test_publish_list_load_round_trip(store: S3Store, admin: Any, bucket: str) -> None:
    assert isinstance(store, SnapshotStore)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    newer, older, partial = "20260101T000000Z-bbbbbb", "20260101T000000Z-cccccc", "20260101T000000Z-dddddd"
    manifests = {}
    for snapshot_id, created in ((newer, now), (older, now - timedelta(hours=1))):
        entry = store.write_file(snapshot_id, "1.copy.zst", [snapshot_id.encode()])
        manifests[snapshot_id] = manifest_for(snapshot_id, [entry], created)
        assert store.publish(manifests[snapshot_id]) == f"s3://{bucket}/{PREFIX}/{snapshot_id}"
    store.write_file(partial, "1.copy.zst", [b"never published"])
    admin.put_object(Bucket=bucket, Key=f"{PREFIX}/stray-object", Body=b"x")  # not a snapshot

    assert [m.id for m in store.list()] == [older, newer]  # oldest first; the partial one is invisible
    assert store.load(newer) == manifests[newer]
    assert store.list()[0] == manifests[older]
    with store.open_file(newer, "1.copy.zst") as fh:
        assert fh.read(4) == newer.encode()[:4]
        assert fh.read() == newer.encode()[4:]
        assert fh.read(10) == b""
    with pytest.raises(SnapshotError, match=re.escape(f"No snapshot {partial} in s3://{bucket}/{PREFIX}")):
        store.load(partial)
    assert store.location == f"s3://{bucket}/{PREFIX}"
    assert store.snapshot_location(newer) == f"s3://{bucket}/{PREFIX}/{newer}"
    assert admin.head_object(Bucket=bucket, Key=f"{PREFIX}/{newer}/manifest.json")["ContentType"] == (
        "application/json"
    )


def test_prefixes_do_not_see_each_other(endpoint: str, bucket: str) -> None:
    one, two, root = (S3Store(bucket, p, endpoint_url=endpoint) for p in ("team", "team2", ""))
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    one.publish(manifest_for(SNAP, [one.write_file(SNAP, "1.copy.zst", [b"1"])], created))
    assert [m.id for m in one.list()] == [SNAP]
    assert two.list() == [] and root.list() == []
    root.publish(manifest_for(SNAP, [root.write_file(SNAP, "1.copy.zst", [b"2"])], created))
    assert [m.id for m in root.list()] == [SNAP] and root.location == f"s3://{bucket}/"
    assert root.open_file(SNAP, "1.copy.zst").read() == b"2"


def test_publish_requires_every_file_with_its_size(store: S3Store, admin: Any, bucket: str) -> None:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    real = store.write_file(SNAP, "1.copy.zst", [b"12345"])
    ghost = FileEntry(name="2.copy.zst", bytes=1, sha256="0" * 64)
    with pytest.raises(
        SnapshotError, match=re.escape(f"Cannot publish snapshot {SNAP}: file 2.copy.zst is missing")
    ):
        store.publish(manifest_for(SNAP, [real, ghost], created))
    wrong = real.model_copy(update={"bytes": 6})
    with pytest.raises(SnapshotError, match=re.escape("file 1.copy.zst has 5 bytes, expected 6")):
        store.publish(manifest_for(SNAP, [wrong], created))
    assert store.list() == []
    assert f"{PREFIX}/{SNAP}/manifest.json" not in keys(admin, bucket)
    store.publish(manifest_for(SNAP, [real], created))
    with pytest.raises(SnapshotError, match=re.escape("already has a file manifest.json")):
        store.publish(manifest_for(SNAP, [real], created + timedelta(days=1)))
    assert store.load(SNAP).created_at == created


def test_discard_removes_only_unpublished_snapshots(store: S3Store, admin: Any, bucket: str) -> None:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    kept = "20260101T000000Z-keeeep"
    store.publish(manifest_for(kept, [store.write_file(kept, "1.copy.zst", [b"k"])], created))
    for n in range(3):
        store.write_file(SNAP, f"{n}.copy.zst", [b"partial"])
    store.discard(SNAP)
    assert keys(admin, bucket) == [f"{PREFIX}/{kept}/1.copy.zst", f"{PREFIX}/{kept}/manifest.json"]
    store.discard(SNAP)  # nothing left: still fine
    with pytest.raises(SnapshotError, match=re.escape(f"Snapshot {kept} is published; not discarding it")):
        store.discard(kept)
    assert len(keys(admin, bucket)) == 2 and [m.id for m in store.list()] == [kept]


def test_delete_removes_manifest_and_files(store: S3Store, admin: Any, bucket: str) -> None:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    other = "20260101T000000Z-0ther0"
    entries = [store.write_file(SNAP, f"{n}.copy.zst", [b"data"]) for n in range(3)]
    store.publish(manifest_for(SNAP, entries, created))
    store.publish(manifest_for(other, [store.write_file(other, "1.copy.zst", [b"o"])], created))
    deleted = record_calls(store.client, "DeleteObject")
    store.delete(SNAP)
    assert [d["Key"] for d in deleted] == [f"{PREFIX}/{SNAP}/manifest.json"]  # the manifest goes first
    assert keys(admin, bucket) == [f"{PREFIX}/{other}/1.copy.zst", f"{PREFIX}/{other}/manifest.json"]
    assert [m.id for m in store.list()] == [other]
    with pytest.raises(SnapshotError, match=re.escape(f"No snapshot {SNAP} in s3://{bucket}/{PREFIX}")):
        store.delete(SNAP)


# -- verification -------------------------------------------------------------------------------


def test_verify_names_corrupt_truncated_and_missing_files(store: S3Store, admin: Any, bucket: str) -> None:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    contents = [os.urandom(1000 + n) for n in range(4)]
    entries = [store.write_file(SNAP, f"{n}.copy.zst", [c]) for n, c in enumerate(contents)]
    store.publish(manifest_for(SNAP, entries, created))
    assert store.verify(SNAP) == []

    flipped = bytes([contents[1][0] ^ 1]) + contents[1][1:]
    admin.put_object(Bucket=bucket, Key=f"{PREFIX}/{SNAP}/1.copy.zst", Body=flipped)
    admin.put_object(Bucket=bucket, Key=f"{PREFIX}/{SNAP}/2.copy.zst", Body=contents[2][:10])
    admin.delete_object(Bucket=bucket, Key=f"{PREFIX}/{SNAP}/3.copy.zst")
    e1, e2, e3 = entries[1:]
    assert store.verify(SNAP) == [
        f"1.copy.zst: sha256 mismatch: expected {e1.sha256}, actual {hashlib.sha256(flipped).hexdigest()}",
        f"2.copy.zst: size 10 bytes, expected {e2.bytes} bytes; sha256 expected {e2.sha256}, "
        f"actual {hashlib.sha256(contents[2][:10]).hexdigest()}",
        f"3.copy.zst: missing (expected {e3.bytes} bytes, sha256 {e3.sha256})",
    ]
    with pytest.raises(
        SnapshotCorrupt, match=re.escape(f"Snapshot {SNAP}: file 3.copy.zst is missing")
    ) as missing:
        store.open_file(SNAP, "3.copy.zst")
    assert missing.value.exit_code == 3
    assert missing.value.fields == {"id": SNAP, "file": "3.copy.zst"}
    with pytest.raises(SnapshotError, match="No snapshot 20260101T000000Z-ffffff"):
        store.verify("20260101T000000Z-ffffff")


# -- encryption -----------------------------------------------------------------------------------


def test_sse_aes256_applies_to_every_object(endpoint: str, bucket: str, admin: Any) -> None:
    store = S3Store(bucket, "enc", endpoint_url=endpoint, sse="AES256")
    creates = record_calls(store.client, "CreateMultipartUpload")
    small = store.write_file(SNAP, "1.copy.zst", [b"small"])
    big = store.write_file(SNAP, "2.copy.zst", chunked(os.urandom(PART_SIZE + 1), 1 << 20))
    assert [c["ServerSideEncryption"] for c in creates] == ["AES256"]  # parts are encrypted as sent
    store.publish(manifest_for(SNAP, [small, big], datetime(2026, 1, 1, tzinfo=timezone.utc)))
    store.probe()
    names = keys(admin, bucket)
    assert names == [f"enc/{SNAP}/1.copy.zst", f"enc/{SNAP}/2.copy.zst", f"enc/{SNAP}/manifest.json"]
    for key in names:
        assert admin.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    assert store.verify(SNAP) == []


def test_sse_kms_key_applies_to_every_object(endpoint: str, bucket: str, admin: Any) -> None:
    kms = boto3.session.Session().client("kms", endpoint_url=endpoint, region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    store = S3Store(bucket, "kms", endpoint_url=endpoint, sse_kms_key_id=key_id)
    assert store.sse == "aws:kms"  # a key id implies KMS encryption
    small = store.write_file(SNAP, "1.copy.zst", [b"small"])
    big = store.write_file(SNAP, "2.copy.zst", chunked(os.urandom(PART_SIZE + 1), 1 << 20))
    store.publish(manifest_for(SNAP, [small, big], datetime(2026, 1, 1, tzinfo=timezone.utc)))
    for key in keys(admin, bucket):
        head = admin.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]


def test_bad_sse_settings_are_config_errors(endpoint: str, bucket: str) -> None:
    with pytest.raises(ConfigError, match="Unknown S3 server-side encryption 'aes'"):
        S3Store(bucket, "p", endpoint_url=endpoint, sse="aes")
    with pytest.raises(ConfigError, match="sse_kms_key_id needs sse=aws:kms"):
        S3Store(bucket, "p", endpoint_url=endpoint, sse="AES256", sse_kms_key_id="k")


# -- store problems -------------------------------------------------------------------------------


def assert_no_secret(exc: BaseException) -> None:
    assert isinstance(exc, SnapshotError)
    shown = str(exc) + repr(exc.to_dict())
    assert SECRET not in shown and KEY_ID not in shown


def test_probe_writes_and_removes_a_test_object(store: S3Store, admin: Any, bucket: str) -> None:
    puts = record_calls(store.client, "PutObject")
    store.probe()
    assert len(puts) == 1 and puts[0]["Key"].startswith(f"{PREFIX}/.probe-")
    assert keys(admin, bucket) == []


def test_missing_bucket_is_store_unavailable(endpoint: str) -> None:
    store = S3Store("dbr-no-such-bucket", "pre/fix", endpoint_url=endpoint)
    with pytest.raises(StoreUnavailable) as probe:
        store.probe()
    assert probe.value.exit_code == 3
    assert "s3://dbr-no-such-bucket/pre/fix" in probe.value.message
    assert "the bucket does not exist (NoSuchBucket" in probe.value.message
    assert probe.value.fields["code"] == "NoSuchBucket"
    assert_no_secret(probe.value)
    with pytest.raises(StoreUnavailable, match="NoSuchBucket") as listing:
        store.list()
    with pytest.raises(StoreUnavailable, match="NoSuchBucket") as writing:
        store.write_file(SNAP, "1.copy.zst", [b"x"])
    for exc in (listing.value, writing.value):
        assert_no_secret(exc)


def test_unreachable_endpoint_is_store_unavailable(bucket: str) -> None:
    # Retries are the store's own (3 attempts); a refused connection fails fast each time.
    store = S3Store(bucket, "pre", endpoint_url="http://127.0.0.1:1")
    for action in (store.probe, store.list, lambda: store.write_file(SNAP, "1.copy.zst", [b"x"])):
        with pytest.raises(StoreUnavailable) as caught:
            action()
        assert caught.value.exit_code == 3
        assert f"S3 store s3://{bucket}/pre: cannot" in caught.value.message
        assert "cannot connect to http://127.0.0.1:1" in caught.value.message
        assert caught.value.fields["code"] == "EndpointConnectionError"
        assert_no_secret(caught.value)


def test_endpoint_credentials_are_masked(bucket: str) -> None:
    store = S3Store(bucket, "pre", endpoint_url=f"http://user:{SECRET}@127.0.0.1:1")
    with pytest.raises(StoreUnavailable) as caught:
        store.probe()
    assert "***" in caught.value.message
    assert_no_secret(caught.value)


def test_missing_credentials_are_store_unavailable(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    store = S3Store(bucket, "pre", endpoint_url=endpoint)
    with pytest.raises(StoreUnavailable, match="no AWS credentials found") as caught:
        store.probe()
    assert caught.value.fields["code"] == "NoCredentialsError"
    assert f"s3://{bucket}/pre" in caught.value.message


def test_open_store_parses_s3_urls(endpoint: str, bucket: str, admin: Any) -> None:
    store = open_store(f"s3://{bucket}/pre/fix/?endpoint_url={endpoint}&sse=AES256&region=eu-west-1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (bucket, "pre/fix", endpoint)
    assert (store.sse, store.sse_kms_key_id, store.region) == ("AES256", None, "eu-west-1")
    assert store.client.meta.region_name == "eu-west-1"
    assert store.location == f"s3://{bucket}/pre/fix"
    store.write_file(SNAP, "1.copy.zst", [b"via url"])
    head = admin.head_object(Bucket=bucket, Key=f"pre/fix/{SNAP}/1.copy.zst")
    assert head["ServerSideEncryption"] == "AES256"
    default = open_store(f"s3://{bucket}")
    assert isinstance(default, S3Store)
    assert (default.prefix, default.endpoint_url, default.sse, default.region) == (
        "",
        None,
        None,
        "us-east-1",
    )
    with pytest.raises(ConfigError, match="Unknown S3 store option"):
        open_store(f"s3://{bucket}/p?endpoint={endpoint}")


# -- with a real database -------------------------------------------------------------------------

SCHEMA = 'Sch "q"; é'
TABLE = "Tä ble;x"


def test_capture_to_s3_and_load_back(db: psycopg.Connection, database_url: str, store: S3Store,
                                     admin: Any, bucket: str) -> None:  # fmt: skip
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    db.execute(
        sql.SQL("CREATE TABLE {} (id int8 PRIMARY KEY, {} text, doc jsonb, blob bytea)").format(
            sql.Identifier(SCHEMA, TABLE), sql.Identifier('Wörd "x"')
        )
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g || ' ;é' END, "
            "jsonb_build_object('g', g), decode(md5(g::text), 'hex') FROM generate_series(1, 3000) g"
        ).format(sql.Identifier(SCHEMA, TABLE))
    )
    snap = capture_tables(database_url, store, [(SCHEMA, TABLE)], label="s3 test")
    (tm,) = snap.tables
    assert tm.row_count == 3000
    assert [m.id for m in store.list()] == [snap.id] and store.load(snap.id) == snap
    assert store.verify(snap.id) == []

    db.execute(
        sql.SQL("CREATE TABLE {} (LIKE {})").format(
            sql.Identifier(SCHEMA, "copy Ü"), sql.Identifier(SCHEMA, TABLE)
        )
    )
    assert load_table_copy(db, store, snap.id, tm, SCHEMA, "copy Ü") == 3000
    assert table_checksum(db, SCHEMA, "copy Ü") == (tm.row_count, tm.checksum)
    assert table_checksum(db, SCHEMA, TABLE) == (tm.row_count, tm.checksum)

    # A corrupted object is refused while loading, and nothing is loaded.
    (entry,) = tm.files
    key = f"{PREFIX}/{snap.id}/{entry.name}"
    data = get(admin, bucket, key)
    admin.put_object(Bucket=bucket, Key=key, Body=data[:-1] + bytes([data[-1] ^ 0xFF]))
    db.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, "copy Ü")))
    with pytest.raises(SnapshotCorrupt, match=entry.name):
        load_table_copy(db, store, snap.id, tm, SCHEMA, "copy Ü")
    count = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, "copy Ü"))).fetchone()
    assert count == (0,)


def test_parallel_capture_writes_from_threads(
    db: psycopg.Connection, database_url: str, store: S3Store
) -> None:
    db.execute("CREATE TABLE acct (id bigint PRIMARY KEY, v text)")
    db.execute("INSERT INTO acct SELECT g, repeat('v', g % 50) FROM generate_series(1, 5000) g")
    db.execute("ANALYZE acct")
    snap = capture_tables(database_url, store, [("public", "acct")], jobs=3, split_min_rows=100)
    (tm,) = snap.tables
    assert len(tm.files) == 6 and store.verify(snap.id) == []
    db.execute("CREATE TABLE acct_copy (LIKE acct)")
    assert load_table_copy(db, store, snap.id, tm, "public", "acct_copy") == 5000
    assert table_checksum(db, "public", "acct_copy") == (5000, tm.checksum)


def test_failed_capture_leaves_nothing_in_the_bucket(db: psycopg.Connection, database_url: str,
                                                     store: S3Store, admin: Any, bucket: str) -> None:  # fmt: skip
    db.execute("CREATE TABLE one (id int PRIMARY KEY)")
    db.execute("CREATE TABLE two (id int PRIMARY KEY)")
    db.execute("INSERT INTO one SELECT generate_series(1, 10)")
    written: list[list[str]] = []

    def fail_after_files(table: TableManifest) -> None:
        written.append(keys(admin, bucket))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        capture_tables(database_url, store, [("public", "one"), ("public", "two")], progress=fail_after_files)
    assert len(written[0]) >= 1  # data was uploaded before the failure (the second file may be in flight)...
    assert store.list() == [] and keys(admin, bucket) == []  # ...and discarded after it


def test_client_settings(endpoint: str, bucket: str) -> None:
    config: Config = S3Store(bucket, "p", endpoint_url=endpoint).client.meta.config
    # botocore counts max_attempts=3 as retries: 4 attempts in all
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (config.connect_timeout, config.read_timeout) == (5, 60)
    assert config.s3 == {"addressing_style": "path"}


def test_stale_partials_and_discard_abort_unfinished_uploads(store: S3Store, admin: Any, bucket: str) -> None:
    """A capture killed mid-upload leaves objects and an open multipart upload but no manifest."""
    published = "20260101T000000Z-aaaaaa"
    store.write_file(published, "1.copy.zst", [b"done"])
    store.publish(manifest_for(published, [FileEntry(name="1.copy.zst", bytes=4,
                                                     sha256=hashlib.sha256(b"done").hexdigest())],
                               datetime(2026, 1, 1, tzinfo=timezone.utc)))  # fmt: skip
    killed = "20260101T000001Z-bbbbbb"
    store.write_file(killed, "1.copy.zst", [b"finished part of an unfinished snapshot"])
    upload = admin.create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}/{killed}/2.copy.zst")
    admin.upload_part(Bucket=bucket, Key=f"{PREFIX}/{killed}/2.copy.zst", PartNumber=1,
                      UploadId=upload["UploadId"], Body=b"x" * 100)  # fmt: skip

    assert store.stale_partials(timedelta(days=1)) == []  # too recent: maybe still being written
    assert store.stale_partials(timedelta(0)) == [killed]
    store.discard(killed)
    assert keys(admin, bucket) == [f"{PREFIX}/{published}/1.copy.zst", f"{PREFIX}/{published}/manifest.json"]
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.stale_partials(timedelta(0)) == []
