"""restore and verify through the real CLI (issue #3)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from dbrollback.snapshot.checksum import table_checksum
from dbrollback.snapshot.local import LocalStore

SCHEMA = 'Säles; "q"'
TABLE = "Or ders"


def _q() -> sql.Identifier:
    return sql.Identifier(SCHEMA, TABLE)


def _setup(db: psycopg.Connection) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    db.execute(
        sql.SQL('CREATE TABLE {} (id int PRIMARY KEY, "Total" numeric, tags text[], doc json)').format(_q())
    )
    db.execute(sql.SQL("INSERT INTO {} SELECT g, g * 1.5, ARRAY['t' || g], json_build_object('g', g) "
                       "FROM generate_series(1, 500) g").format(_q()))  # fmt: skip


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def _mutate(db: psycopg.Connection) -> None:
    db.execute(sql.SQL('UPDATE {} SET "Total" = -1 WHERE id = 17').format(_q()))
    db.execute(sql.SQL("DELETE FROM {} WHERE id = 250").format(_q()))
    db.execute(sql.SQL("INSERT INTO {} VALUES (9001, 1, NULL, NULL)").format(_q()))


def test_verify_finds_changes_restore_puts_them_back(cli, db, database_url, tmp_path):
    _setup(db)
    store = tmp_path / "store"
    original = table_checksum(db, SCHEMA, TABLE)
    snap = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    clean = cli("verify", "--snapshot", snap, *_args(database_url, store))
    assert clean.code == 0 and "checksum matches" in clean.out

    _mutate(db)
    found = cli("verify", "--snapshot", snap, "--json", *_args(database_url, store))
    assert found.code == 1
    (table,) = found.json["tables"]
    diffs = {(d["kind"], tuple(d["key"].values())): d["columns"] for d in table["differences"]}
    assert diffs == {("changed", (17,)): ["Total"], ("missing", (250,)): [], ("extra", (9001,)): []}
    human = cli("verify", "--snapshot", snap, *_args(database_url, store))
    assert human.code == 1 and "DIFFERS" in human.out and "id=17" in human.out

    refused = cli("restore", "--snapshot", snap, *_args(database_url, store))  # no --yes, no terminal
    assert refused.code == 3 and "--yes" in refused.err
    assert table_checksum(db, SCHEMA, TABLE) != original

    dry = cli("restore", "--snapshot", snap, "--dry-run", "--json", *_args(database_url, store))
    assert dry.code == 0 and dry.json["dry_run"] is True
    assert dry.json["plans"][0]["tables"][0]["action"] == "replace"
    assert table_checksum(db, SCHEMA, TABLE) != original

    done = cli("restore", "--snapshot", snap, "--yes", "--json", *_args(database_url, store))
    assert done.code == 0, done.err
    (result,) = done.json["results"]
    assert (result["deleted"], result["updated"], result["inserted"]) == (1, 1, 1)
    assert result["checksum_verified"] is True
    assert table_checksum(db, SCHEMA, TABLE) == original
    assert db.execute(sql.SQL('SELECT "Total" FROM {} WHERE id = 17').format(_q())).fetchone()[0] == 25.5
    assert cli("verify", "--snapshot", snap, *_args(database_url, store)).code == 0
    statuses = [r[0] for r in db.execute(
        "SELECT details->>'status' FROM dbrollback.audit WHERE command = 'restore' ORDER BY id")]  # fmt: skip
    assert statuses == ["started", "succeeded"]


def test_damaged_snapshot_refuses_restore_exit_3_and_verify_exit_1(cli, db, database_url, tmp_path):
    _setup(db)
    store = tmp_path / "store"
    snap = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    _mutate(db)
    mutated = table_checksum(db, SCHEMA, TABLE)
    (entry,) = LocalStore(store).load(snap).tables[0].files
    path = store / snap / entry.name
    path.write_bytes(path.read_bytes()[:-7])  # truncated

    restored = cli("restore", "--snapshot", snap, "--yes", *_args(database_url, store))
    assert restored.code == 3
    assert entry.name in restored.err and entry.sha256 in restored.err and "Traceback" not in restored.err
    assert table_checksum(db, SCHEMA, TABLE) == mutated
    verified = cli("verify", "--snapshot", snap, *_args(database_url, store))
    assert verified.code == 1 and entry.name in verified.err


def test_into_schema_side_by_side_then_verify_it(cli, db, database_url, tmp_path):
    _setup(db)
    store = tmp_path / "store"
    snap = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    _mutate(db)
    mutated = table_checksum(db, SCHEMA, TABLE)
    side = cli("restore", "--snapshot", snap, "--tables", f'"{SCHEMA.replace(chr(34), chr(34) * 2)}"."{TABLE}"',
               "--into-schema", "recovered", "--yes", *_args(database_url, store))  # fmt: skip
    assert side.code == 0, side.err
    assert table_checksum(db, SCHEMA, TABLE) == mutated  # live untouched
    assert db.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("recovered", TABLE))
    ).fetchone() == (500,)
    ok = cli("verify", "--snapshot", snap, "--in-schema", "recovered", *_args(database_url, store))
    assert ok.code == 0, ok.out + ok.err


def test_to_time_picks_the_newest_snapshot_before_it(cli, db, database_url, tmp_path):
    _setup(db)
    store = tmp_path / "store"
    first = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    time.sleep(1.1)  # snapshot ids and times have second resolution in the name; keep them apart
    between = datetime.now(timezone.utc)
    time.sleep(1.1)
    _mutate(db)
    after_mutation = table_checksum(db, SCHEMA, TABLE)
    second = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    assert first != second
    db.execute(sql.SQL("DELETE FROM {}").format(_q()))

    back = cli("restore", "--to-time", between.isoformat(), "--yes", "--json", *_args(database_url, store))
    assert back.code == 0, back.err
    assert back.json["plans"][0]["snapshot_id"] == first
    assert table_checksum(db, SCHEMA, TABLE)[0] == 500

    latest = cli("restore", "--to-time", datetime.now(timezone.utc).isoformat(), "--yes", "--json",
                 *_args(database_url, store))  # fmt: skip
    assert latest.code == 0 and latest.json["plans"][0]["snapshot_id"] == second
    assert table_checksum(db, SCHEMA, TABLE) == after_mutation

    too_early = cli("restore", "--to-time", "2001-01-01T00:00:00Z", "--yes", *_args(database_url, store))
    assert too_early.code == 2 and "Traceback" not in too_early.err
    bad = cli("restore", "--to-time", "yesterday-ish", "--yes", *_args(database_url, store))
    assert bad.code == 2 and "Not a timestamp" in bad.err
    both = cli("restore", "--snapshot", first, "--to-time", "2001-01-01", *_args(database_url, store))
    assert both.code == 2 and "exactly one" in both.err


def test_snapshots_of_another_database_in_a_shared_store_are_kept_apart(cli, db, database_url, server_url,
                                                                       tmp_path):  # fmt: skip
    """dev and prod pointed at one store: restore refuses the other's snapshot, --to-time and prune
    ignore it."""
    import uuid

    from sqlalchemy.engine import make_url

    store = tmp_path / "store"
    _setup(db)
    mine = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    other_name = f"other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other_name)))
    other_url = make_url(database_url).set(database=other_name).render_as_string(hide_password=False)
    try:
        with psycopg.connect(other_url, autocommit=True) as other:
            _setup(other)
        theirs = cli("snapshot", "create", *_args(other_url, store)).out.strip()
        listed = cli("snapshot", "list", "--json", *_args(database_url, store)).json
        assert {s["id"]: s["database"] for s in listed} == {mine: db.info.dbname, theirs: other_name}

        _mutate(db)
        refused = cli("restore", "--snapshot", theirs, "--yes", *_args(database_url, store))
        assert (
            refused.code == 3 and "another database" in refused.err and "--from-other-database" in refused.err
        )
        picked = cli("restore", "--to-time", datetime.now(timezone.utc).isoformat(), "--dry-run", "--json",
                     *_args(database_url, store))  # fmt: skip
        assert picked.code == 0 and [p["snapshot_id"] for p in picked.json["plans"]] == [mine]
        forced = cli(
            "restore", "--snapshot", theirs, "--yes", "--from-other-database", *_args(database_url, store)
        )
        assert forced.code == 0, forced.err  # same data in both: the restore puts back the original rows
        assert cli("verify", "--snapshot", mine, *_args(database_url, store)).code == 0
        kept = cli("snapshot", "prune", "--dry-run", "--json", *_args(database_url, store)).json["kept"]
        assert {k["id"]: k["reason"] for k in kept}[theirs] == f"taken from another database ({other_name})"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(other_name)))


def test_restore_refuses_to_cascade_into_tables_it_does_not_restore(cli, db, database_url, tmp_path):
    db.execute("CREATE TABLE parent (id int PRIMARY KEY, name text)")
    db.execute("CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE)")
    db.execute("INSERT INTO parent VALUES (1, 'one'), (2, 'two')")
    db.execute("INSERT INTO child VALUES (10, 1), (20, 2)")
    store = tmp_path / "store"
    snap = cli("snapshot", "create", "--tables", "parent", *_args(database_url, store)).out.strip()
    db.execute("INSERT INTO parent VALUES (3, 'three')")  # written after the snapshot...
    db.execute("INSERT INTO child VALUES (30, 3)")  # ...and referenced since

    refused = cli("restore", "--snapshot", snap, "--yes", *_args(database_url, store))
    assert refused.code == 3 and "--allow-cascade" in refused.err and "child" in refused.err
    assert db.execute("SELECT count(*) FROM child").fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM parent").fetchone() == (3,)

    allowed = cli(
        "restore", "--snapshot", snap, "--yes", "--allow-cascade", "--json", *_args(database_url, store)
    )
    assert allowed.code == 0, allowed.err
    (result,) = allowed.json["results"]
    assert result["deleted"] == 1 and [c["table"] for c in result["cascades"]] == ["child"]
    assert db.execute("SELECT id FROM child ORDER BY id").fetchall() == [(10,), (20,)]
