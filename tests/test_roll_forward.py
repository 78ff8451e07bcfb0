"""Rolling forward again (issue #5, item 2): values a rollback saved before its downgrade dropped
their columns come back when `upgrade` re-applies the revision, on the real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
from psycopg import sql

from .conftest import Project
from .test_rollback import _args, _rollback, _rows, _split_people, _upgrade, _version

ODD_SCHEMA = 'Sch "é"; x'
ODD_TABLE = 'Ödd "tab"; le'
ODD_KEY = 'K "ey"; ü'
ODD_COL = 'No te "q"; ü'

# r2 drops a column (lossy: snapshot + fingerprint) and adds `note`, which its downgrade drops.
NOTE_UP = 'op.drop_column("accounts", "legacy")\nop.add_column("accounts", sa.Column("note", sa.Text))'
NOTE_DOWN = 'op.drop_column("accounts", "note")\nop.add_column("accounts", sa.Column("legacy", sa.Text))'


def _records(db: psycopg.Connection) -> list[tuple]:
    return _rows(
        db,
        "SELECT rollback_run_id, revision, schema_name, table_name, columns, key_columns, outcome, "
        "restored_by_run_id, restored_rows, missing_rows, snapshot_id FROM dbrollback.saved_values ORDER BY id",
    )


def _notes_project(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.Text),
                        sa.Column("legacy", sa.Text))
    """,
    )
    project.add_revision("r2", "r1", NOTE_UP, NOTE_DOWN)


def _notes_upgraded_and_written(project, cli, db, database_url: str, store: Path) -> dict:
    _notes_project(project)
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts SELECT g, 'u' || g, 'L' || g FROM generate_series(1, 20) g")
    upgraded = _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET note = 'n' || id WHERE id <= 10")
    return upgraded


def test_notes_come_back_on_upgrade_after_rollback_twice(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _notes_upgraded_and_written(project, cli, db, database_url, store)
    rolled = _rollback(cli, database_url, store)
    (table,) = rolled["tables"]
    saved_to = table["lost_values_saved_to"]
    assert saved_to and table["lost_writes"] == 10 and rolled["verified"]
    assert _records(db) == [
        (rolled_run(db), "r2", "public", "accounts", ["note"], ["id"], None, None, None, None, saved_to)
    ]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE legacy = 'L' || id") == [(20,)]

    # the app goes on while rolled back: other columns written, a noted row deleted, a row inserted
    db.execute("UPDATE accounts SET email = 'changed' || id WHERE id <= 3")
    db.execute("DELETE FROM accounts WHERE id = 5")
    db.execute("INSERT INTO accounts VALUES (21, 'u21', 'L21')")

    again = _upgrade(cli, database_url, store)
    assert again["restored_values"] == [
        {
            "table": "public.accounts",
            "columns": ["note"],
            "rows": 9,
            "rows_deleted_since": 1,
            "from_snapshot": saved_to,
            "revision": "r2",
        }
    ]
    assert _rows(db, "SELECT id, email, note FROM accounts WHERE id IN (1, 4, 11, 21) ORDER BY id") == [
        (1, "changed1", "n1"),
        (4, "u4", "n4"),
        (11, "u11", None),
        (21, "u21", None),
    ]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE note = 'n' || id") == [(9,)]
    (record,) = _records(db)
    assert record[6:10] == ("restored", again["run_id"], 9, 1)

    # a second cycle: the values written since are saved and brought back; the first record stays consumed
    db.execute("UPDATE accounts SET note = 'second' WHERE id IN (1, 21)")
    second = _rollback(cli, database_url, store)
    assert second["run_id"] == again["run_id"] and second["tables"][0]["lost_values_saved_to"] not in (
        None,
        saved_to,
    )
    third = _upgrade(cli, database_url, store)
    assert [(r["rows"], r["rows_deleted_since"]) for r in third["restored_values"]] == [(10, 0)]
    assert _rows(db, "SELECT id, note FROM accounts WHERE id IN (1, 2, 21) ORDER BY id") == [
        (1, "second"),
        (2, "n2"),
        (21, "second"),
    ]
    assert [(r[6], r[7]) for r in _records(db)] == [
        ("restored", again["run_id"]),
        ("restored", third["run_id"]),
    ]
    # nothing pending: a later upgrade to the same head puts nothing back
    assert _upgrade(cli, database_url, store)["restored_values"] == []


def rolled_run(db: psycopg.Connection) -> int:
    return _rows(db, "SELECT max(id) FROM dbrollback.runs WHERE direction = 'rollback'")[0][0]


def test_text_output_names_the_values_put_back(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _notes_upgraded_and_written(project, cli, db, database_url, store)
    saved_to = _rollback(cli, database_url, store)["tables"][0]["lost_values_saved_to"]
    result = cli("upgrade", *_args(database_url, store))
    assert result.code == 0, result.err
    assert (
        f"Saved values put back in public.accounts (note): 10 row(s) from snapshot {saved_to}" in result.out
    )


def test_missing_saved_snapshot_refuses_then_skip_flag_applies_without_them(
    project, cli, db, database_url, tmp_path
):
    store = tmp_path / "store"
    _notes_upgraded_and_written(project, cli, db, database_url, store)
    saved_to = _rollback(cli, database_url, store)["tables"][0]["lost_values_saved_to"]
    runs_before = _rows(db, "SELECT count(*) FROM dbrollback.runs")
    shutil.rmtree(store / saved_to)

    refused = cli("upgrade", "--json", *_args(database_url, store))
    assert refused.code == 3, refused.err
    assert refused.json["error"] == "refused" and refused.json["snapshot_id"] == saved_to
    assert saved_to in refused.json["message"] and "--skip-saved-values" in refused.json["message"]
    assert f"dbrollback restore --snapshot {saved_to}" in refused.json["message"]
    assert _version(db) == [("r1",)]
    assert _rows(db, "SELECT count(*) FROM dbrollback.runs") == runs_before
    assert _records(db)[0][6] is None

    skipped = _upgrade(cli, database_url, store, "--skip-saved-values")
    assert skipped["restored_values"] == [] and _version(db) == [("r2",)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE note IS NOT NULL") == [(0,)]
    (record,) = _records(db)
    assert record[6:10] == ("skipped", skipped["run_id"], None, None)


def test_damaged_saved_snapshot_refuses(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _notes_upgraded_and_written(project, cli, db, database_url, store)
    saved_to = _rollback(cli, database_url, store)["tables"][0]["lost_values_saved_to"]
    (data,) = [p for p in (store / saved_to).iterdir() if p.name != "manifest.json"]
    data.write_bytes(data.read_bytes()[:-3] + b"xyz")
    refused = cli("upgrade", "--json", *_args(database_url, store))
    assert refused.code == 3 and refused.json["snapshot_id"] == saved_to
    assert _version(db) == [("r1",)]


def test_odd_identifiers(project, cli, db, database_url, tmp_path):
    project.add_revision(
        "r1",
        None,
        f"""
        op.execute(sa.schema.CreateSchema({ODD_SCHEMA!r}))
        op.create_table({ODD_TABLE!r}, sa.Column({ODD_KEY!r}, sa.Text, primary_key=True),
                        sa.Column("n", sa.Integer, primary_key=True), sa.Column("gone", sa.Text),
                        schema={ODD_SCHEMA!r})
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        f"""
        op.drop_column({ODD_TABLE!r}, "gone", schema={ODD_SCHEMA!r})
        op.add_column({ODD_TABLE!r}, sa.Column({ODD_COL!r}, sa.Text), schema={ODD_SCHEMA!r})
    """,
        f"""
        op.drop_column({ODD_TABLE!r}, {ODD_COL!r}, schema={ODD_SCHEMA!r})
        op.add_column({ODD_TABLE!r}, sa.Column("gone", sa.Text), schema={ODD_SCHEMA!r})
    """,
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    table, note = sql.Identifier(ODD_SCHEMA, ODD_TABLE), sql.Identifier(ODD_COL)
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT r, g, 'x' FROM unnest(ARRAY['é', 'u s']) r, generate_series(1, 5) g"
        ).format(table)
    )
    _upgrade(cli, database_url, store)
    db.execute(sql.SQL("UPDATE {} SET {} = 'ü ' || n WHERE n <= 3").format(table, note))
    saved_to = _rollback(cli, database_url, store)["tables"][0]["lost_values_saved_to"]
    assert saved_to
    db.execute(sql.SQL("DELETE FROM {} WHERE {} = 'é' AND n = 1").format(table, sql.Identifier(ODD_KEY)))
    again = _upgrade(cli, database_url, store)
    assert [
        (r["table"], r["columns"], r["rows"], r["rows_deleted_since"]) for r in again["restored_values"]
    ] == [(f"{ODD_SCHEMA}.{ODD_TABLE}", [ODD_COL], 5, 1)]
    got = db.execute(
        sql.SQL("SELECT {}, n, {} FROM {} WHERE {} IS NOT NULL ORDER BY 1, 2").format(
            sql.Identifier(ODD_KEY), note, table, note
        )
    ).fetchall()
    assert got == [("u s", 1, "ü 1"), ("u s", 2, "ü 2"), ("u s", 3, "ü 3"), ("é", 2, "ü 2"), ("é", 3, "ü 3")]


def test_split_columns_get_the_saved_values_not_the_recomputation(project, cli, db, database_url, tmp_path):
    """The documented choice: saved values win over what the migration recomputes, on every row still
    there, including rows whose source column the app changed while rolled back."""
    _split_people(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO people SELECT g, 'Ann Lee' || g FROM generate_series(1, 4) g")
    _upgrade(cli, database_url, store)
    db.execute("UPDATE people SET last = 'Written' WHERE id = 1")
    _rollback(cli, database_url, store)
    assert _rows(db, "SELECT name FROM people WHERE id = 1") == [("Ann Lee1",)]  # the pre-image
    db.execute("UPDATE people SET name = 'Bob Smith' WHERE id = 2")
    db.execute("INSERT INTO people VALUES (5, 'Cy Doe')")
    again = _upgrade(cli, database_url, store)
    (restored,) = again["restored_values"]
    assert (restored["columns"], restored["rows"]) == (["first", "last"], 2)
    assert _rows(db, "SELECT id, first, last FROM people ORDER BY id") == [
        (1, "Ann", "Written"),  # the app's write before the rollback, back
        (2, "Ann", "Lee2"),  # saved value wins over the recomputation from 'Bob Smith'
        (3, "Ann", "Lee3"),
        (4, "Ann", "Lee4"),
        (5, "Cy", "Doe"),  # not in the saved snapshot: the migration's value
    ]


def test_a_column_added_by_a_later_revision_comes_back_there(project, cli, db, database_url, tmp_path):
    """r2 is the lossy one (snapshot, fingerprint); r3 adds `note` without a snapshot of its own: the
    record names r2, and the values come back in r3's transaction, once the column exists again."""
    _notes_project(project)
    (project.versions / "r2.py").unlink()
    project.add_revision("r2", "r1", 'op.drop_column("accounts", "legacy")', NOTE_DOWN.split("\n")[1])
    project.add_revision(
        "r3",
        "r2",
        'op.add_column("accounts", sa.Column("note", sa.Text))',
        'op.drop_column("accounts", "note")',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO accounts SELECT g, 'u' || g, 'L' || g FROM generate_series(1, 6) g")
    first = _upgrade(cli, database_url, store)
    assert [s["revision"] for s in first["snapshots"]] == ["r2"]
    db.execute("UPDATE accounts SET note = 'n' || id WHERE id <= 4")
    _rollback(cli, database_url, store)
    assert [(r[1], r[4]) for r in _records(db)] == [("r2", ["note"])]
    again = _upgrade(cli, database_url, store)
    assert [(r["revision"], r["rows"]) for r in again["restored_values"]] == [("r3", 4)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE note = 'n' || id") == [(4,)]


def test_columns_that_do_not_come_back_leave_the_record_pending_with_a_warning(
    project, cli, db, database_url, tmp_path
):
    store = tmp_path / "store"
    _notes_upgraded_and_written(project, cli, db, database_url, store)
    saved_to = _rollback(cli, database_url, store)["tables"][0]["lost_values_saved_to"]
    # the release now adds `note` with another type: the saved text values cannot go back into it
    (project.versions / "r2.py").unlink()
    project.add_revision(
        "r2",
        "r1",
        NOTE_UP.replace('sa.Column("note", sa.Text)', 'sa.Column("note", sa.Integer)'),
        NOTE_DOWN,
    )
    again = _upgrade(cli, database_url, store)
    assert again["restored_values"] == [] and _version(db) == [("r2",)]
    assert any(saved_to in w and "were not put back" in w for w in again["warnings"])
    assert _records(db)[0][6] is None
