"""The lint recorder: revision files are imported and run under an offline Alembic context, and
every op.* call is recorded with its line — nothing is executed, no database is needed."""

from __future__ import annotations

import sys
from pathlib import Path

import alembic.op
import pytest
from alembic.operations import ops

from dbrollback.expand import ExpandOperation
from dbrollback.lint.recorder import RecordedRevision, record_revision
from tests.conftest import Project

SHOP = Path(__file__).resolve().parent.parent / "migrations_examples" / "shop" / "versions"

# (op class, the text the recorded line starts with) per direction, per shop revision.
SHOP_EXPECTED: dict[str, tuple[list[tuple[type, str]], list[tuple[type, str]]]] = {
    "0001_create_tables": (
        [(ops.CreateTableOp, "op.create_table(")] * 5,
        [
            (ops.DropTableOp, f'op.drop_table("{t}")')
            for t in ("newsletter_signups", "order_items", "orders", "products", "customers")
        ],
    ),
    "0002_add_customer_phone": (
        [(ops.AddColumnOp, 'op.add_column("customers", sa.Column("phone"')],
        [(ops.DropColumnOp, 'op.drop_column("customers", "phone")')],
    ),
    "0003_index_orders": (
        [
            (ops.CreateIndexOp, 'op.create_index("ix_orders_customer_id"'),
            (ops.CreateIndexOp, 'op.create_index("ix_orders_placed_at"'),
        ],
        [
            (ops.DropIndexOp, 'op.drop_index("ix_orders_placed_at"'),
            (ops.DropIndexOp, 'op.drop_index("ix_orders_customer_id"'),
        ],
    ),
    "0004_normalise_emails": ([(ops.ExecuteSQLOp, 'op.execute("UPDATE customers')], []),
    "0005_split_full_name": (
        [
            (ops.AddColumnOp, 'op.add_column("customers", sa.Column("first_name"'),
            (ops.AddColumnOp, 'op.add_column("customers", sa.Column("last_name"'),
            (ops.ExecuteSQLOp, "op.execute("),
            (ops.DropColumnOp, 'op.drop_column("customers", "full_name")'),
        ],
        [
            (ops.AddColumnOp, 'op.add_column("customers", sa.Column("full_name"'),
            (ops.ExecuteSQLOp, 'op.execute("UPDATE customers SET full_name'),
            (ops.AlterColumnOp, 'op.alter_column("customers", "full_name"'),
            (ops.DropColumnOp, 'op.drop_column("customers", "last_name")'),
            (ops.DropColumnOp, 'op.drop_column("customers", "first_name")'),
        ],
    ),
    "0006_weight_to_integer": (
        [(ops.AlterColumnOp, "op.alter_column(")],
        [(ops.AlterColumnOp, "op.alter_column(")],
    ),
    "0007_drop_legacy_code": (
        [(ops.DropColumnOp, 'op.drop_column("products", "legacy_code")')],
        [(ops.AddColumnOp, 'op.add_column("products", sa.Column("legacy_code"')],
    ),
    "0008_add_order_notes": (
        [(ops.AddColumnOp, 'op.add_column("orders", sa.Column("notes"')],
        [(ops.DropColumnOp, 'op.drop_column("orders", "notes")')],
    ),
    "0009_drop_newsletter": (
        [(ops.DropTableOp, 'op.drop_table("newsletter_signups")')],
        [(ops.CreateTableOp, "op.create_table(")],
    ),
    "0010_rename_first_name": (
        [(ExpandOperation, 'expand.rename_column("customers", "first_name", "given_name")')],
        [(ExpandOperation, "expand.abort()")],
    ),
}


def _line(recorded: RecordedRevision, number: int) -> str:
    return recorded.source.splitlines()[number - 1].strip()


def _line_number(path: Path, needle: str) -> int:
    matches = [i for i, text in enumerate(path.read_text().splitlines(), start=1) if needle in text]
    assert len(matches) == 1, (needle, matches)
    return matches[0]


def test_shop_example_has_ten_revisions() -> None:
    assert sorted(p.stem for p in SHOP.glob("0*.py")) == sorted(SHOP_EXPECTED)


@pytest.mark.parametrize("name", sorted(SHOP_EXPECTED))
def test_shop_revision_records_expected_ops_and_lines(name: str) -> None:
    path = SHOP / f"{name}.py"
    recorded = record_revision(path)
    assert recorded.syntax_error is None
    assert recorded.revision == name
    assert _line(recorded, recorded.revision_line or 0).startswith("revision: str =")
    assert _line(recorded, recorded.upgrade.line or 0) == "def upgrade() -> None:"
    assert _line(recorded, recorded.downgrade.line or 0) == "def downgrade() -> None:"
    for direction, expected in zip(("upgrade", "downgrade"), SHOP_EXPECTED[name], strict=True):
        function = recorded.function(direction)  # type: ignore[arg-type]
        assert function.opaque is None
        got = [(type(r.op), _line(recorded, r.line)) for r in function.ops]
        assert [cls for cls, _ in got] == [cls for cls, _ in expected]
        for (_, text), (_, prefix) in zip(got, expected, strict=True):
            assert text.startswith(prefix), (text, prefix)
        assert all(r.direction == direction and not r.in_autocommit_block for r in function.ops)
    # Only the data migration's downgrade is empty (comments only).
    assert recorded.downgrade.empty is (name == "0004_normalise_emails")


def test_shop_down_revision_and_operation_details() -> None:
    first = record_revision(SHOP / "0001_create_tables.py")
    assert first.down_revision is None
    assert [r.op.table_name for r in first.upgrade.ops] == [  # type: ignore[attr-defined]
        "customers",
        "products",
        "orders",
        "order_items",
        "newsletter_signups",
    ]
    weight = record_revision(SHOP / "0006_weight_to_integer.py")
    assert weight.down_revision == "0005_split_full_name"
    alter = weight.upgrade.ops[0].op
    assert isinstance(alter, ops.AlterColumnOp)
    assert (alter.table_name, alter.column_name) == ("products", "weight_kg")
    assert alter.kw["postgresql_using"] == "round(weight_kg)::integer"
    # Multi-line call: the line of `op.alter_column(`, not of an argument.
    calls = [i for i, text in enumerate(weight.source.splitlines(), start=1) if "op.alter_column(" in text]
    assert [weight.upgrade.ops[0].line, weight.downgrade.ops[0].line] == calls


def test_raw_sql_is_captured() -> None:
    emails = record_revision(SHOP / "0004_normalise_emails.py")
    assert (
        emails.upgrade.ops[0].sql == "UPDATE customers SET email = lower(email) WHERE email <> lower(email)"
    )
    assert [e.kind for e in emails.upgrade.ops[0].effects] == ["update"]
    split = record_revision(SHOP / "0005_split_full_name.py")
    sql = split.upgrade.ops[2].sql
    assert sql is not None and "first_name = CASE" in sql and "substr(full_name" in sql


def test_sa_text_with_bind_params_is_compiled_with_literals(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.execute(sa.text("UPDATE \\"Sp ace\\" SET v = :v WHERE n = :n").bindparams(v="it's", n=5))
        op.execute(sa.text("DELETE FROM t"))
    """,
    )
    recorded = record_revision(project.versions / "r1.py")
    assert [r.sql for r in recorded.upgrade.ops] == [
        "UPDATE \"Sp ace\" SET v = 'it''s' WHERE n = 5",
        "DELETE FROM t",
    ]
    assert recorded.upgrade.ops[0].effects[0].table is not None
    assert recorded.upgrade.ops[0].effects[0].table.name == "Sp ace"


def test_raising_revision_is_opaque(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.add_column("t", sa.Column("c", sa.Text))
        raise RuntimeError("needs the database")
    """,
        downgrade='op.drop_column("t", "c")',
    )
    recorded = record_revision(project.versions / "r1.py")
    path = project.versions / "r1.py"
    assert recorded.upgrade.opaque == "raised under the recorder: RuntimeError: needs the database"
    assert recorded.upgrade.error_line == _line_number(path, "raise RuntimeError")
    # What ran before the exception is still recorded.
    assert [type(r.op) for r in recorded.upgrade.ops] == [ops.AddColumnOp]
    assert recorded.downgrade.opaque is None


def test_get_bind_is_opaque_and_nothing_is_queried(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        conn = op.get_bind()
        if conn is not None:
            conn.execute(sa.text("DELETE FROM t"))
    """,
        downgrade="""
        bind = op.get_bind()
        bind.execute(sa.text("SELECT 1"))
    """,
    )
    recorded = record_revision(project.versions / "r1.py")
    assert recorded.upgrade.used_bind and recorded.upgrade.error is None
    assert recorded.upgrade.opaque == "uses op.get_bind() to reach the database directly"
    assert recorded.downgrade.used_bind
    assert recorded.downgrade.opaque is not None
    assert recorded.upgrade.ops == [] and recorded.downgrade.ops == []


def test_syntax_error_reported_with_pythons_line(project: Project) -> None:
    project.add_revision("r1", None, "op.add_column('t', sa.Column('c', sa.Text)")
    recorded = record_revision(project.versions / "r1.py")
    assert recorded.syntax_error is not None
    text = (project.versions / "r1.py").read_text()
    try:
        compile(text, "r1.py", "exec")
    except SyntaxError as exc:
        expected = exc.lineno
    assert recorded.syntax_error_line == expected
    assert not recorded.is_revision and recorded.ops == []


def test_import_error_reported_at_its_line(project: Project) -> None:
    project.add_revision("r1", None, "pass", header="import module_that_does_not_exist_xyz\n")
    path = project.versions / "r1.py"
    recorded = record_revision(path)
    assert recorded.syntax_error is not None and "ModuleNotFoundError" in recorded.syntax_error
    assert recorded.syntax_error_line == _line_number(path, "import module_that_does_not_exist_xyz")


def test_autocommit_block_is_detected(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.create_index("ix_a", "t", ["a"])
        with op.get_context().autocommit_block():
            op.create_index("ix_b", "t", ["b"], postgresql_concurrently=True)
            op.execute("CREATE INDEX CONCURRENTLY ix_c ON t (c)")
        op.drop_index("ix_a", table_name="t")
    """,
    )
    recorded = record_revision(project.versions / "r1.py")
    assert [(type(r.op), r.in_autocommit_block) for r in recorded.upgrade.ops] == [
        (ops.CreateIndexOp, False),
        (ops.CreateIndexOp, True),
        (ops.ExecuteSQLOp, True),
        (ops.DropIndexOp, False),
    ]


def test_multiline_calls_batch_ops_and_columns(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        op.add_column(
            "t",
            sa.Column("c", sa.Text),
        )
        with op.batch_alter_table("u") as batch:
            batch.drop_column("old")
    """,
    )
    path = project.versions / "r1.py"
    recorded = record_revision(path)
    add, drop = recorded.upgrade.ops
    assert (type(add.op), add.line, add.column) == (ops.AddColumnOp, _line_number(path, "op.add_column("), 5)
    assert isinstance(drop.op, ops.DropColumnOp)
    assert (drop.op.table_name, drop.op.column_name) == ("u", "old")
    assert drop.line == _line_number(path, 'batch.drop_column("old")')


@pytest.mark.parametrize(
    ("body", "not_implemented"),
    [
        ("pass", False),
        ('"""Nothing to do."""', False),
        ("...", False),
        ("# only a comment\npass", False),
        ("raise NotImplementedError", True),
        ('"""doc"""\nraise NotImplementedError("irreversible")', True),
    ],
)
def test_empty_bodies(project: Project, body: str, not_implemented: bool) -> None:
    project.add_revision("r1", None, 'op.drop_table("t")', downgrade=body)
    recorded = record_revision(project.versions / "r1.py")
    assert recorded.downgrade.empty and recorded.downgrade.present
    assert recorded.downgrade.raises_not_implemented is not_implemented
    # An empty body is not run, so `raise NotImplementedError` is not opaque.
    assert recorded.downgrade.opaque is None
    assert not recorded.upgrade.empty


def test_module_attributes_and_no_leftovers(project: Project) -> None:
    project.add_revision(
        "m1", ("a1", "b1"), "pass", header='dbrollback_irreversible = "emails lower-cased"\n'
    )
    before = set(sys.modules)
    recorded = record_revision(project.versions / "m1.py")
    assert recorded.down_revision == ("a1", "b1")
    assert recorded.irreversible == "emails lower-cased"
    assert recorded.upgrade.empty and recorded.downgrade.empty
    assert set(sys.modules) == before
    assert getattr(alembic.op, "_proxy", None) is None


def test_missing_downgrade_function(project: Project) -> None:
    path = project.versions / "r1.py"
    path.write_text(
        'from alembic import op\nrevision = "r1"\ndown_revision = None\n\n'
        'def upgrade():\n    op.drop_table("t")\n'
    )
    recorded = record_revision(path)
    assert recorded.revision_line == 2
    assert recorded.upgrade.present and not recorded.downgrade.present
    assert recorded.downgrade.line is None
