"""Downgrade-aware lint rules as data: downgrade-not-inverse, downgrade-loses-data,
downgrade-leaves-enum and irreversible-data-change, with the false-positive traps of issue #4."""

from __future__ import annotations

import textwrap

import pytest

from dbrollback.lint import RULES_BY_ID, LintContext, record_revision, run_rules
from tests.conftest import Project
from tests.test_lint_rules import Case, _line_of, _write

PG = "from sqlalchemy.dialects import postgresql\n"
IRREVERSIBLE = 'dbrollback_irreversible = "old values are not needed"\n'
DOWNGRADE_RULES = ("downgrade-not-inverse", "downgrade-loses-data", "downgrade-leaves-enum",
                   "irreversible-data-change")  # fmt: skip

DOWNGRADE_CASES = [
    # --- downgrade-not-inverse -----------------------------------------------------------------
    Case(
        "index-on-other-column-left",
        "downgrade-not-inverse",
        'op.add_column("t", sa.Column("c", sa.Text))\nop.create_index("ix_a", "t", ["b"])',
        'op.drop_column("t", "c")',
        expect=(("downgrade", "create_index"),),
    ),
    Case(
        "table-not-dropped",
        "downgrade-not-inverse",
        'op.create_table("a", sa.Column("id", sa.Integer))\nop.create_table("b", sa.Column("id", sa.Integer))',
        'op.drop_table("a")',
        expect=(("downgrade", 'create_table("b"'),),
    ),
    Case(
        "type-change-without-existing-type",
        "downgrade-not-inverse",
        'op.alter_column("t", "c", type_=sa.BigInteger)',
        'op.alter_column("t", "c", nullable=True)',
        expect=(("downgrade", "type_=sa.BigInteger"),),
    ),
    Case(
        "type-restored-to-another-type",
        "downgrade-not-inverse",
        'op.alter_column("t", "c", existing_type=sa.String(50), type_=sa.Text())',
        'op.alter_column("t", "c", existing_type=sa.Text(), type_=sa.String(100))',
        expect=(("downgrade", "type_=sa.Text()"),),
    ),
    Case(
        "rename-column-not-reversed",
        "downgrade-not-inverse",
        'op.alter_column("t", "a", new_column_name="b")\nop.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
        expect=(("downgrade", 'new_column_name="b"'),),
    ),
    Case(
        "rename-table-reversed-to-wrong-name",
        "downgrade-not-inverse",
        'op.rename_table("orders", "Bestellungen")',
        'op.rename_table("Bestellungen", "order")',
        expect=(("downgrade", 'op.rename_table("orders"'),),
    ),
    Case(
        "dropped-index-not-recreated",
        "downgrade-not-inverse",
        'op.drop_index("ix_old", table_name="t")\nop.create_index("ix_new", "t", ["a"])',
        'op.drop_index("ix_new", table_name="t")',
        expect=(("downgrade", '"ix_old"'),),
    ),
    Case(
        "dropped-column-not-recreated",
        "downgrade-not-inverse",
        'op.drop_column("t", "c")\nop.add_column("t", sa.Column("d", sa.Text))',
        'op.drop_column("t", "d")',
        expect=(("downgrade", 'drop_column("t", "c")'),),
    ),
    Case(
        "dropped-table-not-recreated",
        "downgrade-not-inverse",
        'op.drop_table("legacy")\nop.create_table("n", sa.Column("id", sa.Integer))',
        'op.drop_table("n")',
        expect=(("downgrade", '"legacy"'),),
    ),
    Case(
        "foreign-key-not-dropped",
        "downgrade-not-inverse",
        'op.create_foreign_key("fk_t_o", "t", "o", ["o_id"], ["id"])\nop.add_column("t", sa.Column("x", sa.Text))',
        'op.drop_column("t", "x")',
        expect=(("downgrade", "create_foreign_key"),),
    ),
    Case(
        "not-null-not-reversed",
        "downgrade-not-inverse",
        'op.alter_column("t", "c", existing_type=sa.Text, nullable=False)',
        'op.alter_column("t", "c", existing_type=sa.Text, server_default="x")',
        expect=(("downgrade", "nullable=False"),),
    ),
    Case(
        "server-default-not-reversed",
        "downgrade-not-inverse",
        'op.alter_column("t", "c", server_default=sa.text("0"))',
        'op.alter_column("t", "c", nullable=True)',
        expect=(("downgrade", "server_default"),),
    ),
    Case(
        "raw-index-not-dropped",
        "downgrade-not-inverse",
        'op.execute("CREATE INDEX \\"ix; Größe\\" ON \\"Kunden\\" (a)")\nop.execute("ALTER TABLE t ADD COLUMN c int")',
        'op.execute("DROP INDEX other_ix; ALTER TABLE t DROP COLUMN c")',
        expect=(("downgrade", "CREATE INDEX"),),
    ),
    Case(
        "raw-column-not-dropped",
        "downgrade-not-inverse",
        'op.execute("ALTER TABLE t ADD COLUMN c int, ADD COLUMN d int")',
        'op.execute("ALTER TABLE t DROP COLUMN c")',
        expect=(("downgrade", "ADD COLUMN"),),
    ),
    # A dropped table takes its indexes and constraints with it.
    Case(
        "downgrade-drops-table-with-its-index",
        "downgrade-not-inverse",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.create_index("ix_n_a", "n", ["a"])\n'
        'op.create_unique_constraint("uq_n_a", "n", ["a"])',
        'op.drop_table("n")',
    ),
    Case(
        "old-table-dropped-by-downgrade-takes-index",
        "downgrade-not-inverse",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.create_index("ix_t_a", "t", ["a"])',
        'op.drop_table("t")\nop.drop_table("n")',
    ),
    # Dropping a column drops the indexes and constraints on it.
    Case(
        "index-on-dropped-column",
        "downgrade-not-inverse",
        'op.add_column("t", sa.Column("c", sa.Text))\nop.create_index("ix_t_c", "t", ["c"])\n'
        'op.create_unique_constraint("uq_t_c", "t", ["c"])',
        'op.drop_column("t", "c")',
    ),
    Case(
        "full-inverse",
        "downgrade-not-inverse",
        """
        op.add_column("t", sa.Column("c", sa.Text))
        op.create_index("ix_a", "t", ["a"])
        op.alter_column("t", "d", existing_type=sa.Numeric(8, 3), type_=sa.Integer())
        op.alter_column("t", "e", new_column_name="f")
        op.alter_column("t", "g", existing_type=sa.Text, nullable=False, server_default="x")
        op.rename_table("u", "v")
        op.create_check_constraint("ck_t_a", "t", "a > 0")
        op.drop_index("ix_old", table_name="t")
        op.drop_constraint("fk_old", "t")
        op.drop_column("t", "old")
        op.drop_table("legacy")
        """,
        """
        op.create_table("legacy", sa.Column("id", sa.Integer))
        op.add_column("t", sa.Column("old", sa.Text))
        op.create_foreign_key("fk_old", "t", "o", ["o_id"], ["id"])
        op.create_index("ix_old", "t", ["b"])
        op.drop_constraint("ck_t_a", "t")
        op.rename_table("v", "u")
        op.alter_column("t", "g", existing_type=sa.Text, nullable=True, server_default=None)
        op.alter_column("t", "f", new_column_name="e")
        op.alter_column("t", "d", existing_type=sa.Integer(), type_=sa.NUMERIC(precision=8, scale=3))
        op.drop_index("ix_a", table_name="t")
        op.drop_column("t", "c")
        """,
    ),
    Case(
        "type-change-without-existing-type-restored",
        "downgrade-not-inverse",
        'op.alter_column("t", "c", type_=sa.BigInteger)',
        'op.alter_column("t", "c", type_=sa.Integer)',
    ),
    Case(
        "rename-and-type-change-in-either-order",
        "downgrade-not-inverse",
        'op.alter_column("t", "a", new_column_name="b", existing_type=sa.Integer, type_=sa.BigInteger)',
        'op.alter_column("t", "b", new_column_name="a")\nop.alter_column("t", "a", type_=sa.INTEGER())',
    ),
    Case(
        "raw-sql-both-ways",
        "downgrade-not-inverse",
        'op.execute("CREATE TABLE \\"Straße; x\\" (id int); ALTER TABLE t ADD COLUMN c int; '
        'CREATE INDEX ix_c ON t (c); CREATE INDEX ix_b ON s.t (b)")',
        'op.execute("DROP INDEX s.ix_b; ALTER TABLE t DROP COLUMN c; DROP TABLE \\"Straße; x\\"")',
    ),
    Case(
        "batch-alter-table",
        "downgrade-not-inverse",
        'with op.batch_alter_table("t") as b:\n    b.add_column(sa.Column("c", sa.Text))',
        'with op.batch_alter_table("t") as b:\n    b.drop_column("c")',
    ),
    Case(
        "temporary-table-within-upgrade",
        "downgrade-not-inverse",
        'op.create_table("tmp", sa.Column("id", sa.Integer))\nop.drop_table("tmp")\n'
        'op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
    ),
    Case(
        "empty-downgrade-is-missing-downgrade", "downgrade-not-inverse", 'op.create_index("ix", "t", ["a"])'
    ),
    Case(
        "declared-irreversible",
        "downgrade-not-inverse",
        'op.create_index("ix", "t", ["a"])\nop.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
        header=IRREVERSIBLE,
    ),
    # --- downgrade-loses-data ------------------------------------------------------------------
    Case(
        "column-re-added-empty",
        "downgrade-loses-data",
        'op.drop_column("products", "legacy_code")',
        'op.add_column("products", sa.Column("legacy_code", sa.Text))',
        expect=(("upgrade", "drop_column"),),
    ),
    Case(
        "table-recreated-empty",
        "downgrade-loses-data",
        'op.drop_table("Kunden Größe")',
        'op.create_table("Kunden Größe", sa.Column("id", sa.Integer))',
        expect=(("upgrade", "drop_table"),),
    ),
    Case(
        "text-to-varchar",
        "downgrade-loses-data",
        'op.alter_column("t", "c", existing_type=sa.Text(), type_=sa.String(20))',
        'op.alter_column("t", "c", existing_type=sa.String(20), type_=sa.Text())',
        expect=(("upgrade", "type_=sa.String(20)"),),
    ),
    Case(
        "bigint-to-int-old-type-from-downgrade",
        "downgrade-loses-data",
        'op.alter_column("t", "c", type_=sa.Integer)',
        'op.alter_column("t", "c", type_=sa.BigInteger)',
        expect=(("upgrade", "type_=sa.Integer"),),
    ),
    Case(
        "numeric-precision-lowered",
        "downgrade-loses-data",
        'op.alter_column("t", "c", existing_type=sa.Numeric(10, 3), type_=sa.Numeric(10, 2))',
        'op.alter_column("t", "c", existing_type=sa.Numeric(10, 2), type_=sa.Numeric(10, 3))',
        expect=(("upgrade", "type_=sa.Numeric(10, 2)"),),
    ),
    Case(
        "raw-drop-and-type-change",
        "downgrade-loses-data",
        'op.execute("ALTER TABLE t DROP COLUMN c")\nop.execute("ALTER TABLE t ALTER COLUMN d TYPE int4")',
        'op.execute("ALTER TABLE t ALTER COLUMN d TYPE bigint; ALTER TABLE t ADD COLUMN c text")',
        expect=(("upgrade", "DROP COLUMN"), ("upgrade", "TYPE int4")),
    ),
    Case(
        "widening-with-lossy-using",
        "downgrade-loses-data",
        'op.alter_column("t", "c", existing_type=sa.String(50), type_=sa.Text(), postgresql_using="lower(c)")',
        'op.alter_column("t", "c", existing_type=sa.Text(), type_=sa.String(50))',
        expect=(("upgrade", "lower(c)"),),
    ),
    Case(
        "declared-irreversible-is-info",
        "downgrade-loses-data",
        'op.drop_column("t", "c")',
        'op.add_column("t", sa.Column("c", sa.Text))',
        header=IRREVERSIBLE,
        expect=(("upgrade", "drop_column"),),
        severity="info",
    ),
    Case(
        "varchar-to-text",
        "downgrade-loses-data",
        'op.alter_column("t", "c", existing_type=sa.String(50), type_=sa.Text())',
        'op.alter_column("t", "c", existing_type=sa.Text(), type_=sa.String(50))',
    ),
    Case(
        "widening-changes",
        "downgrade-loses-data",
        """
        op.alter_column("t", "a", existing_type=sa.Integer, type_=sa.BigInteger)
        op.alter_column("t", "b", existing_type=sa.String(20), type_=sa.String(200), postgresql_using="b::varchar")
        op.alter_column("t", "c", existing_type=sa.Numeric(8, 2), type_=sa.Numeric(10, 3))
        op.alter_column("t", "d", existing_type=sa.SmallInteger, type_=sa.Numeric(5))
        op.execute("ALTER TABLE t ALTER COLUMN e TYPE double precision")
        """,
        """
        op.alter_column("t", "a", existing_type=sa.BigInteger, type_=sa.Integer)
        op.alter_column("t", "b", existing_type=sa.String(200), type_=sa.String(20))
        op.alter_column("t", "c", existing_type=sa.Numeric(10, 3), type_=sa.Numeric(8, 2))
        op.alter_column("t", "d", existing_type=sa.Numeric(5), type_=sa.SmallInteger)
        op.execute("ALTER TABLE t ALTER COLUMN e TYPE real")
        """,
    ),
    Case(
        "dropped-column-not-re-added",
        "downgrade-loses-data",
        'op.drop_column("t", "c")\nop.add_column("t", sa.Column("d", sa.Text))',
        'op.drop_column("t", "d")',
    ),
    Case(
        "downgrade-refills-the-column",
        "downgrade-loses-data",
        'op.add_column("c", sa.Column("first", sa.Text))\n'
        "op.execute(\"UPDATE c SET first = split_part(full_name, ' ', 1)\")\n"
        'op.drop_column("c", "full_name")',
        'op.add_column("c", sa.Column("full_name", sa.Text))\n'
        'op.execute("UPDATE c SET full_name = first")\n'
        'op.drop_column("c", "first")',
    ),
    Case(
        "drops-column-added-in-upgrade",
        "downgrade-loses-data",
        'op.add_column("t", sa.Column("c", sa.Text))\nop.drop_column("t", "c")',
        'op.add_column("t", sa.Column("c", sa.Text))',
    ),
    Case("empty-downgrade", "downgrade-loses-data", 'op.drop_column("t", "c")'),
    # --- downgrade-leaves-enum -----------------------------------------------------------------
    Case(
        "create-table-with-enum",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", "b", name="mood")))',
        'op.drop_table("t")',
        expect=(("downgrade", "create_table"),),
    ),
    Case(
        "postgresql-enum-odd-name",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", postgresql.ENUM("a", name="Mood; X"), nullable=False))',
        'op.drop_table("t")',
        header=PG,
        expect=(("downgrade", "create_table"),),
    ),
    Case(
        "raw-type-for-added-column",
        "downgrade-leaves-enum",
        "op.execute(\"CREATE TYPE public.mood AS ENUM ('a', 'b')\")\n"
        'op.add_column("t", sa.Column("m", postgresql.ENUM(name="mood", create_type=False)))',
        'op.drop_column("t", "m")',
        header=PG,
        expect=(("downgrade", "CREATE TYPE"),),
    ),
    Case(
        "column-converted-to-enum-and-back",
        "downgrade-leaves-enum",
        "op.execute(\"CREATE TYPE status AS ENUM ('new', 'done')\")\n"
        'op.execute("ALTER TABLE orders ALTER COLUMN status TYPE status USING status::status")',
        'op.execute("ALTER TABLE orders ALTER COLUMN status TYPE text")',
        expect=(("downgrade", "CREATE TYPE"),),
    ),
    Case(
        "enum-in-array-column",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.ARRAY(sa.Enum("a", name="tag"))))',
        'op.drop_table("t")',
        expect=(("downgrade", "create_table"),),
    ),
    Case(
        "downgrade-drops-type",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", "b", name="Mood X")))',
        'op.drop_table("t")\nop.execute(\'DROP TYPE IF EXISTS "Mood X"\')',
    ),
    Case(
        "downgrade-drops-type-with-drop-enum-type",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", "b", name="mood")))',
        'op.drop_table("t")\nop.execute(postgresql.DropEnumType(sa.Enum(name="mood")))',
        header=PG,
    ),
    # postgresql.ENUM(create_type=False) and non-native enums create no type.
    Case(
        "create-type-false",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", postgresql.ENUM("a", name="mood", create_type=False)))',
        'op.drop_table("t")',
        header=PG,
    ),
    Case(
        "non-native-enum",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", name="mood", native_enum=False)))',
        'op.drop_table("t")',
    ),
    Case(
        "enum-shared-with-kept-column",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", name="mood")))\n'
        'op.add_column("u", sa.Column("m", postgresql.ENUM(name="mood", create_type=False)))',
        'op.drop_table("t")',
        header=PG,
    ),
    Case(
        "enum-table-kept",
        "downgrade-leaves-enum",
        'op.create_table("t", sa.Column("m", sa.Enum("a", name="mood")))\nop.add_column("u", sa.Column("c", sa.Text))',
        'op.drop_column("u", "c")',
    ),
    Case(
        "empty-downgrade-enum",
        "downgrade-leaves-enum",
        "op.execute(\"CREATE TYPE mood AS ENUM ('a')\")",
    ),
    # --- irreversible-data-change --------------------------------------------------------------
    Case(
        "update-no-downgrade",
        "irreversible-data-change",
        'op.execute("UPDATE customers SET email = lower(email) WHERE email <> lower(email)")',
        expect=(("upgrade", "UPDATE customers"),),
    ),
    Case(
        "delete-downgrade-without-data",
        "irreversible-data-change",
        'op.execute("DELETE FROM \\"Straße; x\\" WHERE id > 10")\nop.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
        expect=(("upgrade", "DELETE FROM"),),
    ),
    Case(
        "bulk-insert-into-existing-table",
        "irreversible-data-change",
        'op.bulk_insert(sa.table("statuses", sa.column("name")), [{"name": "archived"}])',
        'op.execute("DELETE FROM other WHERE x = 1")',
        expect=(("upgrade", "bulk_insert"),),
    ),
    Case(
        "core-update",
        "irreversible-data-change",
        'op.execute(sa.table("t", sa.column("v")).update().values(v=1))',
        expect=(("upgrade", "update()"),),
    ),
    Case(
        "core-delete-and-text-with-binds",
        "irreversible-data-change",
        'op.execute(sa.table("t", sa.column("id")).delete().where(sa.column("id") > 5))\n'
        'op.execute(sa.text("INSERT INTO u (a) VALUES (:a)").bindparams(a="x"))',
        expect=(("upgrade", "delete()"), ("upgrade", "INSERT INTO u")),
    ),
    Case(
        "multi-statement-one-not-reversed",
        "irreversible-data-change",
        'op.execute("UPDATE a SET v = 1 WHERE id = 1; DELETE FROM b WHERE id = 2")',
        'op.execute("UPDATE a SET v = 0 WHERE id = 1")',
        expect=(("upgrade", "DELETE FROM b"),),
    ),
    Case(
        "declared-irreversible-data",
        "irreversible-data-change",
        'op.execute("UPDATE t SET a = lower(a)")',
        header=IRREVERSIBLE,
        expect=(("upgrade", "UPDATE t"),),
        severity="info",
    ),
    Case(
        "update-with-reverse-update",
        "irreversible-data-change",
        "op.execute(\"UPDATE orders SET status = 'closed' WHERE status = 'done'\")",
        "op.execute(\"UPDATE orders SET status = 'done' WHERE status = 'closed'\")",
    ),
    Case(
        "insert-with-core-delete-in-downgrade",
        "irreversible-data-change",
        "op.execute(\"INSERT INTO statuses (name) VALUES ('archived')\")",
        'op.execute(sa.table("statuses", sa.column("name")).delete().where(sa.column("name") == "archived"))',
    ),
    Case(
        "new-table-populated-then-dropped",
        "irreversible-data-change",
        'lookup = op.create_table("lookup", sa.Column("name", sa.Text))\n'
        'op.bulk_insert(lookup, [{"name": "a"}, {"name": "b"}])',
        'op.drop_table("lookup")',
    ),
    Case(
        "raw-new-table-populated",
        "irreversible-data-change",
        'op.execute("CREATE TABLE n (a int); INSERT INTO n VALUES (1)")',
        'op.execute("DROP TABLE n")',
    ),
    Case(
        "update-only-new-columns",
        "irreversible-data-change",
        'op.add_column("c", sa.Column("first", sa.Text))\n'
        "op.execute(\"UPDATE c SET first = split_part(full_name, ' ', 1)\")",
        'op.drop_column("c", "first")',
    ),
]


@pytest.mark.parametrize("case", DOWNGRADE_CASES, ids=lambda c: f"{c.rule}:{c.name}")
def test_rule_case(project: Project, case: Case) -> None:
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    recorded = record_revision(path)
    assert recorded.syntax_error is None, recorded.syntax_error
    assert recorded.upgrade.opaque is None and recorded.downgrade.opaque is None
    findings = run_rules(recorded, LintContext(), rules=(rule,))
    expected = [(direction, _line_of(path, marker)) for direction, marker in case.expect]
    assert [(f.direction, f.line) for f in findings] == expected, [f.message for f in findings]
    for finding in findings:
        assert finding.rule == case.rule
        assert finding.severity == (case.severity or rule.default_severity)
        assert finding.path == str(path.resolve())
        assert finding.revision == "r1"
        assert finding.message and finding.hint


def test_severities_and_axes() -> None:
    rules = [RULES_BY_ID[rule_id] for rule_id in DOWNGRADE_RULES]
    assert {rule.id: (rule.default_severity, rule.axes) for rule in rules} == {
        "downgrade-not-inverse": ("error", ("irreversible",)),
        "downgrade-loses-data": ("error", ("data-loss", "irreversible")),
        "downgrade-leaves-enum": ("error", ("irreversible",)),
        "irreversible-data-change": ("error", ("irreversible", "data-loss")),
    }


@pytest.mark.parametrize("opaque", ["upgrade", "downgrade"])
def test_opaque_revisions_raise_none_of_them(project: Project, opaque: str) -> None:
    upgrade = """
        op.create_table("t", sa.Column("m", sa.Enum("a", name="mood")))
        op.create_index("ix_a", "u", ["a"])
        op.drop_column("u", "old")
        op.execute("UPDATE u SET a = 1")
    """
    downgrade = 'op.add_column("u", sa.Column("old", sa.Text))\nop.drop_table("t")'
    upgrade = textwrap.dedent(upgrade)
    bind = 'sa.Enum(name="mood").drop(op.get_bind())'
    if opaque == "upgrade":
        upgrade += f"\n{bind}"
    else:
        downgrade += f"\n{bind}"
    project.add_revision("r1", None, upgrade, downgrade)
    recorded = record_revision(project.versions / "r1.py")
    assert recorded.function(opaque).used_bind  # type: ignore[arg-type]
    rules = tuple(RULES_BY_ID[r] for r in DOWNGRADE_RULES)
    assert run_rules(recorded, LintContext(), rules=rules) == []
    # The same revision without get_bind() raises every one of them.
    project.add_revision("r1", None, upgrade.replace(bind, ""), downgrade.replace(bind, ""))
    seen = {
        f.rule for f in run_rules(record_revision(project.versions / "r1.py"), LintContext(), rules=rules)
    }
    assert seen == set(DOWNGRADE_RULES)


def test_unreadable_sql_in_the_downgrade_is_not_guessed(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        'op.create_index("ix_a", "t", ["a"])\nop.execute("UPDATE t SET a = 1")',
        "op.execute(\"DO $$ BEGIN EXECUTE 'DROP INDEX ix_a'; END $$\")",
    )
    rules = tuple(RULES_BY_ID[r] for r in DOWNGRADE_RULES)
    assert run_rules(record_revision(project.versions / "r1.py"), LintContext(), rules=rules) == []


def test_messages_name_the_objects(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_index("ix_a", "t", ["a"])
        op.alter_column("t", "c", existing_type=sa.Numeric(8, 3), type_=sa.Integer())
        op.drop_column("s.t", "Straße; x")
        op.execute("CREATE TYPE mood AS ENUM ('a')")
        op.execute(sa.table("t", sa.column("v")).update().values(v=1))
        """,
        """
        op.alter_column("t", "c", existing_type=sa.Integer(), type_=sa.Numeric(8, 2))
        op.add_column("s.t", sa.Column("Straße; x", sa.Text))
        """,
    )
    rules = tuple(RULES_BY_ID[r] for r in DOWNGRADE_RULES)
    findings = run_rules(record_revision(project.versions / "r1.py"), LintContext(), rules=rules)
    snapshot = " — only a dbrollback snapshot (taken by `dbrollback upgrade` before this revision) brings the data back"
    assert [(f.rule, f.message) for f in findings] == [
        ("downgrade-not-inverse", "the downgrade does not drop index ix_a created here"),
        (
            "downgrade-loses-data",
            "changes t.c from numeric(8,3) to int4, which can change values; the downgrade restores the type, "
            "not the values" + snapshot,
        ),
        ("downgrade-not-inverse", "the downgrade changes t.c to numeric(8,2), not back to numeric(8,3)"),
        ("downgrade-loses-data", "drops column s.t.Straße; x; the downgrade re-adds it empty" + snapshot),
        (
            "downgrade-leaves-enum",
            "the downgrade does not drop enum type mood created here; upgrading again after it fails with "
            "'type already exists'",
        ),
        (
            "irreversible-data-change",
            "updates rows of t, and the downgrade has no UPDATE/INSERT/DELETE on t: rolling back keeps the "
            "changed rows; only a dbrollback snapshot taken before the upgrade restores them",
        ),
    ]


def test_core_statements_are_recorded_as_parseable_sql(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        t = sa.table("t", sa.column("v"), sa.column("id"))
        op.execute(t.update().where(t.c.id == 3).values(v="x"))
        op.execute(t.insert().values([{"v": 1, "id": 2}, {"v": 3, "id": 4}]))
        op.execute(t.delete().where(t.c.id > 1))
        """,
    )
    ops = record_revision(project.versions / "r1.py").upgrade.ops
    assert [[(e.kind, str(e.table), e.opaque) for e in recorded.effects] for recorded in ops] == [
        [("update", "t", False)],
        [("insert", "t", False)],
        [("delete", "t", False)],
    ]
