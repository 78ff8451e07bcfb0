"""`dbrollback rollback --strategy restore` and rolling back several runs (`--to`, `--steps`), on the
real server, with writes made after the upgrade through a separate connection."""

from __future__ import annotations

import psycopg

from dbrollback.catalog.journal import rolled_back_runs
from dbrollback.snapshot.checksum import table_checksum

from .test_rollback import (
    DROP_LEGACY,
    ODD_COL,
    ODD_SCHEMA,
    ODD_TABLE,
    _accounts,
    _accounts_checksum,
    _args,
    _assert_both_runs_undone,
    _fill,
    _rollback,
    _rows,
    _split_people,
    _table,
    _two_lossy,
    _two_runs,
    _upgrade,
    _version,
)

RAISING = 'raise NotImplementedError("no way back")'


def _later_writes(db: psycopg.Connection) -> None:
    """10 rows updated, 5 inserted, 5 deleted after the migration: 20 rows written since."""
    db.execute("UPDATE accounts SET email = 'changed' || id WHERE id <= 10")
    db.execute("INSERT INTO accounts (id, email) SELECT g, 'new' || g FROM generate_series(101, 105) g")
    db.execute("DELETE FROM accounts WHERE id BETWEEN 91 AND 95")


def _state(db: psycopg.Connection) -> tuple:
    return (
        table_checksum(db, "public", "accounts"),
        _version(db),
        _rows(db, "SELECT count(*), max(id) FROM dbrollback.runs"),
        _rows(
            db,
            "SELECT format_type(atttypid, atttypmod), attname FROM pg_attribute "
            "WHERE attrelid = 'accounts'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        ),
    )


# -- --strategy restore --------------------------------------------------------------------------------


def test_restore_skips_a_raising_downgrade_and_puts_the_pre_image_back(
    project, cli, db, database_url, tmp_path
):
    _accounts(project, DROP_LEGACY[0], RAISING)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    db.execute("ALTER TABLE accounts ALTER COLUMN legacy SET NOT NULL")
    db.execute("CREATE INDEX by_email ON accounts (email)")
    db.execute("GRANT SELECT ON accounts TO PUBLIC")
    db.execute("COMMENT ON TABLE accounts IS 'the accounts'")
    before = _accounts_checksum(db)
    upgraded = _upgrade(cli, database_url, store)
    _later_writes(db)

    # merge cannot: the downgrade raises, and that fails the rollback (nothing changed)
    unchanged = _state(db)
    assert cli("rollback", "--yes", "--json", *_args(database_url, store)).code == 4
    assert _state(db)[:2] == unchanged[:2] and _state(db)[3] == unchanged[3]

    dry = _rollback(cli, database_url, store, "--strategy", "restore", "--dry-run")
    after_dry = _state(db)
    assert after_dry[:2] == unchanged[:2] and after_dry[3] == unchanged[3]
    assert after_dry[2][0][0] == unchanged[2][0][0] + 1  # only the failed merge attempt is journaled

    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    assert (doc["run_id"], doc["run_ids"], doc["reverted_revisions"]) == (
        upgraded["run_id"],
        [upgraded["run_id"]],
        ["r2"],
    )
    assert (doc["strategy"], doc["dry_run"], doc["verified"]) == ("restore", False, True)
    (skipped,) = doc["skipped_downgrades"]
    assert skipped["revision"] == "r2" and "NotImplementedError" in skipped["reason"]
    table = _table(doc, "public.accounts")
    assert (table["lost_writes"], table["kept_rows"], table["conflicts"], table["verified"]) == (
        20,
        0,
        0,
        True,
    )
    # the table lacked the dropped column: added back in place (not recreated), then every row put back
    assert (table["restored_rows"], table["reinserted_rows"]) == (95, 5)
    for key in ("tables", "verified", "reverted_revisions", "skipped_downgrades", "schema_matches"):
        assert dry[key] == doc[key], key
    assert dry["dry_run"] is True

    # exactly the pre-image: later writes gone, the dropped column back, the version moved back
    assert _accounts_checksum(db) == before
    assert _version(db) == [("r1",)]
    assert _rows(db, "SELECT count(*) FROM accounts WHERE id > 100 OR email LIKE 'changed%%'") == [(0,)]
    assert _rows(db, "SELECT legacy FROM accounts WHERE id = 93") == [("L93",)]
    assert rolled_back_runs(db) == {upgraded["run_id"]: doc_run_id(db)}
    # the table itself stayed: its index, grant and comment are there, the column is NOT NULL again
    assert _rows(
        db, "SELECT indexname FROM pg_indexes WHERE tablename = 'accounts' AND indexname = 'by_email'"
    ) == [("by_email",)]
    assert _rows(db, "SELECT relacl::text LIKE '%%=r/%%' FROM pg_class WHERE oid = 'accounts'::regclass") == [
        (True,)
    ]
    assert _rows(db, "SELECT obj_description('accounts'::regclass)") == [("the accounts",)]
    assert _rows(
        db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'legacy'"
    ) == [(True,)]
    # the serial column's sequence still owns/feeds the column
    db.execute("INSERT INTO accounts (email, legacy) VALUES ('after', 'x')")
    assert _rows(db, "SELECT id > 100 FROM accounts WHERE email = 'after'") == [(True,)]


def doc_run_id(db: psycopg.Connection) -> int:
    (row,) = _rows(db, "SELECT max(id) FROM dbrollback.runs WHERE direction = 'rollback'")
    return int(row[0])


def test_restore_in_place_after_an_empty_downgrade_with_odd_identifiers(
    project, cli, db, database_url, tmp_path
):
    table = f"{ODD_SCHEMA}.{ODD_TABLE}"
    project.add_revision(
        "r1",
        None,
        f"""
        op.execute(sa.schema.CreateSchema({ODD_SCHEMA!r}))
        op.create_table({ODD_TABLE!r}, sa.Column("region", sa.Text, primary_key=True),
                        sa.Column("n", sa.Integer, primary_key=True), sa.Column({ODD_COL!r}, sa.Text),
                        schema={ODD_SCHEMA!r})
    """,
    )
    project.add_revision(
        "r2",
        "r1",
        """op.execute(sa.text('UPDATE "Sch ""é""; x"."Ödd ""tab""; le" SET "Spa ce ""q""; ü" = upper("Spa ce ""q""; ü")'))""",
        '"""Nothing to undo, says its author."""',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    qualified = psycopg.sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    db.execute(
        psycopg.sql.SQL("INSERT INTO {} SELECT 'eu', g, 'v' || g FROM generate_series(1, 20) g").format(
            qualified
        )
    )
    before = table_checksum(db, ODD_SCHEMA, ODD_TABLE)
    _upgrade(cli, database_url, store)
    db.execute(psycopg.sql.SQL("INSERT INTO {} VALUES ('us', 1, 'new')").format(qualified))
    db.execute(
        psycopg.sql.SQL("UPDATE {} SET {} = 'w' WHERE n = 2").format(
            qualified, psycopg.sql.Identifier(ODD_COL)
        )
    )

    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    (skipped,) = doc["skipped_downgrades"]
    assert skipped == {"revision": "r2", "reason": "its downgrade() is empty"}
    found = _table(doc, table)
    # in place (same shape): 19 rows updated back (n = 2 included), the inserted row deleted
    assert (found["restored_rows"], found["reinserted_rows"], found["lost_writes"]) == (20, 0, 2)
    assert found["verified"] and doc["verified"] and doc["schema_matches"]
    assert table_checksum(db, ODD_SCHEMA, ODD_TABLE) == before and _version(db) == [("r1",)]


def test_table_without_a_key_merge_refuses_restore_replaces_it(project, cli, db, database_url, tmp_path):
    project.add_revision(
        "r1", None, 'op.create_table("loose", sa.Column("a", sa.Integer), sa.Column("b", sa.Text))'
    )
    project.add_revision(
        "r2", "r1", 'op.drop_column("loose", "b")', 'op.add_column("loose", sa.Column("b", sa.Text))'
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO loose SELECT g, 'b' || g FROM generate_series(1, 5) g")
    before = table_checksum(db, "public", "loose", columns=["a", "b"])
    _upgrade(cli, database_url, store)
    db.execute("INSERT INTO loose VALUES (6), (7)")

    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "--strategy restore" in refused.json["message"]
    assert _version(db) == [("r2",)] and _rows(db, "SELECT count(*) FROM loose") == [(7,)]

    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    assert doc["skipped_downgrades"] == []  # the downgrade ran and brought the column back
    loose = _table(doc, "public.loose")
    assert (loose["lost_writes"], loose["reinserted_rows"], loose["verified"]) == (2, 5, True)
    assert table_checksum(db, "public", "loose", columns=["a", "b"]) == before
    assert _version(db) == [("r1",)] and doc["verified"]


def test_restore_on_a_terminal_says_how_many_writes_are_discarded(
    project, cli, db, database_url, tmp_path, monkeypatch
):
    _accounts(project, *DROP_LEGACY)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db)
    _upgrade(cli, database_url, store)
    _later_writes(db)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    questions: list[str] = []
    monkeypatch.setattr("click.confirm", lambda text, *a, **k: questions.append(text) and False)
    result = cli("rollback", "--strategy", "restore", *_args(database_url, store))
    assert result.code == 3
    (question,) = questions
    assert "DISCARDING 20 row(s) written since the migration" in question
    assert "would discard 20 row(s)" in result.out
    assert _version(db) == [("r2",)]


# -- several runs: --steps, --to, --run ------------------------------------------------------------------


def _both_reverted(
    db: psycopg.Connection, doc: dict, first: dict, second: dict, before: tuple[int, str]
) -> None:
    assert (doc["run_id"], doc["run_ids"]) == (second["run_id"], [second["run_id"], first["run_id"]])
    assert doc["reverted_revisions"] == ["r4", "r3", "r2"] and doc["verified"] and doc["schema_matches"]
    assert _version(db) == [("r1",)]
    assert set(rolled_back_runs(db)) == {first["run_id"], second["run_id"]}
    _assert_both_runs_undone(db, before)


def test_two_runs_rolled_back_with_steps_in_one_transaction(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    first, second, before = _two_runs(project, cli, db, database_url, store)
    dry = _rollback(cli, database_url, store, "--steps", "2", "--dry-run")
    assert dry["run_ids"] == [second["run_id"], first["run_id"]] and dry["verified"]
    assert _version(db) == [("r4",)] and rolled_back_runs(db) == {}
    doc = _rollback(cli, database_url, store, "--steps", "2")
    assert [t["table"] for t in doc["tables"]] == ["public.accounts"] * 2
    _both_reverted(db, doc, first, second, before)


def test_two_runs_rolled_back_with_to_and_run(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    first, second, before = _two_runs(project, cli, db, database_url, store)
    # the older run alone: the newer one is still applied
    refused = cli("rollback", "--yes", "--json", "--run", str(first["run_id"]), *_args(database_url, store))
    assert refused.code == 3 and "something ran after it" in refused.json["message"]
    doc = _rollback(cli, database_url, store, "--to", "r1", "--run", str(first["run_id"]))
    _both_reverted(db, doc, first, second, before)


def test_to_and_steps_refusals_change_nothing(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    first, second, _ = _two_runs(project, cli, db, database_url, store)
    before = _state(db)

    unknown = cli("rollback", "--yes", "--json", "--to", "nope", *_args(database_url, store))
    assert unknown.code == 2 and unknown.json["error"] == "unknown_revision"
    # r3 is a known revision, but no run started from it (it was applied in the middle of a run)
    middle = cli("rollback", "--yes", "--json", "--to", "r3", *_args(database_url, store))
    assert middle.code == 3 and "r2" in middle.json["message"]
    # r4 is where the database is now: no run to roll back started there
    assert cli("rollback", "--yes", "--json", "--to", "r4", *_args(database_url, store)).code == 3
    # more runs than there are (the run that created the table is the third)
    too_many = cli("rollback", "--yes", "--json", "--steps", "4", *_args(database_url, store))
    assert too_many.code == 3 and too_many.json["available"][:2] == [second["run_id"], first["run_id"]]
    assert cli("rollback", "--yes", "--steps", "0", *_args(database_url, store)).code == 2
    assert cli("rollback", "--yes", "--steps", "1", "--to", "r2", *_args(database_url, store)).code == 2
    # --run not among the runs --steps picks
    outside = cli(
        "rollback",
        "--yes",
        "--json",
        "--steps",
        "1",
        "--run",
        str(first["run_id"]),
        *_args(database_url, store),
    )
    assert outside.code == 3 and str(first["run_id"]) in outside.json["message"]
    assert _state(db) == before and rolled_back_runs(db) == {}

    # a prefix of several runs' starting revisions is a usage error
    ambiguous = cli("rollback", "--yes", "--json", "--to", "r", *_args(database_url, store))
    assert ambiguous.code == 2 and "ambiguous" in ambiguous.json["message"]
    assert _state(db) == before
    # --to r2 is the one-run rollback of the newest run
    doc = _rollback(cli, database_url, store, "--to", "r2")
    assert doc["run_ids"] == [second["run_id"]] and _version(db) == [("r2",)]


def test_restore_of_two_runs_with_a_downgrade_failing_halfway(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    _two_lossy(project)
    # r4's downgrade changes the type back, then fails: the savepoint undoes its first half too
    (project.versions / "r4.py").write_text(
        (project.versions / "r4.py")
        .read_text()
        .replace(
            'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))',
            'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))\n    op.execute("SELECT 1/0")',
        )
    )
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 30)
    before = _accounts_checksum(db)
    first = _upgrade(cli, database_url, store, "r2")
    db.execute("UPDATE accounts SET email = 'between' WHERE id = 1")
    second = _upgrade(cli, database_url, store)
    db.execute("UPDATE accounts SET amount = 77 WHERE id = 2")

    doc = _rollback(cli, database_url, store, "--steps", "2", "--strategy", "restore")
    assert doc["run_ids"] == [second["run_id"], first["run_id"]] and doc["verified"]
    (skipped,) = doc["skipped_downgrades"]
    assert skipped["revision"] == "r4" and "division by zero" in skipped["reason"]
    # r4's table: recreated (still integer after the skipped downgrade), the write to id 2 discarded;
    # r2's table: the downgrade ran, restored in place, the write between the runs discarded
    assert [(t["table"], t["lost_writes"]) for t in doc["tables"]] == [
        ("public.accounts", 1),
        ("public.accounts", 1),
    ]
    assert _accounts_checksum(db) == before and _version(db) == [("r1",)]
    assert set(rolled_back_runs(db)) == {first["run_id"], second["run_id"]}


def test_restore_of_a_dropped_table_without_a_downgrade_function(project, cli, db, database_url, tmp_path):
    project.add_revision(
        "r1",
        None,
        'op.create_table("old", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text))',
    )
    project.add_revision("r2", "r1", 'op.drop_table("old")')
    path = project.versions / "r2.py"
    path.write_text(path.read_text().split("def downgrade():")[0])  # no downgrade() at all
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO old SELECT g, 'v' || g FROM generate_series(1, 12) g")
    before = table_checksum(db, "public", "old")
    _upgrade(cli, database_url, store)

    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "--strategy restore" in refused.json["message"]
    assert _version(db) == [("r2",)]

    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    assert doc["skipped_downgrades"] == [{"revision": "r2", "reason": "the revision has no downgrade()"}]
    old = _table(doc, "public.old")
    assert (old["reinserted_rows"], old["lost_writes"], old["verified"]) == (12, 0, True)
    assert table_checksum(db, "public", "old") == before and _version(db) == [("r1",)]
    assert "def downgrade" not in path.read_text()  # the revision module was only patched in memory
    # the serial column's sequence went with the table; it is back, owned by the column, past the rows
    db.execute("INSERT INTO old (v) VALUES ('next')")
    assert _rows(db, "SELECT id FROM old WHERE v = 'next'") == [(13,)]


def test_restore_refuses_to_recreate_a_table_others_depend_on(project, cli, db, database_url, tmp_path):
    # a type change whose downgrade raises: the table can only be recreated, and a view needs it
    _accounts(
        project,
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        RAISING,
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 10)
    _upgrade(cli, database_url, store)
    db.execute("CREATE VIEW account_emails AS SELECT id, email FROM accounts")
    before = _state(db)
    refused = cli("rollback", "--yes", "--json", "--strategy", "restore", *_args(database_url, store))
    assert refused.code == 3 and "account_emails" in refused.json["message"]
    after = _state(db)
    assert after[:2] == before[:2] and after[3] == before[3] and rolled_back_runs(db) == {}


def test_restore_adds_a_dropped_column_back_in_place_even_with_a_view_on_the_table(
    project, cli, db, database_url, tmp_path
):
    _accounts(project, DROP_LEGACY[0], RAISING)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, 10)
    before = _accounts_checksum(db)
    _upgrade(cli, database_url, store)
    db.execute("CREATE VIEW account_emails AS SELECT id, email FROM accounts")
    doc = cli("rollback", "--yes", "--json", "--strategy", "restore", *_args(database_url, store))
    # the data is back and verified; the view, made after the upgrade, is a schema difference
    assert doc.code == 1 and _table(doc.json, "public.accounts")["verified"]
    assert doc.json["schema_matches"] is False
    assert [d["object"] for d in doc.json["schema_differences"]] == ["view public.account_emails"]
    assert _accounts_checksum(db) == before
    assert _rows(db, "SELECT count(*) FROM account_emails") == [(10,)]


def test_to_takes_a_unique_prefix_of_a_revision_id(project, cli, db, database_url, tmp_path):
    store = tmp_path / "store"
    project.add_revision(
        "1a2b3c4d", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'
    )
    project.add_revision(
        "9f8e7d6c", "1a2b3c4d", 'op.add_column("t", sa.Column("x", sa.Text))', 'op.drop_column("t", "x")'
    )
    assert cli("upgrade", "1a2b3c4d", *_args(database_url, store)).code == 0
    assert cli("upgrade", *_args(database_url, store)).code == 0
    doc = _rollback(cli, database_url, store, "--to", "1a2b")
    assert doc["reverted_revisions"] == ["9f8e7d6c"] and _version(db) == [("1a2b3c4d",)]


def test_restore_counts_only_the_writes_since_into_columns_the_migration_added(
    project, cli, db, database_url, tmp_path
):
    _split_people(project)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO people SELECT g, 'Ann  Lee' || g FROM generate_series(1, 10) g")
    _upgrade(cli, database_url, store)
    db.execute("UPDATE people SET first = 'Bea', last = 'Cole' WHERE id = 1")
    db.execute("UPDATE people SET last = NULL WHERE id = 2")
    db.execute("UPDATE people SET first = first WHERE id = 3")  # written, but to the value it held
    db.execute("INSERT INTO people (id, first, last) VALUES (11, 'New', 'Person')")
    # discarded: the updates of rows 1 and 2 and the inserted row 11, not the migration's own split
    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    table = _table(doc, "public.people")
    assert table["lost_writes"] == 3 and table["verified"] and table["lost_values_saved_to"]
    assert _rows(db, "SELECT id, name FROM people ORDER BY id") == [(g, f"Ann  Lee{g}") for g in range(1, 11)]


def test_restore_adds_back_a_dropped_serial_column_with_its_sequence(
    project, cli, db, database_url, tmp_path
):
    project.add_revision(
        "r1",
        None,
        'op.execute("CREATE TABLE things (id integer PRIMARY KEY, counter serial NOT NULL, name text)")',
    )
    project.add_revision("r2", "r1", 'op.drop_column("things", "counter")', RAISING)
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO things (id, name) SELECT g, 'n' || g FROM generate_series(1, 10) g")
    _upgrade(cli, database_url, store)

    doc = _rollback(cli, database_url, store, "--strategy", "restore")
    assert doc["verified"] and doc["schema_matches"], doc["schema_differences"]
    assert _rows(db, "SELECT count(*) FROM things WHERE counter <> id") == [(0,)]
    # the column's sequence is back, owned by it, and goes on after the restored values
    assert _rows(db, "SELECT pg_get_serial_sequence('things', 'counter')") == [("public.things_counter_seq",)]
    db.execute("INSERT INTO things (id, name) VALUES (11, 'after')")
    assert _rows(db, "SELECT counter FROM things WHERE id = 11") == [(11,)]


def test_a_run_that_merged_two_heads_rolls_back_to_both(project, cli, db, database_url, tmp_path):
    """The run started from two heads and applied their merge revision, which drops a column: the
    rollback walks back through the merge to both heads and puts the column back."""
    project.add_revision(
        "base1",
        None,
        'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Text))',
    )
    project.add_revision("left", "base1", 'op.create_table("l", sa.Column("id", sa.Integer, primary_key=True))',
                         'op.drop_table("l")', branch_labels=("lefty",))  # fmt: skip
    project.add_revision("right", "base1", 'op.create_table("r", sa.Column("id", sa.Integer, primary_key=True))',
                         'op.drop_table("r")', branch_labels=("righty",))  # fmt: skip
    project.add_revision(
        "merged", ("left", "right"), 'op.drop_column("t", "x")', 'op.add_column("t", sa.Column("x", sa.Text))'
    )
    store = tmp_path / "store"
    assert cli("upgrade", "left", *_args(database_url, store)).code == 0
    assert cli("upgrade", "right", *_args(database_url, store)).code == 0
    db.execute("INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 10) g")
    upgraded = _upgrade(cli, database_url, store)
    assert sorted(upgraded["from_heads"]) == ["left", "right"]
    status = cli("status", "--json", *_args(database_url, store)).json
    (run,) = [r for r in status["runs"] if r["id"] == upgraded["run_id"]]
    assert run["rollback"]["possible"] is True, run["rollback"]

    doc = _rollback(cli, database_url, store)
    assert doc["reverted_revisions"] == ["merged"] and doc["verified"] and doc["schema_matches"]
    assert sorted(_version(db)) == [("left",), ("right",)]
    assert _rows(db, "SELECT count(*) FROM t WHERE x IS DISTINCT FROM 'x' || id") == [(0,)]


def test_a_run_that_went_up_two_branches_separately_is_refused(project, cli, db, database_url, tmp_path):
    project.add_revision("base1", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    for name, parent in (("left", "base1"), ("right", "base1"), ("left2", "left"), ("right2", "right")):
        project.add_revision(
            name,
            parent,
            f'op.create_table("{name}", sa.Column("id", sa.Integer, primary_key=True))',
            f'op.drop_table("{name}")',
            branch_labels=(f"{name}_branch",) if parent == "base1" else None,
        )
    store = tmp_path / "store"
    assert cli("upgrade", "left", *_args(database_url, store)).code == 0
    assert cli("upgrade", "right", *_args(database_url, store)).code == 0
    _upgrade(cli, database_url, store, "heads")
    before = sorted(_version(db))
    refused = cli("rollback", "--yes", "--json", *_args(database_url, store))
    assert refused.code == 3 and "Nothing was changed" in refused.json["message"], refused.out
    assert sorted(_version(db)) == before == [("left2",), ("right2",)]
