"""Snapshot capture (issue #3): consistent COPY capture into a local store, manifest, checksums."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from dbrollback.errors import SnapshotError
from dbrollback.snapshot.capture import NO_PK_NOTE, capture_tables
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.local import LocalStore
from dbrollback.snapshot.manifest import SnapshotManifest, TableManifest

SCHEMA = "Sch; é"
TABLE = 'we"ird tä;ble'
ENUM = 'mood "x"'
DOMAIN = "pos int"

COLUMNS_DDL = """
    id int8 PRIMARY KEY,
    {quoted} text,
    "Amount" numeric,
    "at time" timestamptz,
    doc jsonb,
    blob bytea,
    "Ints" int[],
    mood {enum},
    qty {domain},
    doubled int8 GENERATED ALWAYS AS (id * 2) STORED
"""


def _server_num(db: psycopg.Connection) -> int:
    return int(db.info.server_version)


def create_awkward_table(db: psycopg.Connection, schema: str, table: str) -> None:
    body = sql.SQL(COLUMNS_DDL).format(
        quoted=sql.Identifier('Quoted "Name"'),
        enum=sql.Identifier(SCHEMA, ENUM),
        domain=sql.Identifier(SCHEMA, DOMAIN),
    )
    if _server_num(db) >= 180000:  # virtual generated columns are new in PostgreSQL 18
        body = sql.SQL("{}, tripled int8 GENERATED ALWAYS AS (id * 3) VIRTUAL").format(body)
    db.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, table), body))


def setup_awkward(db: psycopg.Connection) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    db.execute(
        sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'o''k', 'happy')").format(sql.Identifier(SCHEMA, ENUM))
    )
    db.execute(
        sql.SQL("CREATE DOMAIN {} AS integer CHECK (VALUE > 0)").format(sql.Identifier(SCHEMA, DOMAIN))
    )
    create_awkward_table(db, SCHEMA, TABLE)
    rows = [
        (1, "plain", Decimal("12.50"), datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
         Jsonb({"a": [1, 2, {"é": None}]}), b"\x00\x01\xff", [1, None, 3], "sad", 5),
        (2, None, Decimal("NaN"), None, None, None, None, None, None),
        (3, "tab\there; 'quote' \"dq\" \\ é ✓", Decimal("-1e-20"),
         datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), Jsonb([]), b"", [], "o'k", 1),
        (9_000_000_000, "", Decimal("123456789012345678901234567890.123456789"), None,
         Jsonb("str"), b"\\x", [2147483647, -2147483648], "happy", 2147483647),
    ]  # fmt: skip
    db.cursor().executemany(
        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(
            sql.Identifier(SCHEMA, TABLE)
        ),
        rows,
    )


def all_rows(db: psycopg.Connection, schema: str, table: str, order: str = "id") -> list[tuple[object, ...]]:
    query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(
        sql.Identifier(schema, table), sql.Identifier(order)
    )
    # Decimal('NaN') != Decimal('NaN') in Python: compare NaN by its text form
    return [
        tuple("NaN" if isinstance(v, Decimal) and v.is_nan() else v for v in row)
        for row in db.execute(query).fetchall()
    ]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_simple(db: psycopg.Connection, name: str, rows: int, *, pk: bool = True) -> None:
    key = "PRIMARY KEY" if pk else ""
    db.execute(sql.SQL(f"CREATE TABLE {{}} (id int8 {key}, v text)").format(sql.Identifier(name)))
    db.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, %s) g").format(
            sql.Identifier(name)
        ),
        (rows,),
    )


def load_into_copy_of(
    db: psycopg.Connection, store: LocalStore, snap: SnapshotManifest, tm: TableManifest, target: str
) -> None:
    db.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier("public", target), sql.Identifier(tm.schema_name, tm.table_name)
        )
    )
    load_table_copy(db, store, snap.id, tm, "public", target)


# -- tests ----------------------------------------------------------------------------------------


def test_round_trip_awkward_identifiers_and_types(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    setup_awkward(db)
    store = LocalStore(tmp_path / "store")
    url = database_url
    if not os.environ.get("DBROLLBACK_TEST_DATABASE_URL") and "password" not in conninfo_to_dict(url):
        url = make_conninfo(url, password="hunter2-not-stored")  # trust auth: never sent
    snap = capture_tables(url, store, [(SCHEMA, TABLE)], run_id=7, revision="abc123", label="before x")

    # manifest
    assert snap.database == db.info.dbname
    assert snap.run_id == 7 and snap.revision == "abc123" and snap.label == "before x"
    assert snap.server_version
    (tm,) = snap.tables
    assert (tm.schema_name, tm.table_name) == (SCHEMA, TABLE)
    names = [c.name for c in tm.columns]
    expected = ["id", 'Quoted "Name"', "Amount", "at time", "doc", "blob", "Ints", "mood", "qty", "doubled"]
    if _server_num(db) >= 180000:
        expected.append("tripled")
    assert names == expected
    by_name = {c.name: c for c in tm.columns}
    assert by_name["id"].type == "bigint" and not by_name["id"].nullable
    assert by_name["Ints"].type == "integer[]"
    assert (
        by_name["mood"].type == f"{sql.Identifier(SCHEMA).as_string(db)}.{sql.Identifier(ENUM).as_string(db)}"
    )
    assert by_name["doubled"].generated and by_name["doubled"].default == "(id * 2)"
    assert [c for c in names if by_name[c].generated] == expected[9:]
    assert tm.primary_key == ["id"]
    assert tm.row_count == 4
    assert tm.note == ""
    assert (tm.row_count, tm.checksum) == table_checksum(db, SCHEMA, TABLE)

    # store: published, listed, loadable, files intact with mode 0600, no password anywhere
    directory = store.snapshot_dir(snap.id)
    manifest_text = (directory / "manifest.json").read_text()
    assert "hunter2" not in manifest_text and "password" not in manifest_text
    assert json.loads(manifest_text)["database"] == db.info.dbname
    assert [m.id for m in store.list()] == [snap.id]
    assert store.load(snap.id) == snap
    assert not (directory / ".partial").exists()
    (entry,) = tm.files
    assert entry.name == "1.copy.zst"
    data_file = directory / entry.name
    assert sha256_of(data_file) == entry.sha256 and data_file.stat().st_size == entry.bytes
    assert stat.S_IMODE(data_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "manifest.json").stat().st_mode) == 0o600
    assert store.verify(snap.id) == []

    # round trip into an empty table of the same shape
    create_awkward_table(db, SCHEMA, "copy")
    assert load_table_copy(db, store, snap.id, tm, SCHEMA, "copy") == 4
    assert all_rows(db, SCHEMA, "copy") == all_rows(db, SCHEMA, TABLE)
    assert table_checksum(db, SCHEMA, "copy") == (tm.row_count, tm.checksum)
    nan = db.execute(sql.SQL("SELECT {} FROM {} WHERE id = 2").format(
        sql.Identifier("Amount"), sql.Identifier(SCHEMA, "copy"))).fetchone()  # fmt: skip
    assert nan is not None and nan[0].is_nan()


def test_checksum_is_order_independent_and_content_sensitive(db: psycopg.Connection) -> None:
    make_simple(db, "a", 100)
    db.execute("CREATE TABLE b (id int8 PRIMARY KEY, v text)")
    db.execute("INSERT INTO b SELECT id, v FROM a ORDER BY id DESC")
    assert table_checksum(db, "public", "a") == table_checksum(db, "public", "b")
    db.execute("UPDATE b SET v = 'changed' WHERE id = 50")
    count, checksum = table_checksum(db, "public", "b")
    assert count == 100 and checksum != table_checksum(db, "public", "a")[1]
    db.execute("CREATE TABLE empty (id int)")
    assert table_checksum(db, "public", "empty")[0] == 0


def test_verify_names_corrupt_truncated_and_missing_files(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    for name in ("t1", "t2", "t3"):
        make_simple(db, name, 2000)
    store = LocalStore(tmp_path)
    snap = capture_tables(database_url, store, [("public", "t1"), ("public", "t2"), ("public", "t3")])
    assert store.verify(snap.id) == []
    directory = store.snapshot_dir(snap.id)
    f1, f2, f3 = (t.files[0] for t in snap.tables)

    raw = bytearray((directory / f1.name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (directory / f1.name).write_bytes(bytes(raw))
    actual1 = hashlib.sha256(raw).hexdigest()
    with (directory / f2.name).open("r+b") as fh:
        fh.truncate(f2.bytes // 2)
    actual2 = sha256_of(directory / f2.name)
    (directory / f3.name).unlink()

    problems = store.verify(snap.id)
    assert len(problems) == 3
    p1, p2, p3 = problems
    assert f1.name in p1 and f1.sha256 in p1 and actual1 in p1 and "mismatch" in p1
    assert f2.name in p2 and f2.sha256 in p2 and actual2 in p2 and f"{f2.bytes // 2} bytes" in p2
    assert f3.name in p3 and "missing" in p3 and f3.sha256 in p3

    # a damaged file never loads partially: the COPY is aborted
    db.execute("CREATE TABLE restored (id int8 PRIMARY KEY, v text)")
    for tm in snap.tables[:2]:
        with pytest.raises((SnapshotError, psycopg.Error)), db.transaction():
            load_table_copy(db, store, snap.id, tm, "public", "restored")
        assert db.execute("SELECT count(*) FROM restored").fetchone() == (0,)
    with pytest.raises(SnapshotError, match="is missing"):
        load_table_copy(db, store, snap.id, snap.tables[2], "public", "restored")


def test_table_without_primary_key(db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    make_simple(db, "nopk", 500, pk=False)
    db.execute("INSERT INTO nopk SELECT id, v FROM nopk WHERE id <= 10")  # duplicates are fine
    store = LocalStore(tmp_path)
    snap = capture_tables(database_url, store, [("public", "nopk")])
    (tm,) = snap.tables
    assert tm.primary_key == [] and tm.note == NO_PK_NOTE and tm.row_count == 510
    load_into_copy_of(db, store, snap, tm, "nopk_copy")
    assert all_rows(db, "public", "nopk_copy") == all_rows(db, "public", "nopk")
    assert table_checksum(db, "public", "nopk_copy") == (tm.row_count, tm.checksum)


def test_tables_are_captured_at_one_point_in_time(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    """Another session commits changes to both tables after the first one was copied; the
    snapshot of the second one still shows the state at the start of the capture."""
    make_simple(db, "a", 1000)
    make_simple(db, "b", 1000)
    before_a, before_b = table_checksum(db, "public", "a"), table_checksum(db, "public", "b")
    rows_b_before = all_rows(db, "public", "b")
    seen: list[str] = []

    def meddle(tm: TableManifest) -> None:
        seen.append(tm.table_name)
        if tm.table_name == "a":
            db.execute("INSERT INTO a VALUES (5001, 'new'); INSERT INTO b VALUES (5001, 'new')")
            db.execute("UPDATE b SET v = 'changed' WHERE id <= 10; DELETE FROM b WHERE id > 900")

    store = LocalStore(tmp_path)
    snap = capture_tables(database_url, store, [("public", "a"), ("public", "b")], progress=meddle)
    assert seen == ["a", "b"]
    ta, tb = snap.tables
    assert (ta.row_count, ta.checksum) == before_a
    assert (tb.row_count, tb.checksum) == before_b
    assert table_checksum(db, "public", "b") != before_b  # the changes were committed meanwhile
    load_into_copy_of(db, store, snap, tb, "b_copy")
    assert all_rows(db, "public", "b_copy") == rows_b_before


def test_partial_and_failed_snapshots_are_not_listed(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    make_simple(db, "t", 10)
    store = LocalStore(tmp_path)
    assert store.list() == []
    entry = store.write_file("20260101T000000Z-abcdef", "1.copy.zst", [b"abc", b"", b"def"])
    assert entry.bytes == 6 and entry.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert (
        stat.S_IMODE((store.snapshot_dir("20260101T000000Z-abcdef") / "1.copy.zst").stat().st_mode) == 0o600
    )
    assert store.list() == []
    with pytest.raises(SnapshotError, match="No snapshot"):
        store.load("20260101T000000Z-abcdef")

    with pytest.raises(SnapshotError, match="does not exist"):
        capture_tables(database_url, store, [("public", "t"), ("public", "nope")])
    assert store.list() == []

    def boom(tm: TableManifest) -> None:
        raise RuntimeError("interrupted after the first table")

    make_simple(db, "u", 10)
    with pytest.raises(RuntimeError):
        capture_tables(database_url, store, [("public", "t"), ("public", "u")], progress=boom)
    assert store.list() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["20260101T000000Z-abcdef"]

    snap = capture_tables(database_url, store, [("public", "t")])
    assert [m.id for m in store.list()] == [snap.id]


def test_store_rejects_path_tricks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(SnapshotError):
            store.write_file("20260101T000000Z-abcdef", bad, [b"x"])
        with pytest.raises(SnapshotError):
            store.snapshot_dir(bad)
    assert not (tmp_path / "x").exists()


def test_parallel_key_ranges_read_one_point_in_time(db: psycopg.Connection, database_url: str,
                                                     tmp_path: Path) -> None:  # fmt: skip
    """jobs > 1 splits the table into key ranges read by several connections; they all see one
    snapshot: value moved between the first and last row DURING the capture (committed as soon as
    the first bytes arrive) changes neither the captured total nor the captured rows."""
    import threading

    db.execute("CREATE TABLE acct (id bigint PRIMARY KEY, v bigint NOT NULL, pad text)")
    db.execute("INSERT INTO acct SELECT g, 100, repeat('p', 50) FROM generate_series(1, 60000) g")
    db.execute("ANALYZE acct")
    before = table_checksum(db, "public", "acct")
    moved = threading.Event()
    lock = threading.Lock()

    def move_once(n: int) -> None:
        with lock:
            if moved.is_set():
                return
            with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
                conn.execute("UPDATE acct SET v = v - 7 WHERE id = 1")
                conn.execute("UPDATE acct SET v = v + 7 WHERE id = 60000")
            moved.set()

    store = LocalStore(tmp_path / "store")
    snap = capture_tables(database_url, store, [("public", "acct")], jobs=3, split_min_rows=1000,
                          on_bytes=move_once)  # fmt: skip
    assert moved.is_set()
    assert db.execute("SELECT v FROM acct WHERE id IN (1, 60000) ORDER BY id").fetchall() == [(93,), (107,)]
    (tm,) = snap.tables
    assert len(tm.files) == 6  # 3 jobs x 2 ranges each
    assert (tm.row_count, tm.checksum) == before  # as it was when the capture began
    assert store.verify(snap.id) == []
    db.execute("CREATE TABLE acct_copy (LIKE acct)")
    load_table_copy(db, store, snap.id, tm, "public", "acct_copy")
    assert db.execute("SELECT v FROM acct_copy WHERE id IN (1, 60000) ORDER BY id").fetchall() == [
        (100,),
        (100,),
    ]
    assert table_checksum(db, "public", "acct_copy") == before


def test_parallel_capture_fails_fast_when_ddl_is_queued(db: psycopg.Connection, database_url: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An ALTER TABLE queued behind the capture's lock must not leave the workers waiting behind it
    (a deadlock PostgreSQL cannot see): they lock with NOWAIT and the capture fails cleanly."""
    import threading
    import time

    from dbrollback.snapshot import capture

    db.execute("CREATE TABLE busy (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO busy SELECT g, g::text FROM generate_series(1, 5000) g")
    db.execute("ANALYZE busy")
    original_start = capture._ParallelCopy.start
    alter_done = threading.Event()

    def alter() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '60s'")
            conn.execute("ALTER TABLE busy ADD COLUMN extra int")
        alter_done.set()

    def start_after_ddl_queues(self: capture._ParallelCopy, parts: list) -> None:  # type: ignore[type-arg]
        threading.Thread(target=alter, daemon=True).start()
        deadline = time.monotonic() + 30
        while not db.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'busy'::regclass"
                             ).fetchone()[0]:  # type: ignore[index]  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.02)
        original_start(self, parts)

    monkeypatch.setattr(capture._ParallelCopy, "start", start_after_ddl_queues)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(SnapshotError, match="waiting to change a table"):
        capture_tables(database_url, store, [("public", "busy")], jobs=2, split_min_rows=100)
    assert store.list() == []
    assert alter_done.wait(30)  # the DDL went through once the capture let go


def test_parallel_capture_failure_lists_nothing(db: psycopg.Connection, database_url: str,
                                                tmp_path: Path) -> None:  # fmt: skip
    db.execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO big SELECT g, g::text FROM generate_series(1, 5000) g")
    db.execute("ANALYZE big")
    store = LocalStore(tmp_path / "store")
    calls = 0

    def boom(n: int) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        capture_tables(database_url, store, [("public", "big")], jobs=2, split_min_rows=100, on_bytes=boom)
    assert calls >= 1 and store.list() == []
    assert not any((tmp_path / "store").iterdir()) if (tmp_path / "store").exists() else True


def test_row_level_security_refuses_instead_of_capturing_a_subset(db: psycopg.Connection, database_url: str,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    import uuid

    role = f"rls_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        db.execute("CREATE TABLE secret (id int PRIMARY KEY, owner text)")
        db.execute("INSERT INTO secret SELECT g, CASE WHEN g % 2 = 0 THEN 'me' ELSE 'you' END "
                   "FROM generate_series(1, 10) g")  # fmt: skip
        db.execute(sql.SQL("ALTER TABLE secret OWNER TO {}").format(sql.Identifier(role)))
        db.execute("ALTER TABLE secret ENABLE ROW LEVEL SECURITY")
        db.execute("ALTER TABLE secret FORCE ROW LEVEL SECURITY")  # applies to the owner too
        db.execute("CREATE POLICY mine ON secret USING (owner = 'me')")
        params = conninfo_to_dict(database_url)
        params["user"] = role
        as_owner = make_conninfo(**params)
        store = LocalStore(tmp_path / "store")
        with pytest.raises(SnapshotError, match="row-level security"):
            capture_tables(as_owner, store, [("public", "secret")])
        assert store.list() == []
    finally:
        db.execute("DROP TABLE IF EXISTS secret")
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@/db?host=/tmp/sock", True),
        ("postgresql://u@localhost/db", True),
        ("postgresql://u@127.0.0.1:5433/db", True),
        ("postgresql://u@db.example.com/db", False),  # sslmode=prefer: psql would go cleartext
        ("postgresql://u@localhost/db?sslmode=require", False),
        ("postgresql://u@localhost/db?sslcert=/x.crt", False),
        ("postgresql://u@localhost/db?gssencmode=require", False),
        ("postgresql://u@/db?host=/tmp/sock,db.example.com", False),
    ],
)
def test_psql_only_where_its_libpq_without_tls_is_safe(url: str, expected: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from dbrollback.snapshot.capture import psql_can_reach

    monkeypatch.delenv("PGHOST", raising=False)
    assert psql_can_reach(url) is expected


def test_tls_connections_are_read_through_psycopg(db: psycopg.Connection, database_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Where psql cannot go (TLS), the same capture runs through psycopg: same files, same data."""
    from dbrollback.snapshot import capture

    setup_awkward(db)
    db.execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO big SELECT g, repeat('x', g % 50) FROM generate_series(1, 3000) g")
    db.execute("ANALYZE big")
    monkeypatch.setattr(capture, "psql_can_reach", lambda url: False)
    monkeypatch.setattr(capture.subprocess, "Popen", None)  # psql must not run at all
    store = LocalStore(tmp_path / "store")
    snap = capture_tables(
        database_url, store, [(SCHEMA, TABLE), ("public", "big")], jobs=2, split_min_rows=100
    )
    assert [len(t.files) for t in snap.tables] == [1, 4]
    for tm, copy_name in zip(snap.tables, ("awkward_copy", "big_copy"), strict=True):
        db.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(
            sql.Identifier("public", copy_name), sql.Identifier(tm.schema_name, tm.table_name)))  # fmt: skip
        load_table_copy(db, store, snap.id, tm, "public", copy_name)
        assert table_checksum(db, "public", copy_name, columns=tm.copy_columns) == table_checksum(
            db, tm.schema_name, tm.table_name, columns=tm.copy_columns
        )


def test_a_reader_that_cannot_connect_is_named_not_blamed_on_the_store(db: psycopg.Connection,
                                                                        database_url: str, tmp_path: Path) -> None:  # fmt: skip
    """The capture needs a second connection; a role limited to one gets the server's reason."""
    import uuid

    role = f"one_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1").format(sql.Identifier(role)))
    try:
        db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        db.execute("INSERT INTO t SELECT generate_series(1, 10)")
        db.execute(sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(role)))
        params = conninfo_to_dict(database_url)
        params["user"] = role
        store = LocalStore(tmp_path / "store")
        with pytest.raises(SnapshotError) as info:
            capture_tables(make_conninfo(**params), store, [("public", "t")])
        assert "too many connections" in info.value.message and "store" not in info.value.message.lower()
        assert store.list() == []
    finally:
        db.execute("DROP TABLE IF EXISTS t")
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
