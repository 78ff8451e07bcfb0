"""verify (issue #3): live tables against a snapshot, differing rows found by bisecting key ranges."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from dbrollback.catalog import OBJECT_PREFIX
from dbrollback.errors import SnapshotCorrupt, SnapshotError
from dbrollback.snapshot import diff
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.diff import (
    LEAF_ROWS,
    NO_PK_NOTE,
    RowDifference,
    TableVerification,
    verify_snapshot,
    verify_table,
)
from dbrollback.snapshot.load import load_table_copy
from dbrollback.snapshot.local import LocalStore
from dbrollback.snapshot.manifest import SnapshotManifest

SCHEMA = 'Sch "q"; é ✓ 50%'
TABLE = 'T a;b "x" ü'
ENUM = 'mood "m" %s'
DOMAIN = "pos; int"
ID = 'I"d; ü %s'
TEXT = 'Quoted "Name"; x'


def ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def bindable_ident(db: psycopg.Connection, *names: str) -> sql.SQL:
    """An identifier for a query with parameters: psycopg would read its % as a placeholder."""
    return sql.SQL(sql.Identifier(*names).as_string(db).replace("%", "%%"))


def snapshot(
    database_url: str, tmp_path: Path, tables: list[tuple[str, str]]
) -> tuple[LocalStore, SnapshotManifest]:
    store = LocalStore(tmp_path / "store")
    return store, capture_tables(database_url, store, tables)


def verify_one(
    db: psycopg.Connection, store: LocalStore, snap: SnapshotManifest, **kwargs: Any
) -> TableVerification:
    (result,) = verify_snapshot(db, store, snap, **kwargs)
    json.dumps(result.to_dict())  # always JSON-ready
    return result


def summary(result: TableVerification) -> list[tuple[str, dict[str, Any], list[str]]]:
    return [(d.kind, d.key, d.columns) for d in result.differences]


def temp_tables_left(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relpersistence = 't' AND starts_with(relname, %s)",
        (OBJECT_PREFIX,),
    ).fetchall()
    return [r[0] for r in rows]


def make_simple(db: psycopg.Connection, name: str, rows: int) -> None:
    db.execute(sql.SQL("CREATE TABLE {} (id int8 PRIMARY KEY, v text, n int)").format(ident(name)))
    db.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'row ' || g, g %% 7 FROM generate_series(1, %s) g").format(
            ident(name)
        ),
        (rows,),
    )


# -- the awkward table: identifiers and column types ------------------------------------------------


def setup_awkward(db: psycopg.Connection) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(ident(SCHEMA)))
    db.execute(sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'o''k', 'happy')").format(ident(SCHEMA, ENUM)))
    db.execute(sql.SQL("CREATE DOMAIN {} AS integer CHECK (VALUE > 0)").format(ident(SCHEMA, DOMAIN)))
    db.execute(
        sql.SQL(
            """CREATE TABLE {table} (
                {id} int8 PRIMARY KEY,
                {text} text,
                "Amount" numeric,
                "at time" timestamptz,
                doc jsonb,
                raw json,
                blob bytea,
                "Ints" int[],
                mood {enum},
                qty {domain},
                doubled int8 GENERATED ALWAYS AS (qty * 2) STORED
            )"""
        ).format(
            table=ident(SCHEMA, TABLE),
            id=ident(ID),
            text=ident(TEXT),
            enum=ident(SCHEMA, ENUM),
            domain=ident(SCHEMA, DOMAIN),
        )
    )
    t0 = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    rows = [
        (1, "plain", Decimal("12.50"), t0, Jsonb({"a": [1, 2, {"é": None}]}), Json({"a": 1}), b"\x00\xff", [1, None, 3], "sad", 5),
        (2, None, Decimal("NaN"), None, None, None, None, None, None, None),
        (3, "tab\there; 'q' \"dq\" \\ é ✓", Decimal("-1e-20"), t0, Jsonb([]), Json([]), b"", [], "o'k", 1),
        (4, "", Decimal("1"), None, Jsonb("s"), Json("s"), b"\\x", [7], "happy", 2),
        (5, "gone", Decimal("2"), t0, None, None, None, None, None, 3),
        (6, "same", Decimal("3"), t0, Jsonb({"a": 2, "b": 1}), None, None, None, None, 4),
    ]  # fmt: skip
    db.cursor().executemany(
        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(
            bindable_ident(db, SCHEMA, TABLE)
        ),
        rows,
    )


def awkward_update(db: psycopg.Connection, assignments: str, row_id: int, *params: Any) -> None:
    db.execute(
        sql.SQL("UPDATE {} SET " + assignments + " WHERE {} = %s").format(
            bindable_ident(db, SCHEMA, TABLE), bindable_ident(db, ID)
        ),
        (*params, row_id),
    )


def test_unchanged_table_is_ok_without_reading_the_store(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    setup_awkward(db)
    store, snap = snapshot(database_url, tmp_path, [(SCHEMA, TABLE)])
    seen: list[int] = []
    result = verify_one(db, store, snap, progress=seen.append)
    assert result.ok and result.differences == [] and not result.differences_truncated
    assert (result.schema, result.table) == (SCHEMA, TABLE)
    assert result.snapshot_rows == result.live_rows == 6
    assert result.live_checksum == result.snapshot_checksum == snap.tables[0].checksum
    assert result.note == ""
    assert sum(seen) == 6
    assert temp_tables_left(db) == []
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_changes_in_every_column_type_are_named(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    setup_awkward(db)
    store, snap = snapshot(database_url, tmp_path, [(SCHEMA, TABLE)])
    awkward_update(db, "raw = %s", 1, Json({"a": 2}))  # json: no equality operator, compared as text
    awkward_update(db, '"Amount" = 0, "Ints" = %s', 2, [])  # NaN -> 0, NULL -> empty array
    awkward_update(
        db, '"at time" = "at time" + interval \'1 microsecond\', doc = %s, blob = %s, mood = %s', 3,
        Jsonb([None]), b"\x00", "happy",
    )  # fmt: skip
    awkward_update(db, "qty = 9", 4)  # the generated column follows; only stored columns are compared
    awkward_update(db, "doc = %s", 6, Jsonb({"b": 1, "a": 2}))  # the same jsonb value: not a change
    db.execute(sql.SQL("DELETE FROM {} WHERE {} = 5").format(ident(SCHEMA, TABLE), ident(ID)))
    db.execute(
        sql.SQL("INSERT INTO {} ({}, {}) VALUES (7, 'new')").format(
            ident(SCHEMA, TABLE), ident(ID), ident(TEXT)
        )
    )

    result = verify_one(db, store, snap)
    assert not result.ok
    assert summary(result) == [
        ("changed", {ID: 1}, ["raw"]),
        ("changed", {ID: 2}, ["Amount", "Ints"]),
        ("changed", {ID: 3}, ["at time", "doc", "blob", "mood"]),
        ("changed", {ID: 4}, ["qty"]),
        ("missing", {ID: 5}, []),
        ("extra", {ID: 7}, []),
    ]
    assert not result.differences_truncated and result.note == ""
    assert result.live_rows == 6 and result.live_checksum != result.snapshot_checksum
    assert result.to_dict()["differences"][0] == {"kind": "changed", "key": {ID: 1}, "columns": ["raw"]}
    assert temp_tables_left(db) == []


def test_one_updated_one_deleted_one_inserted(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    make_simple(db, "t", 100)
    store, snap = snapshot(database_url, tmp_path, [("public", "t")])
    db.execute("UPDATE t SET v = 'changed' WHERE id = 5")
    db.execute("UPDATE t SET n = n WHERE id = 6")  # rewritten, same value: not a difference
    db.execute("DELETE FROM t WHERE id = 7")
    db.execute("INSERT INTO t VALUES (1000, 'new', 1)")
    seen: list[int] = []
    result = verify_one(db, store, snap, progress=seen.append)
    assert summary(result) == [
        ("changed", {"id": 5}, ["v"]),
        ("missing", {"id": 7}, []),
        ("extra", {"id": 1000}, []),
    ]
    assert not result.ok and result.snapshot_rows == 100 and result.live_rows == 100
    assert sum(seen) == 100
    assert result.to_dict() == {
        "schema": "public", "table": "t", "snapshot_rows": 100, "live_rows": 100,
        "snapshot_checksum": snap.tables[0].checksum, "live_checksum": result.live_checksum, "ok": False,
        "differences": [
            {"kind": "changed", "key": {"id": 5}, "columns": ["v"]},
            {"kind": "missing", "key": {"id": 7}, "columns": []},
            {"kind": "extra", "key": {"id": 1000}, "columns": []},
        ],
        "differences_truncated": False, "note": "",
    }  # fmt: skip


def test_scattered_changes_in_a_large_table_are_found_by_bisection(
    db: psycopg.Connection, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_simple(db, "big", 20_000)
    store, snap = snapshot(database_url, tmp_path, [("public", "big")])
    db.execute("UPDATE big SET n = -1 WHERE id = 137")
    db.execute("DELETE FROM big WHERE id = 9999")
    db.execute("INSERT INTO big VALUES (30000, 'beyond the last key', 0)")

    leaves: list[tuple[Any, Any]] = []
    real_diff_rows = diff._Bisector._diff_rows

    def spy(self: Any, lo: Any, hi: Any, limit: int) -> list[RowDifference]:
        leaves.append((lo, hi))
        return real_diff_rows(self, lo, hi, limit)

    monkeypatch.setattr(diff._Bisector, "_diff_rows", spy)
    seen: list[int] = []
    result = verify_one(db, store, snap, progress=seen.append)
    assert not result.ok
    assert summary(result) == [
        ("changed", {"id": 137}, ["n"]),
        ("missing", {"id": 9999}, []),
        ("extra", {"id": 30000}, []),
    ]
    assert result.live_rows == 20_000 and sum(seen) == 20_000 and len(seen) > 16  # settled range by range
    # Only small ranges around the three changes were compared row by row.
    assert len(leaves) == 3
    for lo, hi in leaves:
        where = ["true"]
        if lo is not None:
            where.append(f"id >= {int(lo[0])}")
        if hi is not None:
            where.append(f"id < {int(hi[0])}")
        (count,) = db.execute(f"SELECT count(*) FROM big WHERE {' AND '.join(where)}").fetchone() or (0,)
        assert 0 < count <= LEAF_ROWS
    assert temp_tables_left(db) == []


def test_composite_primary_key(db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    setup_awkward(db)  # for the enum type
    table = "Pairs; «ü» 100%s%%"
    db.execute(
        sql.SQL(
            'CREATE TABLE {} ({region} text COLLATE "POSIX", {mood} {enum}, {n} int, v text, '
            "PRIMARY KEY ({region}, {mood}, {n}))"
        ).format(
            ident(SCHEMA, table),
            region=ident('Région "r"'),
            mood=ident("mood"),
            n=ident("n; 2"),
            enum=ident(SCHEMA, ENUM),
        )
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT r, m, g, 'v' || g FROM unnest(ARRAY['Zürich', 'aarhus', 'Ödön', 'Écho', 'x;y']) r, "
            "unnest(enum_range(NULL::{})) m, generate_series(1, 200) g"
        ).format(ident(SCHEMA, table), ident(SCHEMA, ENUM))
    )
    store, snap = snapshot(database_url, tmp_path, [(SCHEMA, table)])
    assert snap.tables[0].row_count == 3000
    target = ident(SCHEMA, table)
    db.execute(sql.SQL("UPDATE {} SET v = 'changed' WHERE {} = 'Ödön' AND mood = 'o''k' AND {} = 150").format(
        target, ident('Région "r"'), ident("n; 2")))  # fmt: skip
    db.execute(sql.SQL("DELETE FROM {} WHERE {} = 'aarhus' AND mood = 'happy' AND {} = 3").format(
        target, ident('Région "r"'), ident("n; 2")))  # fmt: skip
    db.execute(sql.SQL("INSERT INTO {} VALUES ('Zürich', 'sad', 1000, 'new')").format(target))

    result = verify_one(db, store, snap)
    assert not result.ok
    region, n = 'Région "r"', "n; 2"
    # key order under the columns' collation (POSIX: byte order)
    assert summary(result) == [
        ("extra", {region: "Zürich", "mood": "sad", n: 1000}, []),
        ("missing", {region: "aarhus", "mood": "happy", n: 3}, []),
        ("changed", {region: "Ödön", "mood": "o'k", n: 150}, ["v"]),
    ]


def test_table_without_primary_key(db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    db.execute('CREATE TABLE nopk (a int, b text, "at" timestamptz, j json)')
    db.execute(
        "INSERT INTO nopk SELECT g, 'row ' || g, NULL, json_build_object('g', g) FROM generate_series(1, 300) g"
    )
    db.execute("INSERT INTO nopk SELECT * FROM nopk WHERE a = 3 UNION ALL SELECT * FROM nopk WHERE a = 3")
    db.execute("INSERT INTO nopk VALUES (-1, NULL, 'infinity', '[ 1 ]')")  # a value Python cannot hold
    store, snap = snapshot(database_url, tmp_path, [("public", "nopk")])
    # one of the three identical rows goes, and the 'infinity' row changes
    db.execute("DELETE FROM nopk WHERE ctid = (SELECT ctid FROM nopk WHERE a = 3 LIMIT 1)")
    db.execute("UPDATE nopk SET j = '[1]' WHERE a = -1")

    result = verify_one(db, store, snap)
    assert not result.ok and NO_PK_NOTE in result.note
    assert result.snapshot_rows == 303 and result.live_rows == 302
    found = sorted(summary(result), key=lambda d: (d[0], d[1]["a"]))
    assert found == [
        ("extra", {"a": -1, "b": None, "at": "infinity", "j": "[1]"}, []),
        ("missing", {"a": -1, "b": None, "at": "infinity", "j": "[ 1 ]"}, []),
        ("missing", {"a": 3, "b": "row 3", "at": None, "j": '{"g" : 3}'}, []),
    ]
    assert temp_tables_left(db) == []


def test_max_examples_truncates(db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    make_simple(db, "t", 2000)
    db.execute("CREATE TABLE nopk (a int)")
    db.execute("INSERT INTO nopk SELECT generate_series(1, 10)")
    store, snap = snapshot(database_url, tmp_path, [("public", "t"), ("public", "nopk")])
    changed = list(range(100, 1300, 100))  # 12 rows
    db.execute("UPDATE t SET v = 'x' WHERE id = ANY(%s)", (changed,))
    db.execute("DELETE FROM nopk WHERE a <= 4")

    def run(table: str, limit: int) -> TableVerification:
        return verify_one(db, store, snap, tables=[("public", table)], max_examples=limit)

    five = run("t", 5)
    assert [d.key["id"] for d in five.differences] == changed[:5] and five.differences_truncated
    twelve = run("t", 12)
    assert [d.key["id"] for d in twelve.differences] == changed and not twelve.differences_truncated
    none = run("t", 0)
    assert none.differences == [] and none.differences_truncated and not none.ok
    two = run("nopk", 2)
    assert len(two.differences) == 2 and two.differences_truncated
    assert {d.kind for d in two.differences} == {"missing"} and {d.key["a"] for d in two.differences} <= {
        1,
        2,
        3,
        4,
    }
    four = run("nopk", 4)
    assert sorted(d.key["a"] for d in four.differences) == [1, 2, 3, 4] and not four.differences_truncated
    assert temp_tables_left(db) == []


def test_damaged_snapshot_is_refused_before_any_query(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    make_simple(db, "a", 500)
    make_simple(db, "b", 500)
    store, snap = snapshot(database_url, tmp_path, [("public", "a"), ("public", "b")])
    entry = snap.tables[1].files[0]
    path = store.snapshot_dir(snap.id) / entry.name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    actual = hashlib.sha256(raw).hexdigest()

    closed = psycopg.connect(database_url)
    closed.close()  # any query on it would raise OperationalError instead
    with pytest.raises(SnapshotCorrupt) as caught:
        verify_snapshot(closed, store, snap, tables=[("public", "a")])
    assert entry.name in caught.value.message and entry.sha256 in caught.value.message
    assert actual in caught.value.message and caught.value.exit_code == 3

    (path).unlink()
    with pytest.raises(SnapshotCorrupt, match="missing"):
        verify_snapshot(closed, store, snap)

    # Called directly on a damaged copy, a verify that needs the data stops, leaving nothing behind.
    path.write_bytes(bytes(raw))
    db.execute("UPDATE b SET v = 'x' WHERE id = 1")
    with pytest.raises(SnapshotCorrupt):
        verify_table(db, store, snap, snap.tables[1])
    assert temp_tables_left(db) == []
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_unknown_tables_are_rejected_with_the_snapshots_list(
    database_url: str, tmp_path: Path, db: psycopg.Connection
) -> None:
    make_simple(db, "a", 5)
    store, snap = snapshot(database_url, tmp_path, [("public", "a")])
    closed = psycopg.connect(database_url)
    closed.close()
    with pytest.raises(SnapshotError, match=r"has no table public\.zz.*it has: public\.a") as caught:
        verify_snapshot(closed, store, snap, tables=[("public", "a"), ("public", "zz")])
    assert caught.value.fields["tables"] == ["public.a"] and not isinstance(caught.value, SnapshotCorrupt)


def test_changed_columns_and_missing_table(db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    make_simple(db, "t", 50)
    db.execute('CREATE TABLE gone (id int PRIMARY KEY, "Odd; col" text)')
    store, snap = snapshot(database_url, tmp_path, [("public", "t"), ("public", "gone")])
    db.execute("ALTER TABLE t ADD COLUMN extra int, ALTER COLUMN n TYPE bigint")
    db.execute("UPDATE t SET v = 'changed' WHERE id = 10")
    db.execute("DROP TABLE gone")
    t, gone = verify_snapshot(db, store, snap)
    assert not t.ok and t.live_checksum is None and t.live_rows == 50
    assert '"extra"' in t.note and "not in the snapshot" in t.note
    assert 'type changed: "n" (integer -> bigint)' in t.note
    assert summary(t) == [("changed", {"id": 10}, ["v"])]  # the columns both sides share are compared
    assert not gone.ok and gone.live_rows is None and "does not exist" in gone.note

    db.execute("UPDATE t SET v = 'row 10' WHERE id = 10")
    db.execute("ALTER TABLE t DROP COLUMN v")
    (t,) = verify_snapshot(db, store, snap, tables=[("public", "t")])
    assert not t.ok and t.differences == []
    assert 'missing in the live table: "v"' in t.note and "the 1 compared columns match" in t.note


def test_generated_column_difference_is_reported(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    if int(db.info.server_version) < 170000:
        pytest.skip("ALTER COLUMN ... SET EXPRESSION needs PostgreSQL 17")
    db.execute("CREATE TABLE g (id int PRIMARY KEY, x int, y int GENERATED ALWAYS AS (x + 1) STORED)")
    db.execute("INSERT INTO g (id, x) SELECT g, g FROM generate_series(1, 400) g")
    store, snap = snapshot(database_url, tmp_path, [("public", "g")])
    db.execute("ALTER TABLE g ALTER COLUMN y SET EXPRESSION AS (x + 2)")
    result = verify_one(db, store, snap)
    assert not result.ok and result.differences == []
    assert "generated column values differ" in result.note and '"y"' in result.note


def test_verify_a_side_by_side_copy_inside_an_open_transaction(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    setup_awkward(db)
    store, snap = snapshot(database_url, tmp_path, [(SCHEMA, TABLE)])
    (tm,) = snap.tables
    db.execute(sql.SQL('CREATE SCHEMA "Side by side"'))
    db.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            ident("Side by side", "copy"), ident(SCHEMA, TABLE)
        )
    )
    load_table_copy(db, store, snap.id, tm, "Side by side", "copy")

    with psycopg.connect(database_url) as conn:  # not autocommit: verify runs in a savepoint
        conn.execute("SELECT 1")
        result = verify_table(conn, store, snap, tm, live_schema="Side by side", live_table="copy")
        assert result.ok and (result.schema, result.table) == ("Side by side", "copy")
        assert "compared with snapshot table" in result.note
        conn.execute(
            sql.SQL("UPDATE {} SET qty = 99 WHERE {} = 2").format(ident("Side by side", "copy"), ident(ID))
        )
        result = verify_table(conn, store, snap, tm, live_schema="Side by side", live_table="copy")
        assert summary(result) == [("changed", {ID: 2}, ["qty"])]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert temp_tables_left(conn) == []


def test_changed_primary_key_and_a_view_in_place_of_the_table(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    make_simple(db, "t", 300)
    make_simple(db, "v", 10)
    store, snap = snapshot(database_url, tmp_path, [("public", "t"), ("public", "v")])
    db.execute("ALTER TABLE t DROP CONSTRAINT t_pkey")
    db.execute("UPDATE t SET v = 'changed' WHERE id = 42")
    db.execute("DROP TABLE v; CREATE VIEW v AS SELECT * FROM t")
    t, v = verify_snapshot(db, store, snap)
    assert not t.ok and "primary key differs" in t.note
    assert sorted(summary(t), key=lambda d: d[0]) == [
        ("extra", {"id": 42, "v": "changed", "n": 0}, []),
        ("missing", {"id": 42, "v": "row 42", "n": 0}, []),
    ]
    assert not v.ok and v.live_rows is None and "is not a table" in v.note


def test_rows_matching_despite_a_foreign_checksum_are_ok(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    """A manifest checksum the server cannot reproduce (say, hash functions changed in a new major
    version): every row is compared with the snapshot's data instead, and they all match."""
    make_simple(db, "t", 1000)
    store, snap = snapshot(database_url, tmp_path, [("public", "t")])
    snap.tables[0].checksum = "rowhash64-v2:12345"
    result = verify_one(db, store, snap)
    assert result.ok and result.differences == []
    assert "every row matches the snapshot's data" in result.note
    db.execute("DELETE FROM t WHERE id = 999")
    result = verify_one(db, store, snap)
    assert not result.ok and summary(result) == [("missing", {"id": 999}, [])]


def test_json_value_makes_keys_json_ready() -> None:
    value = [Decimal("NaN"), Decimal("1.50"), b"\x00\xff", datetime(2024, 1, 2, tzinfo=timezone.utc), float("inf"),
             {"a": (1, None, True)}, "é"]  # fmt: skip
    assert diff.json_value(value) == [
        "NaN", "1.50", "\\x00ff", "2024-01-02 00:00:00+00:00", "inf", {"a": [1, None, True]}, "é",
    ]  # fmt: skip
    json.dumps(diff.json_value(value), allow_nan=False)


def test_snapshot_data_that_no_longer_fits_its_type_is_an_error(
    db: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    db.execute("CREATE DOMAIN small AS int CHECK (VALUE > 0)")
    db.execute("CREATE TABLE d (id int PRIMARY KEY, q small)")
    db.execute("INSERT INTO d SELECT g, g FROM generate_series(1, 20) g")
    store, snap = snapshot(database_url, tmp_path, [("public", "d")])
    db.execute("DELETE FROM d WHERE q <= 100")
    db.execute("ALTER DOMAIN small ADD CONSTRAINT over_100 CHECK (VALUE > 100) NOT VALID")
    with pytest.raises(SnapshotError, match="for comparison") as caught:
        verify_snapshot(db, store, snap)
    assert not isinstance(caught.value, SnapshotCorrupt)
    assert temp_tables_left(db) == [] and db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
