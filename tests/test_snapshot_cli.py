"""snapshot create | list | show | verify | prune through the real CLI (issue #3)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from dbrollback.settings import load_settings
from dbrollback.snapshot.capture import capture_tables
from dbrollback.snapshot.local import LocalStore
from dbrollback.snapshot_api import snapshot_prune

ODD_SCHEMA = 'Odd "schéma"; x'
ODD_TABLE = "Tä ble;--"


def _setup(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    db.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 250) g")
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ODD_SCHEMA)))
    db.execute(
        sql.SQL("CREATE TABLE {} (k text PRIMARY KEY, v jsonb)").format(sql.Identifier(ODD_SCHEMA, ODD_TABLE))
    )
    db.execute(
        sql.SQL("INSERT INTO {} VALUES ('a', '{{\"x\": 1}}'), ('b', NULL)").format(
            sql.Identifier(ODD_SCHEMA, ODD_TABLE)
        )
    )


def _args(database_url: str, store: Path) -> list[str]:
    return ["--database-url", database_url, "--store", str(store)]


def test_create_list_show_verify(cli, db: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    _setup(db)
    store = tmp_path / "store"
    odd = '"Odd ""schéma""; x"."Tä ble;--"'
    created = cli("snapshot", "create", "--tables", f"items,{odd}", "--label", "before cleanup",
                  *_args(database_url, store))  # fmt: skip
    assert created.code == 0, created.err
    snapshot_id = created.out.strip()
    assert (store / snapshot_id / "manifest.json").is_file()

    listed = cli("snapshot", "list", "--json", *_args(database_url, store))
    assert listed.code == 0
    (entry,) = listed.json
    assert set(entry) >= {
        "id",
        "created_at",
        "run_id",
        "revision",
        "tables",
        "bytes",
        "expires_at",
        "location",
    }
    assert entry["id"] == snapshot_id and entry["run_id"] is None and entry["label"] == "before cleanup"
    assert entry["tables"] == ["public.items", f"{ODD_SCHEMA}.{ODD_TABLE}"]
    assert entry["rows"] == 252 and entry["bytes"] > 0
    expires = datetime.fromisoformat(entry["expires_at"])
    created_at = datetime.fromisoformat(entry["created_at"])
    assert timedelta(days=6, hours=23) < expires - created_at <= timedelta(days=7)  # default window

    shown = cli("snapshot", "show", snapshot_id, "--json", *_args(database_url, store))
    assert shown.code == 0
    tables = {t["table_name"]: t for t in shown.json["tables"]}
    assert tables["items"]["row_count"] == 250 and tables["items"]["primary_key"] == ["id"]
    assert [c["name"] for c in tables[ODD_TABLE]["columns"]] == ["k", "v"]
    human = cli("snapshot", "show", snapshot_id, *_args(database_url, store))
    assert human.code == 0 and "items: 250 rows" in human.out and "sha256" in human.out

    ok = cli("snapshot", "verify", snapshot_id, *_args(database_url, store))
    assert ok.code == 0 and "every sha256 matches" in ok.out

    # the catalog lists it too, and the command was audited
    assert db.execute("SELECT id, rows FROM dbrollback.snapshots").fetchall() == [(snapshot_id, 252)]
    assert db.execute(
        "SELECT count(*) FROM dbrollback.audit WHERE command = 'snapshot create'"
    ).fetchone() == (1,)


def test_verify_reports_damage_with_exit_1(cli, db: psycopg.Connection, database_url: str,
                                           tmp_path: Path) -> None:  # fmt: skip
    _setup(db)
    store = tmp_path / "store"
    snapshot_id = cli("snapshot", "create", *_args(database_url, store)).out.strip()
    manifest = LocalStore(store).load(snapshot_id)
    first, second = (t.files[0] for t in manifest.tables)
    path = store / snapshot_id / first.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    (store / snapshot_id / second.name).unlink()

    damaged = cli("snapshot", "verify", snapshot_id, *_args(database_url, store))
    assert damaged.code == 1
    assert first.name in damaged.out and first.sha256 in damaged.out and "actual" in damaged.out
    assert second.name in damaged.out and "missing" in damaged.out
    as_json = cli("snapshot", "verify", snapshot_id, "--json", *_args(database_url, store))
    assert as_json.code == 1 and as_json.json["ok"] is False and len(as_json.json["problems"]) == 2


def test_unknown_table_and_snapshot_are_clear_errors(cli, db: psycopg.Connection, database_url: str,
                                                     tmp_path: Path) -> None:  # fmt: skip
    _setup(db)
    store = tmp_path / "store"
    bad = cli("snapshot", "create", "--tables", "items,nope", *_args(database_url, store))
    assert bad.code == 2 and "No such table: nope" in bad.err and "Traceback" not in bad.err
    assert not store.exists() or not any(p for p in store.iterdir() if not p.name.startswith("."))
    missing = cli("snapshot", "show", "20990101T000000Z-abcdef", *_args(database_url, store))
    assert missing.code == 2 and "No snapshot 20990101T000000Z-abcdef" in missing.err


def test_unwritable_store_refuses_with_exit_3(cli, db: psycopg.Connection, database_url: str,
                                              tmp_path: Path) -> None:  # fmt: skip
    _setup(db)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli("snapshot", "create", *_args(database_url, blocker / "store"))
    assert result.code == 3 and "not writable" in result.err


def test_prune_keeps_what_a_recent_run_needs(cli, db: psycopg.Connection, database_url: str,
                                             tmp_path: Path) -> None:  # fmt: skip
    """A run two days ago (inside the 7-day window) may still need to go back to the newest snapshot
    taken before it, however old; older ones and ones no run needs are pruned."""
    _setup(db)
    store_dir = tmp_path / "store"
    assert cli("snapshot", "create", "--tables", "items", *_args(database_url, store_dir)).code == 0
    store = LocalStore(store_dir)
    (recent,) = [m.id for m in store.list()]
    now = datetime.now(timezone.utc)
    ancient = capture_tables(database_url, store, [("public", "items")])
    old = capture_tables(database_url, store, [("public", "items")])
    for snap, age in ((ancient, 40), (old, 30)):  # as if taken that long ago
        taken = now - timedelta(days=age)
        path = store_dir / snap.id / "manifest.json"
        path.write_text(
            snap.model_copy(
                update={
                    "created_at": taken,
                    "expires_at": taken + timedelta(days=7),
                    "database_id": store.load(recent).database_id,
                }
            ).model_dump_json()
        )
    run_id = db.execute(
        "INSERT INTO dbrollback.runs (command, direction, status, started_at, finished_at, actor, tool_version) "
        "VALUES ('upgrade', 'upgrade', 'succeeded', now() - interval '2 days', now() - interval '2 days', "
        "'me', 'x') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    settings = load_settings({"database_url": database_url, "store": str(store_dir)})

    dry = snapshot_prune(settings, dry_run=True)
    assert [s.id for s in dry.pruned] == [ancient.id]
    reasons = {s.id: r for s, r in dry.kept}
    assert reasons[old.id] == (f"the newest snapshot of public.items before run {run_id}, which is still inside "
                               "the rollback window")  # fmt: skip
    assert reasons[recent].startswith("inside the rollback window until")
    assert len(store.list()) == 3  # dry run deleted nothing

    real = cli("snapshot", "prune", "--json", *_args(database_url, store_dir))
    assert real.code == 0 and real.json["dry_run"] is False
    assert [p["id"] for p in real.json["pruned"]] == [ancient.id]
    assert sorted(m.id for m in store.list()) == sorted([old.id, recent])
    assert not (store_dir / ancient.id).exists()
    assert db.execute("SELECT deleted_at IS NOT NULL FROM dbrollback.snapshots WHERE id = %s",
                      (ancient.id,)).fetchone() in (None, (True,))  # fmt: skip

    # once that run has left the window, nothing protects the old snapshot any more
    db.execute("UPDATE dbrollback.runs SET started_at = now() - interval '40 days', "
               "finished_at = now() - interval '40 days'")  # fmt: skip
    later = snapshot_prune(settings)
    assert [s.id for s in later.pruned] == [old.id]
    assert [m.id for m in store.list()] == [recent]


def test_prune_removes_unfinished_snapshots_left_by_a_killed_capture(cli, db, database_url, tmp_path):
    _setup(db)
    store_dir = tmp_path / "store"
    published = cli("snapshot", "create", "--tables", "items", *_args(database_url, store_dir)).out.strip()
    old = store_dir / "20200101T000000Z-dead01"
    (old / ".partial").mkdir(parents=True)
    (old / ".partial" / "1.copy.zst.abcd.tmp").write_bytes(b"half a file")
    (old / "2.copy.zst").write_bytes(b"a finished file of an unfinished snapshot")
    fresh = store_dir / "20990101T000000Z-busy01"  # maybe still being written: too recent to touch
    (fresh / ".partial").mkdir(parents=True)
    (fresh / ".partial" / "1.copy.zst.ef01.tmp").write_bytes(b"in progress")
    long_ago = time.time() - 3 * 86400
    for path in [old, *old.rglob("*")]:
        os.utime(path, (long_ago, long_ago))

    dry = cli("snapshot", "prune", "--dry-run", "--json", *_args(database_url, store_dir))
    assert dry.code == 0 and dry.json["partials"] == [old.name] and old.exists()
    real = cli("snapshot", "prune", "--json", *_args(database_url, store_dir))
    assert real.code == 0 and real.json["partials"] == [old.name]
    assert not old.exists() and fresh.exists() and (store_dir / published / "manifest.json").exists()


def test_damaged_manifest_is_named_and_never_used(cli, db, database_url, tmp_path):
    _setup(db)
    store = tmp_path / "store"
    good = cli("snapshot", "create", "--tables", "items", *_args(database_url, store)).out.strip()
    bad = cli("snapshot", "create", "--tables", "items", *_args(database_url, store)).out.strip()
    manifest = store / bad / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])  # truncated JSON

    listed = cli("snapshot", "list", "--json", *_args(database_url, store))
    assert listed.code == 0 and [s["id"] for s in listed.json] == [good]
    checked = cli("snapshot", "verify", bad, *_args(database_url, store))
    assert checked.code == 1 and "manifest.json is damaged" in checked.err and "Traceback" not in checked.err
    verified = cli("verify", "--snapshot", bad, *_args(database_url, store))
    assert verified.code == 1 and "manifest.json is damaged" in verified.err
    db.execute("UPDATE items SET name = 'changed'")
    restored = cli("restore", "--snapshot", bad, "--yes", *_args(database_url, store))
    assert restored.code == 3 and "manifest.json is damaged" in restored.err
    assert db.execute("SELECT count(*) FROM items WHERE name = 'changed'").fetchone() == (250,)
    # a manifest copied into another snapshot's directory is not taken for that snapshot
    (store / bad / "manifest.json").write_text((store / good / "manifest.json").read_text())
    moved = cli("snapshot", "show", bad, *_args(database_url, store))
    assert moved.code == 3 and f"belongs to snapshot {good}" in moved.err
