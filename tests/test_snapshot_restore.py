"""Snapshot restore (issue #3): in-place restore that keeps the table object and all that hangs on it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Json, Jsonb

from dbrollback.errors import RefusedForSafety, RestoreFailed, SnapshotCorrupt, SnapshotError
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.local import LocalStore
from dbrollback.snapshot.manifest import ColumnInfo, SnapshotManifest, TableManifest
from dbrollback.snapshot.restore import (
    STAGING_PREFIX,
    ReferencingKey,
    RestorePlan,
    TableRestoreResult,
    pick_snapshots_at,
    plan_restore,
    restore_many,
    restore_tables,
)

REPO = Path(__file__).resolve().parent.parent

# -- helpers ----------------------------------------------------------------------------------------


def ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def snapshot(url: str, store: LocalStore, *tables: tuple[str, str]) -> SnapshotManifest:
    return capture_tables(url, store, list(tables))


def plan(
    db: psycopg.Connection,
    store: LocalStore,
    snap: SnapshotManifest,
    tables: list[tuple[str, str]] | None = None,
    into: str | None = None,
    **kwargs: Any,
) -> RestorePlan:
    return plan_restore(db, store, snap, tables, into, **kwargs)


def restore(
    db: psycopg.Connection,
    url: str,
    store: LocalStore,
    snap: SnapshotManifest,
    tables: list[tuple[str, str]] | None = None,
    into: str | None = None,
    **kwargs: Any,
) -> list[TableRestoreResult]:
    return restore_tables(url, store, snap, plan(db, store, snap, tables, into), **kwargs)


def row_texts(db: psycopg.Connection, schema: str, table: str, order: str = "id") -> list[str]:
    """Each row's text form: exact values (1.50 is not 1.5, json whitespace counts)."""
    query = sql.SQL("SELECT t::text FROM {} AS t ORDER BY {}").format(ident(schema, table), ident(order))
    return [r[0] for r in db.execute(query).fetchall()]


def unordered_texts(db: psycopg.Connection, schema: str, table: str) -> list[str]:
    return sorted(
        r[0] for r in db.execute(sql.SQL("SELECT t::text FROM {} AS t").format(ident(schema, table)))
    )


def oid_of(db: psycopg.Connection, schema: str, table: str) -> int:
    row = db.execute("SELECT to_regclass(%s)::oid", (ident(schema, table).as_string(db),)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def catalog_fingerprint(db: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    """Everything attached to the table, with oids: equal before and after means untouched."""
    oid = oid_of(db, schema, table)
    q = {
        "relation": "SELECT oid, relfilenode, relacl::text, relrowsecurity, obj_description(oid, 'pg_class') "
        "FROM pg_class WHERE oid = %(o)s",
        "columns": "SELECT attnum, attname, atttypid, attnotnull, attidentity, attgenerated, attacl::text, "
        "col_description(attrelid, attnum) FROM pg_attribute WHERE attrelid = %(o)s AND attnum > 0 ORDER BY 1",
        "defaults": "SELECT oid, adnum, pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = %(o)s ORDER BY 1",
        "indexes": "SELECT indexrelid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %(o)s ORDER BY 1",
        "constraints": "SELECT oid, conname, conrelid, confrelid, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %(o)s OR confrelid = %(o)s ORDER BY 1",
        "triggers": "SELECT oid, tgname, tgenabled, tgisinternal FROM pg_trigger WHERE tgrelid = %(o)s ORDER BY 1",
        "views": "SELECT DISTINCT r.ev_class, pg_get_viewdef(r.ev_class) FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid WHERE d.classid = 'pg_rewrite'::regclass "
        "AND d.refobjid = %(o)s AND r.ev_class <> %(o)s ORDER BY 1",
        "policies": "SELECT oid, polname, pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = %(o)s",
        "publications": "SELECT oid, prpubid FROM pg_publication_rel WHERE prrelid = %(o)s ORDER BY 1",
        "sequences": "SELECT objid, refobjsubid, deptype FROM pg_depend WHERE refobjid = %(o)s "
        "AND classid = 'pg_class'::regclass AND deptype IN ('a', 'i') ORDER BY 1",
    }
    return {name: db.execute(query, {"o": oid}).fetchall() for name, query in q.items()}


def staging_tables(db: psycopg.Connection) -> list[str]:
    rows = db.execute(
        "SELECT relname FROM pg_class WHERE starts_with(relname, %s)", (STAGING_PREFIX,)
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def role(db: psycopg.Connection) -> Iterator[str]:
    name = f"restore_reader_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {}").format(ident(name)))
    try:
        yield name
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(ident(name)))


def make_table(db: psycopg.Connection, name: str = "t", rows: int = 10, *, schema: str = "public") -> None:
    db.execute(
        sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, v text NOT NULL DEFAULT 'x', n numeric)").format(
            ident(schema, name)
        )
    )
    db.execute(
        sql.SQL("INSERT INTO {} (v, n) SELECT 'row ' || g, g * 1.5 FROM generate_series(1, %s) g").format(
            ident(schema, name)
        ),
        (rows,),
    )


# -- replace: exact data, everything attached survives ----------------------------------------------


def test_replace_restores_exact_data_and_keeps_everything_attached(
    db: psycopg.Connection, database_url: str, store: LocalStore, role: str
) -> None:
    db.execute("""
        CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL DEFAULT 'unnamed',
                             qty int CHECK (qty >= 0), price numeric(10, 2));
        CREATE INDEX parent_name_idx ON parent (name);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
        CREATE TABLE audit (op text, id int);
        CREATE FUNCTION log_parent() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO audit VALUES (TG_OP, coalesce(NEW.id, OLD.id)); RETURN NULL; END $$;
        CREATE TRIGGER parent_audit AFTER INSERT OR UPDATE OR DELETE ON parent
            FOR EACH ROW EXECUTE FUNCTION log_parent();
        CREATE VIEW parent_view AS SELECT id, name FROM parent WHERE qty > 5;
        COMMENT ON TABLE parent IS 'the parent table';
        COMMENT ON COLUMN parent.name IS 'its name';
        ALTER TABLE parent ENABLE ROW LEVEL SECURITY;
        CREATE POLICY parent_all ON parent USING (qty IS NOT NULL OR qty IS NULL);
        CREATE PUBLICATION parent_pub FOR TABLE parent;
        INSERT INTO parent SELECT g, 'p' || g, g, g * 1.25 FROM generate_series(1, 20) g;
        INSERT INTO child SELECT g, g FROM generate_series(1, 5) g;
    """)
    db.execute(sql.SQL("GRANT SELECT, UPDATE (qty) ON parent TO {}").format(ident(role)))
    snap = snapshot(database_url, store, ("public", "parent"))
    original = row_texts(db, "public", "parent")
    view_before = db.execute("SELECT * FROM parent_view ORDER BY id").fetchall()
    fingerprint = catalog_fingerprint(db, "public", "parent")

    db.execute("""
        UPDATE parent SET name = 'changed', qty = qty + 100 WHERE id IN (1, 2, 3);
        UPDATE parent SET price = 2.5 WHERE id = 4;  -- 5.00 -> 2.50
        UPDATE parent SET price = 6.2500 WHERE id = 5;  -- numeric(10, 2) stores 6.25: identical
        DELETE FROM parent WHERE id IN (10, 11);
        INSERT INTO parent VALUES (21, 'new', 1, 1), (22, 'new', 2, 2), (23, 'new', 3, NULL);
        DELETE FROM audit;
    """)
    assert row_texts(db, "public", "parent") != original

    the_plan = plan(db, store, snap)
    (tp,) = the_plan.tables
    assert (tp.schema, tp.table, tp.action, tp.key) == ("public", "parent", "replace", ["id"])
    assert (tp.snapshot_rows, tp.live_rows) == (20, 21)
    assert tp.to_delete is None and tp.to_update is None and tp.to_insert is None
    assert tp.referenced_by == [
        ReferencingKey("child_parent_id_fkey", "public", "child", "NO ACTION", False, "NO ACTION", ("id",))
    ]
    assert (tp.key_source, tp.method, tp.cascade_risks) == ("primary key", "merge by primary key", [])
    assert tp.snapshot_bytes == sum(f.bytes for f in snap.tables[0].files) > 0
    seen: list[tuple[str, int]] = []
    (result,) = restore_tables(database_url, store, snap, the_plan, progress=lambda n, r: seen.append((n, r)))

    assert row_texts(db, "public", "parent") == original
    assert table_checksum(db, "public", "parent") == (snap.tables[0].row_count, snap.tables[0].checksum)
    # rows 1-4 differ; row 5 was rewritten with identical values and is left alone
    assert (result.deleted, result.updated, result.inserted) == (3, 4, 2)
    assert (result.action, result.rows_restored, result.checksum_verified, result.attempts) == (
        "replace",
        20,
        True,
        1,
    )
    assert (tp.to_delete, tp.to_update, tp.to_insert) == (3, 4, 2)
    # progress counts stored file bytes (one block here: the table is small)
    assert seen == [("public.parent", tp.snapshot_bytes)]
    assert (result.key_source, result.cascades) == ("primary key", [])
    assert catalog_fingerprint(db, "public", "parent") == fingerprint
    assert db.execute("SELECT * FROM parent_view ORDER BY id").fetchall() == view_before
    assert db.execute("SELECT count(*) FROM child").fetchone() == (5,)
    # user triggers fire as for any DML
    audit = db.execute("SELECT op, count(*) FROM audit GROUP BY op ORDER BY op").fetchall()
    assert audit == [("DELETE", 3), ("INSERT", 2), ("UPDATE", 4)]
    assert staging_tables(db) == []
    json.dumps(the_plan.to_dict())
    assert json.loads(json.dumps(result.to_dict()))["updated"] == 4


def test_restore_round_trips_awkward_identifiers_and_types(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    schema, table, enum, domain = 'Sch; "é" ✓', 'we"ird tä;ble', 'mood "x"', "pos int"
    key, quoted = "K ey;", 'Quoted "Name"'
    db.execute(sql.SQL("CREATE SCHEMA {}").format(ident(schema)))
    db.execute(sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'o''k', 'happy')").format(ident(schema, enum)))
    db.execute(sql.SQL("CREATE DOMAIN {} AS integer CHECK (VALUE > 0)").format(ident(schema, domain)))
    db.execute(
        sql.SQL("""CREATE TABLE {t} (
            {key} int8 PRIMARY KEY, {quoted} text, "Amount" numeric, "at time" timestamptz, doc jsonb,
            raw json, blob bytea, "Ints" int[], tags text[], mood {enum}, qty {domain},
            ident int GENERATED ALWAYS AS IDENTITY,
            doubled int8 GENERATED ALWAYS AS ({key} * 2) STORED{virtual})""").format(
            # virtual generated columns are new in PostgreSQL 18
            virtual=sql.SQL(", tripled int8 GENERATED ALWAYS AS ({} * 3) VIRTUAL").format(ident(key))
            if db.info.server_version >= 180000
            else sql.SQL(""),
            t=ident(schema, table),
            key=ident(key),
            quoted=ident(quoted),
            enum=ident(schema, enum),
            domain=ident(schema, domain),
        )
    )
    insert = sql.SQL(
        'INSERT INTO {} ({}, {}, "Amount", "at time", doc, raw, blob, "Ints", tags, mood, qty) '
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    ).format(ident(schema, table), ident(key), ident(quoted))
    # fmt: off
    rows = [
        (1, "plain", Decimal("12.50"), datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
         Jsonb({"a": [1, 2, {"é": None}]}), Json({"k": 1}), b"\x00\x01\xff", [1, None, 3], ["a b", 'q"'],
         "sad", 5),
        (2, None, Decimal("NaN"), None, None, None, None, None, None, None, None),
        (3, "tab\there; 'quote' \"dq\" \\ é ✓", Decimal("-1e-20"),
         datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), Jsonb([]), Json([]), b"", [], [],
         "o'k", 1),
        (9_000_000_000, "", Decimal("123456789012345678901234567890.123456789"), None, Jsonb("str"),
         Json(None), b"\\x", [2147483647, -2147483648], [None], "happy", 2147483647),
    ]
    # fmt: on
    db.cursor().executemany(insert, rows)
    db.execute(
        sql.SQL("UPDATE {} SET raw = %s::json WHERE {} = 1").format(ident(schema, table), ident(key)),
        ('{"k":  1,   "spaces": true}',),
    )
    snap = snapshot(database_url, store, (schema, table))
    original = row_texts(db, schema, table, key)

    t, k = ident(schema, table), ident(key)
    db.execute(sql.SQL('UPDATE {} SET "Amount" = 12.5 WHERE {} = 1').format(t, k))  # equal, not identical
    db.execute(
        sql.SQL("UPDATE {} SET raw = %s::json WHERE {} = 1").format(t, k), ('{"k": 1, "spaces": true}',)
    )
    db.execute(sql.SQL("UPDATE {} SET ident = DEFAULT, mood = 'happy' WHERE {} = 2").format(t, k))
    db.execute(
        sql.SQL('UPDATE {} SET {} = NULL, "Ints" = NULL, blob = NULL, doc = NULL WHERE {} = 3').format(
            t, ident(quoted), k
        )
    )
    db.execute(sql.SQL("DELETE FROM {} WHERE {} = 9000000000").format(t, k))
    db.cursor().execute(insert, (7, "new", Decimal(1), None, None, None, None, None, None, "sad", 3))
    assert row_texts(db, schema, table, key) != original

    (result,) = restore(db, database_url, store, snap)
    assert (result.schema, result.table) == (schema, table)
    assert (result.deleted, result.updated, result.inserted) == (1, 3, 1)
    assert row_texts(db, schema, table, key) == original
    assert table_checksum(db, schema, table) == (4, snap.tables[0].checksum)
    # the identity column is ALWAYS again after being switched for the update
    assert db.execute(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = %s AND attname = 'ident'",
        (oid_of(db, schema, table),),
    ).fetchone() == ("a",)
    nan = db.execute(sql.SQL('SELECT "Amount" FROM {} WHERE {} = 2').format(t, k)).fetchone()
    assert nan is not None and nan[0].is_nan()

    # side by side, into a schema with an awkward name: types, generated columns, key all come back
    side = 'Side "é"; x'
    (copy,) = restore(db, database_url, store, snap, into=side)
    assert (copy.schema, copy.action, copy.rows_restored) == (side, "create", 4)
    assert row_texts(db, side, table, key) == original
    assert table_checksum(db, side, table) == (4, snap.tables[0].checksum)


def test_sequences_move_past_restored_values_and_never_backwards(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE ser (id serial PRIMARY KEY, v text);
        CREATE TABLE idt (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
        INSERT INTO ser (v) SELECT 'r' || g FROM generate_series(1, 5) g;
        INSERT INTO idt (v) SELECT 'r' || g FROM generate_series(1, 5) g;
    """)
    snap = snapshot(database_url, store, ("public", "ser"), ("public", "idt"))
    ser_seq = db.execute("SELECT pg_get_serial_sequence('ser', 'id')").fetchone()
    idt_seq = db.execute("SELECT pg_get_serial_sequence('idt', 'id')").fetchone()
    assert ser_seq is not None and idt_seq is not None

    # rows added after the snapshot are removed; the sequences stay where they are (15)
    db.execute("INSERT INTO ser (v) SELECT 'late' FROM generate_series(1, 10)")
    db.execute("INSERT INTO idt (v) SELECT 'late' FROM generate_series(1, 10)")
    results = restore(db, database_url, store, snap)
    assert [(r.table, r.deleted, r.inserted) for r in results] == [("ser", 10, 0), ("idt", 10, 0)]
    for r, seq in zip(results, (ser_seq[0], idt_seq[0]), strict=True):
        (entry,) = r.sequences_set
        assert (entry.sequence, entry.column, entry.last_value, entry.advanced) == (seq, "id", 15, False)
    assert db.execute("INSERT INTO ser (v) VALUES ('next') RETURNING id").fetchone() == (16,)
    assert db.execute("INSERT INTO idt (v) VALUES ('next') RETURNING id").fetchone() == (16,)

    # all rows gone and the sequences reset: the restore moves them past the restored max (5)
    db.execute("DELETE FROM ser; DELETE FROM idt")
    db.execute("SELECT setval(pg_get_serial_sequence('ser', 'id'), 1, false)")
    db.execute("ALTER TABLE idt ALTER COLUMN id RESTART WITH 1")
    results = restore(db, database_url, store, snap)
    assert [(r.table, r.deleted, r.inserted) for r in results] == [("ser", 0, 5), ("idt", 0, 5)]
    for r in results:
        (entry,) = r.sequences_set
        assert (entry.last_value, entry.advanced) == (5, True)
    assert row_texts(db, "public", "ser") == [f"({i},r{i})" for i in range(1, 6)]
    assert row_texts(db, "public", "idt") == [f"({i},r{i})" for i in range(1, 6)]
    assert db.execute("INSERT INTO ser (v) VALUES ('next') RETURNING id").fetchone() == (6,)
    assert db.execute("INSERT INTO idt (v) VALUES ('next') RETURNING id").fetchone() == (6,)


# -- create: dropped table, side by side --------------------------------------------------------------


def test_dropped_table_is_recreated_with_its_primary_key(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE gone (id serial PRIMARY KEY, created timestamptz NOT NULL DEFAULT now(),
                           label text DEFAULT 'x', twice int GENERATED ALWAYS AS (id * 2) STORED);
        INSERT INTO gone (label) SELECT 'l' || g FROM generate_series(1, 5) g;
        INSERT INTO gone (label) VALUES (NULL);
    """)
    snap = snapshot(database_url, store, ("public", "gone"))
    original = row_texts(db, "public", "gone")
    db.execute("DROP TABLE gone")

    the_plan = plan(db, store, snap)
    (tp,) = the_plan.tables
    assert (tp.action, tp.live_rows, tp.snapshot_rows, tp.key) == ("create", None, 6, ["id"])
    (result,) = restore_tables(database_url, store, snap, the_plan)
    assert (result.action, result.rows_restored, result.inserted, result.checksum_verified) == (
        "create",
        6,
        6,
        True,
    )
    # the serial's sequence was dropped with the table: that default cannot come back
    assert [(s.column, s.default) for s in result.skipped_defaults] == [
        ("id", "nextval('gone_id_seq'::regclass)")
    ]
    assert "does not exist" in result.skipped_defaults[0].reason
    assert row_texts(db, "public", "gone") == original
    assert table_checksum(db, "public", "gone") == (6, snap.tables[0].checksum)
    oid = oid_of(db, "public", "gone")
    assert db.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary",
        (oid,),
    ).fetchall() == [("id",)]
    columns = db.execute(
        "SELECT a.attname, a.attnotnull, a.attgenerated, pg_get_expr(d.adbin, d.adrelid) "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = %s AND a.attnum > 0 ORDER BY a.attnum",
        (oid,),
    ).fetchall()
    assert columns == [
        ("id", True, "", None),
        ("created", True, "", "now()"),
        ("label", False, "", "'x'::text"),
        ("twice", False, "s", "(id * 2)"),
    ]
    # the generated column really is one
    db.execute("INSERT INTO gone (id) VALUES (100)")
    assert db.execute("SELECT twice, label FROM gone WHERE id = 100").fetchone() == (200, "x")


def test_into_schema_restores_side_by_side_without_touching_live(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db)
    snap = snapshot(database_url, store, ("public", "t"))
    original = row_texts(db, "public", "t")
    db.execute("UPDATE t SET v = 'changed' WHERE id <= 3; DELETE FROM t WHERE id = 10")
    live_rows, live_sum = row_texts(db, "public", "t"), table_checksum(db, "public", "t")
    fingerprint = catalog_fingerprint(db, "public", "t")
    into = 'restored "é"; x'

    the_plan = plan(db, store, snap, into=into)
    (tp,) = the_plan.tables
    assert (tp.schema, tp.table, tp.action, tp.source_schema) == (into, "t", "create", "public")
    (result,) = restore_tables(database_url, store, snap, the_plan)
    assert (result.schema, result.action, result.rows_restored) == (into, "create", 10)
    assert [(s.column, s.reason) for s in result.skipped_defaults] == [
        ("id", "would share the live table's sequence")
    ]
    assert row_texts(db, into, "t") == original
    assert table_checksum(db, into, "t") == (10, snap.tables[0].checksum)
    assert row_texts(db, "public", "t") == live_rows
    assert table_checksum(db, "public", "t") == live_sum
    assert catalog_fingerprint(db, "public", "t") == fingerprint
    # the side copy does not depend on the live table: it can still be dropped on its own
    assert db.execute(
        "SELECT count(*) FROM pg_depend WHERE refobjid = %s AND objid <> %s AND deptype = 'n'",
        (oid_of(db, "public", "t"), oid_of(db, into, "t")),
    ).fetchone() == (0,)

    with pytest.raises(RefusedForSafety, match="already exists") as refused:
        plan(db, store, snap, into=into)
    assert refused.value.exit_code == 3


# -- refusals and failures leave everything unchanged ------------------------------------------------


def test_column_mismatch_is_refused_and_into_schema_suggested(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db)
    snap = snapshot(database_url, store, ("public", "t"))
    db.execute("ALTER TABLE t ADD COLUMN extra int, ALTER COLUMN n TYPE numeric(10, 2)")
    with pytest.raises(RefusedForSafety) as refused:
        plan(db, store, snap)
    message = refused.value.message
    assert refused.value.exit_code == 3
    assert '"extra"' in message and "numeric(10,2) in the live table but numeric in the snapshot" in message
    assert "--into-schema" in message
    assert len(refused.value.fields["differences"]) == 2

    db.execute("ALTER TABLE t DROP COLUMN extra, ALTER COLUMN n TYPE numeric, DROP COLUMN v")
    with pytest.raises(RefusedForSafety, match='column "v" \\(text\\) is missing'):
        plan(db, store, snap)
    # side by side still works
    (result,) = restore(db, database_url, store, snap, into="side")
    assert result.rows_restored == 10


def test_generated_expression_change_is_refused(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("CREATE TABLE g (id int PRIMARY KEY, d int GENERATED ALWAYS AS (id * 2) STORED)")
    db.execute("INSERT INTO g (id) VALUES (1), (2)")
    snap = snapshot(database_url, store, ("public", "g"))
    db.execute("ALTER TABLE g DROP COLUMN d")
    db.execute("ALTER TABLE g ADD COLUMN d int GENERATED ALWAYS AS (id * 3) STORED")
    with pytest.raises(RefusedForSafety, match="computed as"):
        plan(db, store, snap)


def test_corrupt_file_refused_before_touching_the_database(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db)
    snap = snapshot(database_url, store, ("public", "t"))
    db.execute("UPDATE t SET v = 'changed'")
    before = row_texts(db, "public", "t")
    the_plan = plan(db, store, snap)
    entry = snap.tables[0].files[0]
    path = store.snapshot_dir(snap.id) / entry.name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    actual = hashlib.sha256(raw).hexdigest()
    # an unreachable server: the refusal comes before any connection is attempted
    with pytest.raises(SnapshotCorrupt) as corrupt:
        restore_tables("postgresql://nobody@/nowhere?host=/nonexistent", store, snap, the_plan)
    assert corrupt.value.exit_code == 3
    for part in (entry.name, entry.sha256, actual):
        assert part in corrupt.value.message
    assert corrupt.value.fields["files"] == [entry.name]
    with pytest.raises(SnapshotCorrupt):
        restore_tables(database_url, store, snap, the_plan)
    assert row_texts(db, "public", "t") == before

    path.unlink()
    with pytest.raises(SnapshotCorrupt, match="missing"):
        restore_tables(database_url, store, snap, the_plan)
    assert row_texts(db, "public", "t") == before


def test_busy_table_is_retried_then_refused(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db)
    snap = snapshot(database_url, store, ("public", "t"))
    db.execute("DELETE FROM t WHERE id > 5")
    before = table_checksum(db, "public", "t")
    the_plan = plan(db, store, snap)
    waits: list[float] = []
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(RefusedForSafety) as refused:
            restore_tables(
                database_url, store, snap, the_plan, lock_timeout="50ms", retries=3, sleep=waits.append
            )
        assert refused.value.exit_code == 3 and refused.value.fields["attempts"] == 4
        assert waits == [0.2, 0.4, 0.8]
        holder.rollback()
    assert table_checksum(db, "public", "t") == before
    assert staging_tables(db) == []

    # the lock goes away during the backoff: the next attempt succeeds
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        waits.clear()

        def release(seconds: float) -> None:
            waits.append(seconds)
            holder.rollback()

        (result,) = restore_tables(database_url, store, snap, the_plan, lock_timeout="50ms", sleep=release)
    assert (result.attempts, result.inserted) == (2, 5) and waits == [0.2]
    assert table_checksum(db, "public", "t") == (10, snap.tables[0].checksum)


def test_foreign_key_violation_fails_with_the_constraint_named(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE parent (id int PRIMARY KEY, v text);
        CREATE TABLE child (id int PRIMARY KEY, pid int CONSTRAINT "child → parent" REFERENCES parent);
        INSERT INTO parent VALUES (1, 'a'), (2, 'b'), (3, 'c');
    """)
    snap = snapshot(database_url, store, ("public", "parent"))
    db.execute("INSERT INTO parent VALUES (4, 'd'); UPDATE parent SET v = 'B' WHERE id = 2")
    db.execute("INSERT INTO child VALUES (1, 4)")
    before = row_texts(db, "public", "parent"), row_texts(db, "public", "child")
    with pytest.raises(RestoreFailed) as failed:
        restore(db, database_url, store, snap)
    assert failed.value.exit_code == 4
    assert failed.value.fields["constraint"] == "child → parent"
    assert "child → parent" in failed.value.message and "public.child" in failed.value.message
    assert "rolled back" in failed.value.message
    assert (row_texts(db, "public", "parent"), row_texts(db, "public", "child")) == before

    # restoring both tables together in one transaction works: children are handled first
    db.execute("INSERT INTO child VALUES (2, 1)")
    snap2 = snapshot(database_url, store, ("public", "child"), ("public", "parent"))
    db.execute("INSERT INTO parent VALUES (5, 'e'); INSERT INTO child VALUES (3, 5)")
    db.execute("DELETE FROM child WHERE id = 2; DELETE FROM parent WHERE id = 1")
    results = restore(db, database_url, store, snap2)
    assert [(r.table, r.deleted, r.inserted) for r in results] == [("child", 1, 1), ("parent", 1, 1)]
    assert row_texts(db, "public", "parent") == ["(1,a)", "(2,B)", "(3,c)", "(4,d)"]
    assert row_texts(db, "public", "child") == ["(1,4)", "(2,1)"]


def test_multi_table_restore_is_one_transaction(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db, "a")
    make_table(db, "b")
    make_table(db, "c")
    db.execute("CREATE TABLE a_child (id int PRIMARY KEY, a_id int REFERENCES a)")
    snap = snapshot(database_url, store, ("public", "a"), ("public", "b"), ("public", "c"))
    originals = [row_texts(db, "public", t) for t in ("a", "b", "c")]
    db.execute("INSERT INTO b (v) VALUES ('new'); DELETE FROM b WHERE id <= 5; DROP TABLE c")
    db.execute("INSERT INTO a (v) VALUES ('new'); INSERT INTO a_child VALUES (1, 11)")  # a's 11 cannot go
    before = row_texts(db, "public", "a"), row_texts(db, "public", "b")
    the_plan = plan(db, store, snap)
    assert [(t.table, t.action) for t in the_plan.tables] == [
        ("a", "replace"),
        ("b", "replace"),
        ("c", "create"),
    ]
    with pytest.raises(RestoreFailed, match="a_child"):
        restore_tables(database_url, store, snap, the_plan)
    # c was created and b's rows changed before a's delete failed (deletes run in reverse
    # order): all of it was rolled back
    assert (row_texts(db, "public", "a"), row_texts(db, "public", "b")) == before
    assert db.execute("SELECT to_regclass('public.c')").fetchone() == (None,)

    db.execute("DELETE FROM a_child")
    results = restore(db, database_url, store, snap)
    assert [(r.table, r.action, r.deleted, r.inserted) for r in results] == [
        ("a", "replace", 1, 0),
        ("b", "replace", 1, 5),
        ("c", "create", 0, 10),
    ]
    assert [row_texts(db, "public", t) for t in ("a", "b", "c")] == originals


def test_checksum_mismatch_after_swap_rolls_back(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    """A trigger that rewrites restored rows: the live checksum catches it before COMMIT."""
    make_table(db)
    db.execute("""
        CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.v := upper(NEW.v); RETURN NEW; END $$;
    """)
    snap = snapshot(database_url, store, ("public", "t"))
    db.execute("UPDATE t SET v = 'edited' WHERE id = 1")
    db.execute("CREATE TRIGGER t_shout BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION shout()")
    before = row_texts(db, "public", "t")
    with pytest.raises(RestoreFailed, match="checksum") as failed:
        restore(db, database_url, store, snap)
    assert failed.value.exit_code == 4
    assert row_texts(db, "public", "t") == before


def test_table_without_primary_key_is_replaced_whole(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("CREATE TABLE nopk (id int, v text)")
    db.execute("INSERT INTO nopk SELECT g % 5, 'v' || g FROM generate_series(1, 20) g")
    db.execute("INSERT INTO nopk SELECT id, v FROM nopk WHERE id = 1")  # duplicate rows
    snap = snapshot(database_url, store, ("public", "nopk"))
    original = unordered_texts(db, "public", "nopk")
    db.execute("DELETE FROM nopk WHERE id = 2; UPDATE nopk SET v = 'x' WHERE id = 3")
    the_plan = plan(db, store, snap)
    assert the_plan.tables[0].key == [] and the_plan.tables[0].method == "delete all rows, insert all rows"
    (result,) = restore_tables(database_url, store, snap, the_plan)
    assert (result.deleted, result.updated, result.inserted) == (20, 0, 24)
    assert unordered_texts(db, "public", "nopk") == original


def test_plan_selects_tables_and_rejects_unknown_ones(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db, "a")
    make_table(db, "b")
    snap = snapshot(database_url, store, ("public", "a"), ("public", "b"))
    assert [t.table for t in plan(db, store, snap, [("public", "b")]).tables] == ["b"]
    with pytest.raises(SnapshotError, match=re.escape("does not hold public.c")):
        plan(db, store, snap, [("public", "c")])
    db.execute("DROP TABLE b; CREATE VIEW b AS SELECT 1 AS id")
    with pytest.raises(RefusedForSafety, match="not a table"):
        plan(db, store, snap, [("public", "b")])


# -- matching keys, foreign keys from tables outside the restore -------------------------------------


def test_unique_index_is_the_key_without_a_primary_key(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    """No primary key: the narrowest usable unique index matches rows, so a cascading child keeps
    its rows (a plain DELETE of the whole parent used to wipe it)."""
    schema, parent, child, code = 'Sch "k"; é', "pa rent", "Ch;ild", 'Co"de'
    db.execute(sql.SQL("CREATE SCHEMA {}").format(ident(schema)))
    db.execute(
        sql.SQL("""
        CREATE TABLE {p} (region text NOT NULL, {code} text NOT NULL, name text, nick text,
                          CONSTRAINT {wide} UNIQUE (region, {code}));
        CREATE UNIQUE INDEX {narrow} ON {p} ({code});
        CREATE UNIQUE INDEX nullable_nick ON {p} (nick);
        CREATE UNIQUE INDEX partial_name ON {p} (name) WHERE name IS NOT NULL;
        CREATE UNIQUE INDEX lower_name ON {p} (lower(name));
        CREATE TABLE {c} (id int PRIMARY KEY,
                          {code} text CONSTRAINT "child fk" REFERENCES {p} ({code}) ON DELETE CASCADE);
        INSERT INTO {p} VALUES ('eu', 'a', 'Alpha', NULL), ('eu', 'b', 'Beta', 'bb'), ('us', 'c', 'Gamma', NULL);
        INSERT INTO {c} VALUES (1, 'a'), (2, 'b');
        """).format(
            p=ident(schema, parent),
            c=ident(schema, child),
            code=ident(code),
            wide=ident("wide key"),
            narrow=ident('narrow "key"'),
        )
    )
    snap = snapshot(database_url, store, (schema, parent))
    original = row_texts(db, schema, parent, code)
    db.execute(
        sql.SQL("UPDATE {} SET name = 'changed' WHERE {} = 'a'").format(ident(schema, parent), ident(code))
    )
    db.execute(sql.SQL("INSERT INTO {} VALUES ('us', 'd', 'Delta', NULL)").format(ident(schema, parent)))

    the_plan = plan(db, store, snap)
    (tp,) = the_plan.tables
    assert (tp.key, tp.key_source) == ([code], 'unique index "narrow ""key"""')
    assert tp.method == 'merge by unique index "narrow ""key"""'
    # the child's key points at the key column: only deletes would cascade
    assert [(r.table, r.on_delete, r.referenced_columns) for r in tp.cascade_risks] == [
        (child, "CASCADE", (code,))
    ]
    # 'd' is new: deleting it would cascade; nothing references it, but the rule refuses anyway
    with pytest.raises(RefusedForSafety, match="ON DELETE CASCADE"):
        restore_tables(database_url, store, snap, the_plan)
    db.execute(sql.SQL("DELETE FROM {} WHERE {} = 'd'").format(ident(schema, parent), ident(code)))
    (result,) = restore(db, database_url, store, snap)
    assert (result.deleted, result.updated, result.inserted, result.key_source) == (0, 1, 0, tp.key_source)
    assert result.cascades == []
    assert row_texts(db, schema, parent, code) == original
    assert row_texts(db, schema, child) == ["(1,a)", "(2,b)"]

    # with the narrow index gone, the two-column constraint is next (the nullable, partial and
    # expression indexes never qualify)
    db.execute(sql.SQL('ALTER TABLE {} DROP CONSTRAINT "child fk"').format(ident(schema, child)))
    db.execute(sql.SQL("DROP INDEX {}").format(ident(schema, 'narrow "key"')))
    (tp,) = plan(db, store, snap).tables
    assert (tp.key, tp.key_source) == (["region", code], 'unique index "wide key"')
    db.execute(
        sql.SQL("UPDATE {} SET name = 'again' WHERE {} = 'b'").format(ident(schema, parent), ident(code))
    )
    (result,) = restore_tables(database_url, store, snap, plan(db, store, snap))
    assert (result.deleted, result.updated, result.inserted) == (0, 1, 0)
    assert row_texts(db, schema, parent, code) == original

    # the key is checked again under the restore's lock
    the_plan = plan(db, store, snap)
    db.execute(sql.SQL('ALTER TABLE {} DROP CONSTRAINT "wide key"').format(ident(schema, parent)))
    with pytest.raises(RefusedForSafety, match='its key is no longer unique index "wide key"'):
        restore_tables(database_url, store, snap, the_plan)


def test_live_primary_key_is_used_even_when_it_differs_from_the_snapshots(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE p (id int PRIMARY KEY, code text NOT NULL, v text);
        CREATE TABLE c (id int PRIMARY KEY, p_code text);
        INSERT INTO p VALUES (1, 'a', 'x'), (2, 'b', 'y');
    """)
    snap = snapshot(database_url, store, ("public", "p"))
    db.execute("ALTER TABLE p DROP CONSTRAINT p_pkey, ADD PRIMARY KEY (code)")
    db.execute("ALTER TABLE c ADD FOREIGN KEY (p_code) REFERENCES p (code) ON DELETE SET NULL")
    db.execute("INSERT INTO c VALUES (1, 'a'), (2, 'b'); UPDATE p SET v = 'changed' WHERE id = 2")
    (tp,) = plan(db, store, snap).tables
    assert (tp.key, tp.key_source) == (["code"], "primary key")
    (result,) = restore(db, database_url, store, snap)
    assert (result.deleted, result.updated, result.inserted) == (0, 1, 0)
    assert row_texts(db, "public", "p") == ["(1,a,x)", "(2,b,y)"]
    assert row_texts(db, "public", "c") == ["(1,a)", "(2,b)"]


def test_table_without_a_usable_key_referenced_from_outside_is_refused(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    """The case from the review: parent(code UNIQUE, nullable) + child ON DELETE CASCADE."""
    db.execute("""
        CREATE TABLE parent (code text UNIQUE, name text);
        CREATE TABLE child (id int PRIMARY KEY, code text CONSTRAINT "child → parent" REFERENCES parent (code)
                            ON DELETE CASCADE);
        INSERT INTO parent VALUES ('a', 'Alpha'), ('b', 'Beta'), (NULL, 'nobody');
        INSERT INTO child VALUES (1, 'a'), (2, 'b');
    """)
    snap = snapshot(database_url, store, ("public", "parent"))
    db.execute("UPDATE parent SET name = 'changed' WHERE code = 'a'")
    before = unordered_texts(db, "public", "parent"), row_texts(db, "public", "child")
    with pytest.raises(RefusedForSafety) as refused:
        plan(db, store, snap)
    message = refused.value.message
    assert refused.value.exit_code == 3
    assert '"child → parent"' in message and '"public"."child"' in message and "ON DELETE CASCADE" in message
    assert "cannot be matched" in message and "deleted and re-inserted" in message
    assert [k["name"] for k in refused.value.fields["foreign_keys"]] == ["child → parent"]

    # planned while nothing referenced it, the foreign key added before the restore: refused in
    # the restore transaction, nothing changed
    db.execute('ALTER TABLE child DROP CONSTRAINT "child → parent"')
    the_plan = plan(db, store, snap)
    assert (the_plan.tables[0].key, the_plan.tables[0].key_source) == ([], "none")
    db.execute("""ALTER TABLE child ADD CONSTRAINT "child → parent" FOREIGN KEY (code) REFERENCES parent (code)
                  ON DELETE CASCADE""")
    with pytest.raises(RefusedForSafety, match="cannot be matched"):
        restore_tables(database_url, store, snap, the_plan, allow_cascade=True)
    assert (unordered_texts(db, "public", "parent"), row_texts(db, "public", "child")) == before

    # restored together with the child, the parent may be deleted and re-inserted whole
    both = snapshot(database_url, store, ("public", "parent"), ("public", "child"))
    db.execute("UPDATE parent SET name = 'again' WHERE code = 'b'")
    assert plan(db, store, snap, restored_with=[("public", "child")]).tables[0].key_source == "none"
    results = restore(db, database_url, store, both)
    # the parent's delete cascaded to the child's rows; the child's restore put them back
    assert [(r.table, r.deleted, r.inserted) for r in results] == [("parent", 3, 3), ("child", 0, 2)]
    assert unordered_texts(db, "public", "parent") == sorted(before[0])
    assert row_texts(db, "public", "child") == ["(1,a)", "(2,b)"]


def test_cascading_deletes_are_refused_unless_allowed(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE parent (id int PRIMARY KEY, v text);
        CREATE TABLE kids (id int PRIMARY KEY, pid int REFERENCES parent ON DELETE CASCADE);
        CREATE TABLE pets (id int PRIMARY KEY, pid int DEFAULT 1 REFERENCES parent ON DELETE SET DEFAULT);
        CREATE TABLE toys (id int PRIMARY KEY, pid int REFERENCES parent ON DELETE SET NULL);
        CREATE TABLE logs (id int PRIMARY KEY, pid int REFERENCES parent);
        INSERT INTO parent VALUES (1, 'a'), (2, 'b');
        INSERT INTO kids VALUES (1, 1), (2, 2);
    """)
    snap = snapshot(database_url, store, ("public", "parent"))
    tables = ("parent", "kids", "pets", "toys", "logs")

    # only an update: nothing is deleted, nothing cascades, no refusal
    db.execute("UPDATE parent SET v = 'changed' WHERE id = 1")
    the_plan = plan(db, store, snap)
    assert [(r.table, r.on_delete) for r in the_plan.tables[0].cascade_risks] == [
        ("kids", "CASCADE"),
        ("pets", "SET DEFAULT"),
        ("toys", "SET NULL"),
    ]
    (result,) = restore_tables(database_url, store, snap, the_plan)
    assert (result.updated, result.deleted, result.cascades) == (1, 0, [])

    db.execute("""
        INSERT INTO parent VALUES (3, 'new'), (4, 'new');
        INSERT INTO kids VALUES (3, 3), (4, 4);
        INSERT INTO pets VALUES (1, 3);
        INSERT INTO toys VALUES (1, 4), (2, 1);
        UPDATE parent SET v = 'changed' WHERE id = 2;
    """)
    before = {t: row_texts(db, "public", t) for t in tables}
    the_plan = plan(db, store, snap)
    with pytest.raises(RefusedForSafety) as refused:
        restore_tables(database_url, store, snap, the_plan)
    message = refused.value.message
    assert refused.value.exit_code == 3
    for part in ('"kids_pid_fkey" of "public"."kids" is ON DELETE CASCADE', "ON DELETE SET DEFAULT",
                 '"toys_pid_fkey" of "public"."toys" is ON DELETE SET NULL', "deletes 2 row(s)",
                 "--allow-cascade", "Nothing was changed"):  # fmt: skip
        assert part in message
    assert "logs" not in message  # NO ACTION: would fail on its own, changes nothing
    assert [(c["table"], c["event"], c["action"], c["rows"]) for c in refused.value.fields["cascades"]] == [
        ("kids", "delete", "CASCADE", 2),
        ("pets", "delete", "SET DEFAULT", 2),
        ("toys", "delete", "SET NULL", 2),
    ]
    assert {t: row_texts(db, "public", t) for t in tables} == before
    assert the_plan.tables[0].to_delete is None
    assert staging_tables(db) == []

    (result,) = restore_tables(database_url, store, snap, the_plan, allow_cascade=True)
    assert (result.deleted, result.updated, result.inserted) == (2, 1, 0)
    assert [(c.constraint, c.schema, c.table, c.event, c.action, c.rows) for c in result.cascades] == [
        ("kids_pid_fkey", "public", "kids", "delete", "CASCADE", 2),
        ("pets_pid_fkey", "public", "pets", "delete", "SET DEFAULT", 2),
        ("toys_pid_fkey", "public", "toys", "delete", "SET NULL", 2),
    ]
    assert json.loads(json.dumps(result.to_dict()))["cascades"][0]["action"] == "CASCADE"
    assert row_texts(db, "public", "parent") == ["(1,a)", "(2,b)"]
    assert row_texts(db, "public", "kids") == ["(1,1)", "(2,2)"]
    assert row_texts(db, "public", "pets") == ["(1,1)"]
    assert row_texts(db, "public", "toys") == ["(1,)", "(2,1)"]


def test_cascading_update_of_referenced_columns_is_refused_unless_allowed(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE parent (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
        CREATE TABLE child (id int PRIMARY KEY, code text REFERENCES parent (code) ON UPDATE CASCADE);
        INSERT INTO parent VALUES (1, 'a', 'x'), (2, 'b', 'y');
        INSERT INTO child VALUES (1, 'a'), (2, 'b');
    """)
    snap = snapshot(database_url, store, ("public", "parent"))
    db.execute("UPDATE parent SET code = 'A' WHERE id = 1")  # cascades: child 1 now says 'A'
    db.execute("UPDATE parent SET v = 'changed' WHERE id = 2")  # code unchanged: no cascade
    assert row_texts(db, "public", "child") == ["(1,A)", "(2,b)"]
    (tp,) = plan(db, store, snap).tables
    assert (tp.key_source, [(r.table, r.on_update) for r in tp.cascade_risks]) == (
        "primary key",
        [("child", "CASCADE")],
    )
    with pytest.raises(RefusedForSafety, match=re.escape("changes the referenced columns of 1 row(s)")):
        restore(db, database_url, store, snap)
    assert row_texts(db, "public", "parent") == ["(1,A,x)", "(2,b,changed)"]
    (result,) = restore(db, database_url, store, snap, allow_cascade=True)
    assert [(c.table, c.event, c.action, c.rows) for c in result.cascades] == [
        ("child", "update", "CASCADE", 1)
    ]
    assert row_texts(db, "public", "parent") == ["(1,a,x)", "(2,b,y)"]
    assert row_texts(db, "public", "child") == ["(1,a)", "(2,b)"]


def test_cascade_through_the_partitioned_parent_of_a_restored_partition(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    db.execute("""
        CREATE TABLE events (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
        CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100);
        CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (200);
        CREATE TABLE notes (id int PRIMARY KEY, event_id int REFERENCES events ON DELETE CASCADE);
        INSERT INTO events VALUES (1, 'a'), (2, 'b'), (150, 'c');
        INSERT INTO notes VALUES (1, 1), (2, 2), (3, 150);
    """)
    snap = snapshot(database_url, store, ("public", "events_low"))
    db.execute("INSERT INTO events VALUES (3, 'late'); INSERT INTO notes VALUES (4, 3)")
    (tp,) = plan(db, store, snap).tables
    assert [(r.name, r.table) for r in tp.cascade_risks] == [("notes_event_id_fkey", "notes")]
    with pytest.raises(RefusedForSafety, match="notes_event_id_fkey"):
        restore(db, database_url, store, snap)
    assert row_texts(db, "public", "notes") == ["(1,1)", "(2,2)", "(3,150)", "(4,3)"]
    restore(db, database_url, store, snap, allow_cascade=True)
    assert row_texts(db, "public", "notes") == ["(1,1)", "(2,2)", "(3,150)"]


# -- row-level security -------------------------------------------------------------------------------


@pytest.fixture
def login_role(db: psycopg.Connection, database_url: str) -> Iterator[tuple[str, str]]:
    """A non-superuser role that can log in, and a connection string for it."""
    name, password = f"restorer_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident(name), sql.Literal(password)))
    try:
        yield name, make_conninfo(database_url, user=name, password=password)
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(ident(name)))


def test_row_level_security_refuses_instead_of_restoring_a_subset(
    db: psycopg.Connection, database_url: str, store: LocalStore, login_role: tuple[str, str]
) -> None:
    role, role_url = login_role
    db.execute("""
        CREATE TABLE t (id int PRIMARY KEY, v text);
        INSERT INTO t VALUES (1, 'a'), (2, 'secret'), (3, 'c');
        CREATE POLICY hide_secret ON t USING (v <> 'secret');
        ALTER TABLE t ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
    """)
    db.execute(sql.SQL("ALTER TABLE t OWNER TO {}").format(ident(role)))
    snap = snapshot(database_url, store, ("public", "t"))  # as superuser: all 3 rows
    assert snap.tables[0].row_count == 3
    db.execute("UPDATE t SET v = 'changed' WHERE id = 1")
    before = row_texts(db, "public", "t")

    with psycopg.connect(role_url, autocommit=True) as as_role:
        assert as_role.execute("SELECT count(*) FROM t").fetchone() == (2,)  # the policy applies
        with pytest.raises(RefusedForSafety, match="Row-level security applies to"):
            plan(as_role, store, snap)
    # planned by a superuser, run by the role: refused inside the restore transaction
    the_plan = plan(db, store, snap)
    with pytest.raises(RefusedForSafety) as refused:
        restore_tables(role_url, store, snap, the_plan)
    assert refused.value.exit_code == 3 and '"public"."t"' in refused.value.message
    assert row_texts(db, "public", "t") == before

    # a policy met by a trigger of the restored table: an error (row_security is off), not a
    # silently filtered statement
    db.execute(
        sql.SQL("""
        ALTER TABLE t NO FORCE ROW LEVEL SECURITY;
        CREATE TABLE changes (id int, v text);
        CREATE POLICY only_mine ON changes USING (v <> 'secret');
        ALTER TABLE changes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
        ALTER TABLE changes OWNER TO {role};
        CREATE FUNCTION note_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO changes VALUES (NEW.id, NEW.v); RETURN NULL; END $$;
        CREATE TRIGGER t_changes AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION note_change();
    """).format(role=ident(role))
    )
    with psycopg.connect(role_url, autocommit=True) as as_role:
        the_plan = plan(as_role, store, snap)  # t's owner, without FORCE: not subject to its policy
    with pytest.raises(RefusedForSafety) as refused:
        restore_tables(role_url, store, snap, the_plan)
    assert "row-level security" in refused.value.message and '"changes"' in refused.value.message
    assert refused.value.fields["sqlstate"] == "42501"
    assert row_texts(db, "public", "t") == before
    assert db.execute("SELECT count(*) FROM changes").fetchone() == (0,)

    # the owner, neither forced nor hitting a policy elsewhere, restores everything
    db.execute("DROP TRIGGER t_changes ON t")
    (result,) = restore_tables(role_url, store, snap, the_plan)
    assert result.updated == 1
    assert row_texts(db, "public", "t") == ["(1,a)", "(2,secret)", "(3,c)"]


# -- progress -------------------------------------------------------------------------------------------


def test_progress_reports_stored_bytes_while_loading(
    db: psycopg.Connection, database_url: str, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_table(db, "a", rows=3000)
    make_table(db, "b", rows=3000)
    snap = snapshot(database_url, store, ("public", "a"), ("public", "b"))
    db.execute("DELETE FROM a WHERE id > 10; DROP TABLE b")
    # small read blocks, so a small table takes many: each one is reported as it is sent
    monkeypatch.setattr("dbrollback.snapshot.load._READ_CHUNK", 512)
    the_plan = plan(db, store, snap)
    assert [(t.table, t.action) for t in the_plan.tables] == [("a", "replace"), ("b", "create")]
    seen: list[tuple[str, int]] = []
    restore_tables(database_url, store, snap, the_plan, progress=lambda name, n: seen.append((name, n)))
    for tp, tm in zip(the_plan.tables, snap.tables, strict=True):
        mine = [n for name, n in seen if name == tp.qualified]
        assert tp.snapshot_bytes == sum(f.bytes for f in tm.files) > 2 * 512
        assert sum(mine) == tp.snapshot_bytes
        assert len(mine) == -(-tp.snapshot_bytes // 512) and max(mine) == 512
    # b is created and loaded before a is staged
    count_a, count_b = (len([1 for name, _ in seen if name == f"public.{t}"]) for t in "ab")
    assert [name for name, _ in seen] == ["public.b"] * count_b + ["public.a"] * count_a
    assert table_checksum(db, "public", "a") == (3000, snap.tables[0].checksum)


# -- several snapshots in one transaction ------------------------------------------------------------


def test_restore_many_is_all_or_nothing(db: psycopg.Connection, database_url: str, store: LocalStore) -> None:
    """As restore --to-time picks them: a parent from one snapshot, its child from a later one."""
    make_table(db, "a")
    db.execute("CREATE TABLE kid (id int PRIMARY KEY, a_id int REFERENCES a)")
    first = snapshot(database_url, store, ("public", "a"))
    db.execute("INSERT INTO a (v) VALUES ('late'); INSERT INTO kid VALUES (1, 11)")
    second = snapshot(database_url, store, ("public", "kid"))  # kid points at a's row 11
    db.execute("DELETE FROM kid; UPDATE a SET v = 'changed' WHERE id <= 3")
    before = row_texts(db, "public", "a"), row_texts(db, "public", "kid")
    items = [(first, plan(db, store, first)), (second, plan(db, store, second))]

    # a's row 11 is deleted and rows 1-3 updated, then kid's INSERT violates its foreign key
    with pytest.raises(RestoreFailed) as failed:
        restore_many(database_url, store, items)
    assert failed.value.exit_code == 4 and failed.value.fields["constraint"] == "kid_a_id_fkey"
    assert (
        f"snapshots {first.id}, {second.id}" in failed.value.message and "unchanged" in failed.value.message
    )
    assert failed.value.fields["tables"] == ["public.a", "public.kid"]
    assert (row_texts(db, "public", "a"), row_texts(db, "public", "kid")) == before
    assert staging_tables(db) == []

    # a damaged second snapshot: refused before anything is touched
    entry = second.tables[0].files[0]
    path = store.snapshot_dir(second.id) / entry.name
    good = path.read_bytes()
    path.write_bytes(good[:-3])
    with pytest.raises(SnapshotCorrupt, match=second.id):
        restore_many(database_url, store, items)
    path.write_bytes(good)
    assert (row_texts(db, "public", "a"), row_texts(db, "public", "kid")) == before

    with pytest.raises(SnapshotError, match=re.escape("restore a table twice: public.a")):
        restore_many(database_url, store, [items[0], (first, plan(db, store, first))])
    with pytest.raises(SnapshotError, match="plan is for snapshot"):
        restore_many(database_url, store, [(second, items[0][1])])
    assert restore_many(database_url, store, []) == []

    db.execute("INSERT INTO kid VALUES (2, 2)")
    third = snapshot(database_url, store, ("public", "kid"))
    db.execute("DELETE FROM kid")
    seen: list[str] = []
    items = [(first, plan(db, store, first)), (third, plan(db, store, third))]
    results = restore_many(database_url, store, items, progress=lambda name, n: seen.append(name))
    assert [(r.table, r.deleted, r.updated, r.inserted) for r in results] == [
        ("a", 1, 3, 0),
        ("kid", 0, 0, 1),
    ]
    assert table_checksum(db, "public", "a") == (10, first.tables[0].checksum)
    assert row_texts(db, "public", "kid") == ["(2,2)"]
    assert set(seen) == {"public.a", "public.kid"}


# -- kill -9 in the middle of the swap ---------------------------------------------------------------

_RESTORE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import psycopg

    from dbrollback.snapshot.local import LocalStore
    from dbrollback.snapshot.restore import plan_restore, restore_tables

    url, root, snapshot_id = sys.argv[1:4]
    store = LocalStore(Path(root))
    manifest = store.load(snapshot_id)
    with psycopg.connect(url, autocommit=True) as conn:
        plan = plan_restore(conn, store, manifest, None, None)
    print("planned", flush=True)
    restore_tables(url, store, manifest, plan, lock_timeout="10min", retries=0)
    print("restored", flush=True)
""")


def test_kill_9_during_the_swap_leaves_the_table_unchanged(
    db: psycopg.Connection, database_url: str, store: LocalStore
) -> None:
    make_table(db, rows=200)
    snap = snapshot(database_url, store, ("public", "t"))
    db.execute("INSERT INTO t (v) SELECT 'late' FROM generate_series(1, 50)")  # the swap deletes these
    db.execute("UPDATE t SET v = 'changed' WHERE id IN (1, 2)")  # ... then updates these
    before_rows, before_sum = row_texts(db, "public", "t"), table_checksum(db, "public", "t")

    # Another session holds a row lock on row 1 (compatible with the restore's table lock):
    # the restore's UPDATE waits for it, after its DELETE already ran, inside the swap.
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        proc = subprocess.Popen(
            [sys.executable, "-c", _RESTORE_SCRIPT, database_url, str(store.root), snap.id],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            backend = None
            for _ in range(3000):  # bounded: the subprocess blocks quickly; this only avoids hanging
                row = db.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'dbrollback % restore' AND wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE %%'"
                ).fetchone()
                if row is not None:
                    backend = row[0]
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.02)
            assert backend is not None, "the restore never reached its UPDATE"
            # mid-swap: it holds the table lock and has deleted the 50 late rows in its transaction
            locks = db.execute(
                "SELECT mode FROM pg_locks WHERE pid = %s AND relation = 't'::regclass AND granted",
                (backend,),
            ).fetchall()
            assert ("ShareRowExclusiveLock",) in locks
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        holder.rollback()

    for _ in range(3000):  # the server ends the orphaned backend once it notices the closed socket
        if db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone() == (0,):
            break
        time.sleep(0.02)
    assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone() == (0,)
    assert row_texts(db, "public", "t") == before_rows
    assert table_checksum(db, "public", "t") == before_sum
    assert staging_tables(db) == []

    # and a complete restore afterwards works
    (result,) = restore(db, database_url, store, snap)
    assert (result.deleted, result.updated) == (50, 2)
    assert table_checksum(db, "public", "t") == (200, snap.tables[0].checksum)


# -- picking snapshots by time -------------------------------------------------------------------------


def _manifest(snapshot_id: str, created_at: datetime, *tables: str) -> SnapshotManifest:
    column = ColumnInfo(name="id", type="integer", nullable=False)
    return SnapshotManifest(
        id=snapshot_id,
        created_at=created_at,
        server_version="18",
        database="db",
        tables=[
            TableManifest(
                schema_name="public",
                table_name=t,
                columns=[column],
                primary_key=["id"],
                row_count=0,
                checksum="rowhash64-v2:0",
                files=[],
            )
            for t in tables
        ],
    )


def test_pick_snapshots_at_takes_the_newest_at_or_before() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    s1 = _manifest("s1", t0, "a", "b")
    s2 = _manifest("s2", t0 + timedelta(hours=1), "a")
    s3 = _manifest("s3", t0 + timedelta(hours=2), "a", "b", "c")
    manifests = [s3, s1, s2]
    at = t0 + timedelta(hours=1, minutes=30)
    picked = pick_snapshots_at(manifests, at, [("public", "a"), ("public", "b")])
    assert {k: m.id for k, m in picked.items()} == {("public", "a"): "s2", ("public", "b"): "s1"}
    # exactly at a snapshot's time counts as "at or before"
    assert (
        pick_snapshots_at(manifests, t0 + timedelta(hours=1), [("public", "a")])[("public", "a")].id == "s2"
    )
    # every table that a snapshot at or before that time holds
    assert {k[1]: m.id for k, m in pick_snapshots_at(manifests, at, None).items()} == {"a": "s2", "b": "s1"}
    # another time zone, same instant
    east = timezone(timedelta(hours=5))
    assert pick_snapshots_at(manifests, at.astimezone(east), [("public", "a")])[("public", "a")].id == "s2"

    with pytest.raises(SnapshotError) as early:
        pick_snapshots_at(manifests, at, [("public", "c")])
    assert (t0 + timedelta(hours=2)).isoformat() in early.value.message
    with pytest.raises(SnapshotError, match=re.escape("No snapshot holds public.zzz")):
        pick_snapshots_at(manifests, at, [("public", "zzz")])
    with pytest.raises(SnapshotError, match=re.escape(t0.isoformat())):
        pick_snapshots_at(manifests, t0 - timedelta(days=1), None)
