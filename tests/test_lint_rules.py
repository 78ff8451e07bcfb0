"""Lint rules as data: for each rule, revisions that must and must not raise it, plus suppressions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbrollback.lint import (
    ALL_RULES,
    RULES_BY_ID,
    Finding,
    LintContext,
    lint_file,
    record_revision,
    run_rules,
)
from dbrollback.lint.findings import AXES, apply_suppressions
from tests.conftest import Project

SHOP = Path(__file__).resolve().parent.parent / "migrations_examples" / "shop" / "versions"


@dataclass(frozen=True)
class Case:
    name: str
    rule: str
    upgrade: str
    downgrade: str = "pass"
    header: str = ""
    down: str | tuple[str, ...] | None = None
    # (direction, a text unique to the expected line) per expected finding; empty = must pass.
    expect: tuple[tuple[str, str], ...] = ()
    severity: str | None = None


CASES = [
    # --- missing-downgrade ---------------------------------------------------------------------
    Case(
        "pass-body",
        "missing-downgrade",
        'op.drop_column("t", "c")',
        "pass",
        expect=(("downgrade", "def downgrade"),),
    ),
    Case(
        "docstring-only",
        "missing-downgrade",
        'op.drop_column("t", "c")',
        '"""Cannot be undone."""',
        expect=(("downgrade", "def downgrade"),),
    ),
    Case(
        "comment-only",
        "missing-downgrade",
        'op.drop_column("t", "c")',
        "# nothing\npass",
        expect=(("downgrade", "def downgrade"),),
    ),
    Case(
        "not-implemented",
        "missing-downgrade",
        'op.drop_column("t", "c")',
        "raise NotImplementedError()",
        expect=(("downgrade", "def downgrade"),),
    ),
    Case(
        "real-downgrade",
        "missing-downgrade",
        'op.drop_column("t", "c")',
        'op.add_column("t", sa.Column("c", sa.Text))',
    ),
    Case("merge-revision", "missing-downgrade", "pass", "pass", down=("a1", "b1")),
    Case("empty-upgrade", "missing-downgrade", '"""placeholder"""', "raise NotImplementedError"),
    Case(
        "declared-irreversible",
        "missing-downgrade",
        'op.execute("UPDATE t SET a = lower(a)")',
        "pass",
        header='dbrollback_irreversible = "emails are lower-cased for good"\n',
        expect=(("downgrade", "def downgrade"),),
        severity="info",
    ),
    # --- drop-table ----------------------------------------------------------------------------
    Case("drop-table", "drop-table", 'op.drop_table("orders")', expect=(("upgrade", "drop_table"),)),
    Case(
        "drop-table-raw",
        "drop-table",
        'op.execute("DROP TABLE \\"Old Orders\\"")',
        expect=(("upgrade", "DROP TABLE"),),
    ),
    Case(
        "drop-table-in-downgrade",
        "drop-table",
        'op.rename_table("a", "b")',
        'op.drop_table("legacy")',
        expect=(("downgrade", "drop_table"),),
    ),
    Case(
        "downgrade-drops-created-table",
        "drop-table",
        'op.create_table("t", sa.Column("id", sa.Integer))',
        'op.drop_table("t")',
    ),
    Case(
        "downgrade-after-opaque-upgrade",
        "drop-table",
        'op.get_bind().execute(sa.text("CREATE TABLE t (id int)"))',
        'op.drop_table("t")',
    ),
    Case(
        "temp-table-in-same-function",
        "drop-table",
        'op.create_table("tmp", sa.Column("id", sa.Integer))\nop.drop_table("tmp")',
    ),
    # --- drop-column ---------------------------------------------------------------------------
    Case("drop-column", "drop-column", 'op.drop_column("t", "c")', expect=(("upgrade", "drop_column"),)),
    Case(
        "drop-column-raw",
        "drop-column",
        'op.execute("ALTER TABLE t DROP COLUMN c")',
        expect=(("upgrade", "DROP COLUMN"),),
    ),
    Case(
        "drop-column-batch",
        "drop-column",
        'with op.batch_alter_table("t") as b:\n    b.drop_column("c")',
        expect=(("upgrade", "b.drop_column"),),
    ),
    Case(
        "downgrade-drops-added-column",
        "drop-column",
        'op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
    ),
    Case(
        "downgrade-drops-other-column",
        "drop-column",
        'op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")\nop.drop_column("t", "d")',
        expect=(("downgrade", '"d"'),),
    ),
    Case(
        # The add_column after the bind was used is recorded: the downgrade undoes the upgrade's own.
        "downgrade-drops-column-added-after-bind-use",
        "drop-column",
        'e = postgresql.ENUM("a", "b", name="mood", create_type=False)\n'
        "e.create(op.get_bind(), checkfirst=True)\n"
        'op.add_column("t", sa.Column("m7", e))',
        'op.drop_column("t", "m7")',
        header="from sqlalchemy.dialects import postgresql\n",
    ),
    Case(
        # What the opaque part of the upgrade added is not known: no guess that "c" held old data.
        "downgrade-after-opaque-upgrade",
        "drop-column",
        'op.get_bind().execute(sa.text("ALTER TABLE t ADD COLUMN c text"))',
        'op.drop_column("t", "c")',
    ),
    Case(
        "downgrade-after-unreadable-upgrade-sql",
        "drop-column",
        "op.execute(\"DO $$ BEGIN EXECUTE 'ALTER TABLE t ADD COLUMN c text'; END $$\")",
        'op.drop_column("t", "c")',
    ),
    Case(
        "upgrade-drop-still-reported-when-downgrade-opaque",
        "drop-column",
        'op.drop_column("t", "c")',
        'op.get_bind().execute(sa.text("ALTER TABLE t ADD COLUMN c text"))',
        expect=(("upgrade", "drop_column"),),
    ),
    Case(
        "drop-column-odd-names",
        "drop-column",
        'op.drop_column("Kunden Größe", "Straße; \\"x\\"")',
        expect=(("upgrade", "Kunden Größe"),),
    ),
    # --- downgrade-drops-new-data --------------------------------------------------------------
    Case(
        "drops-new-column",
        "downgrade-drops-new-data",
        'op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
        expect=(("downgrade", "drop_column"),),
        severity="info",
    ),
    Case(
        "drops-new-table-raw",
        "downgrade-drops-new-data",
        'op.execute("CREATE TABLE n (id int)")',
        'op.execute("DROP TABLE n")',
        expect=(("downgrade", "DROP TABLE"),),
    ),
    Case(
        # What autogenerate writes: the index goes with the table, only the table's data matters.
        "autogenerated-downgrade",
        "downgrade-drops-new-data",
        'op.create_table("posts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("user_id", sa.Integer))\n'
        'op.create_index(op.f("ix_posts_user_id"), "posts", ["user_id"])',
        'op.drop_index(op.f("ix_posts_user_id"), table_name="posts")\nop.drop_table("posts")',
        expect=(("downgrade", "drop_table"),),
    ),
    Case(
        "drops-old-column",
        "downgrade-drops-new-data",
        'op.alter_column("t", "c", nullable=True)',
        'op.drop_column("t", "c")',
    ),
    # --- rename-column -------------------------------------------------------------------------
    Case(
        "rename-column",
        "rename-column",
        'op.alter_column("t", "a", new_column_name="b")',
        'op.alter_column("t", "b", new_column_name="a")',
        expect=(("upgrade", 'new_column_name="b"'), ("downgrade", 'new_column_name="a"')),
    ),
    Case(
        "rename-column-raw",
        "rename-column",
        'op.execute("ALTER TABLE t RENAME COLUMN a TO b")',
        expect=(("upgrade", "RENAME COLUMN"),),
    ),
    Case(
        "rename-on-new-table",
        "rename-column",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.alter_column("n", "a", new_column_name="b")',
    ),
    Case("alter-without-rename", "rename-column", 'op.alter_column("t", "a", nullable=False)'),
    # --- create-index-not-concurrently ---------------------------------------------------------
    Case(
        "plain-index",
        "create-index-not-concurrently",
        'op.create_index("ix", "t", ["a"])',
        expect=(("upgrade", "create_index"),),
    ),
    Case(
        "plain-index-raw",
        "create-index-not-concurrently",
        'op.execute("CREATE UNIQUE INDEX ix ON t (a)")',
        expect=(("upgrade", "CREATE UNIQUE INDEX"),),
    ),
    Case(
        "index-in-downgrade",
        "create-index-not-concurrently",
        'op.drop_index("ix", table_name="t")',
        'op.create_index("ix", "t", ["a"])',
        expect=(("downgrade", "create_index"),),
    ),
    Case(
        "index-on-new-table",
        "create-index-not-concurrently",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.create_index("ix", "n", ["a"])',
    ),
    Case(
        "index-on-new-table-raw",
        "create-index-not-concurrently",
        'op.execute("CREATE TABLE n (a text)")\nop.execute("CREATE INDEX ix ON n (a)")',
    ),
    Case(
        "concurrent-index",
        "create-index-not-concurrently",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix", "t", ["a"], postgresql_concurrently=True)',
    ),
    Case(
        "concurrent-index-raw",
        "create-index-not-concurrently",
        'with op.get_context().autocommit_block():\n    op.execute("CREATE INDEX CONCURRENTLY ix ON t (a)")',
    ),
    # --- concurrently-in-transaction ------------------------------------------------------------
    Case(
        "concurrently-outside-block",
        "concurrently-in-transaction",
        'op.create_index("ix", "t", ["a"], postgresql_concurrently=True)',
        expect=(("upgrade", "create_index"),),
    ),
    Case(
        "raw-concurrently-outside-block",
        "concurrently-in-transaction",
        'op.execute("CREATE INDEX CONCURRENTLY ix ON t (a)")',
        expect=(("upgrade", "CONCURRENTLY"),),
    ),
    Case(
        "drop-concurrently-in-downgrade",
        "concurrently-in-transaction",
        "pass",
        'op.drop_index("ix", table_name="t", postgresql_concurrently=True)',
        expect=(("downgrade", "drop_index"),),
    ),
    Case(
        "raw-drop-concurrently",
        "concurrently-in-transaction",
        'op.execute("DROP INDEX CONCURRENTLY ix")',
        expect=(("upgrade", "DROP INDEX"),),
    ),
    Case(
        "reindex-concurrently",
        "concurrently-in-transaction",
        'op.execute("REINDEX INDEX CONCURRENTLY ix")',
        expect=(("upgrade", "REINDEX"),),
    ),
    Case(
        "concurrently-inside-block",
        "concurrently-in-transaction",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix", "t", ["a"], postgresql_concurrently=True)\n'
        '    op.execute("DROP INDEX CONCURRENTLY old_ix")',
    ),
    Case("plain-index-no-concurrently", "concurrently-in-transaction", 'op.create_index("ix", "t", ["a"])'),
    # --- opaque-migration ----------------------------------------------------------------------
    Case(
        "raises",
        "opaque-migration",
        'op.add_column("t", sa.Column("c", sa.Text))\nraise ValueError("x")',
        'op.drop_column("t", "c")',
        expect=(("upgrade", "raise ValueError"),),
    ),
    Case(
        "get-bind-execute",
        "opaque-migration",
        'op.add_column("t", sa.Column("c", sa.Text))',
        'conn = op.get_bind()\nconn.execute(sa.text("UPDATE t SET c = NULL"))\nop.drop_column("t", "c")',
        expect=(("downgrade", "def downgrade"),),
    ),
    Case(
        # Reading the dialect sends nothing to the database: the recording goes on.
        "get-bind-dialect-only",
        "opaque-migration",
        'if op.get_bind().dialect.name == "postgresql":\n    op.add_column("t", sa.Column("c", sa.Text))',
        'if op.get_bind().engine.dialect.name == "postgresql":\n    op.drop_column("t", "c")',
    ),
    Case(
        "inspect-through-bind",
        "opaque-migration",
        "insp = sa.inspect(op.get_bind())\n"
        'if "c" not in [column["name"] for column in insp.get_columns("t")]:\n'
        '    op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
        expect=(("upgrade", "sa.inspect(op.get_bind())"),),
    ),
    Case(
        # SQLAlchemy's .create(bind) runs DDL through the bind (checkfirst even queries the catalog).
        "enum-create-through-bind",
        "opaque-migration",
        'e = postgresql.ENUM("a", "b", name="mood", create_type=False)\n'
        "e.create(op.get_bind(), checkfirst=True)\n"
        'op.add_column("t", sa.Column("m", e))',
        'op.drop_column("t", "m")',
        header="from sqlalchemy.dialects import postgresql\n",
        expect=(("upgrade", "def upgrade"),),
    ),
    Case(
        "plain-ops",
        "opaque-migration",
        'op.add_column("t", sa.Column("c", sa.Text))',
        'op.drop_column("t", "c")',
    ),
    # --- syntax-error --------------------------------------------------------------------------
    Case("syntax-error", "syntax-error", 'op.drop_table("t"', expect=(("graph", "def downgrade"),)),
    Case("imports", "syntax-error", 'op.drop_table("t")'),
]


def _write(project: Project, case: Case) -> Path:
    project.add_revision("r1", case.down, case.upgrade, case.downgrade, header=case.header)
    return project.versions / "r1.py"


def _line_of(path: Path, text: str) -> int:
    lines = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line]
    assert len(lines) == 1, (text, lines)
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}:{c.name}")
def test_rule_case(project: Project, case: Case) -> None:
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    recorded = record_revision(path)
    findings = run_rules(recorded, LintContext(), rules=(rule,))
    expected = [(direction, _line_of(path, marker)) for direction, marker in case.expect]
    if case.rule == "syntax-error" and case.expect:
        # Python reports the unclosed call's error at its own line, whatever the version says.
        try:
            compile(path.read_text(), str(path), "exec")
        except SyntaxError as exc:
            expected = [("graph", exc.lineno or 0)]
    assert [(f.direction, f.line) for f in findings] == expected
    for finding in findings:
        assert finding.rule == case.rule
        assert finding.severity == (case.severity or rule.default_severity)
        assert finding.path == str(path.resolve())
        assert finding.revision == (None if case.rule == "syntax-error" else "r1")
        assert finding.message and finding.hint


def _all_cases() -> list[Case]:
    """The Case lists of every tests/test_lint_rules*.py module and tests/test_lint_expand.py."""
    import importlib

    found: list[Case] = []
    here = Path(__file__).parent
    for module_path in [*sorted(here.glob("test_lint_rules*.py")), here / "test_lint_expand.py"]:
        module = importlib.import_module(f"tests.{module_path.stem}")
        for value in vars(module).values():
            if isinstance(value, list) and value and all(isinstance(c, Case) for c in value):
                found.extend(value)
    return found


def test_every_rule_has_cases_that_pass_and_fail() -> None:
    from dbrollback.lint.findings import GraphRule, MetaRule

    every_case = _all_cases()
    for rule in ALL_RULES:
        if isinstance(rule, (GraphRule, MetaRule)):
            continue  # directory-level and suppression rules: tests/test_lint_graph_and_output.py
        cases = [c for c in every_case if c.rule == rule.id]
        assert any(c.expect for c in cases), rule.id
        assert any(not c.expect for c in cases), rule.id


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.id)
def test_rule_metadata(rule: object) -> None:
    from dbrollback.lint import Rule

    assert isinstance(rule, Rule)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.id)
    assert rule.default_severity in ("error", "warning", "info")
    assert rule.axes and set(rule.axes) <= set(AXES)
    assert rule.problem and "\n" not in rule.problem
    assert rule.safe_alternative


def test_one_operation_can_raise_several_rules_once_each(project: Project) -> None:
    project.add_revision(
        "r1", None, 'op.execute("DROP TABLE a, b; ALTER TABLE c DROP COLUMN x, DROP COLUMN y")'
    )
    findings = lint_file(project.versions / "r1.py")
    assert [(f.rule, f.message) for f in findings] == [
        ("drop-column", "drops column c.x, c.y and its values"),
        ("drop-table", "drops table a, b and all its rows"),
        ("missing-downgrade", "the downgrade is empty but the upgrade is not"),
    ]


# Downgrade operations whose finding holds only if the upgrade did not create what they touch.
EXEMPTION_DEPENDENT_DOWNGRADE = {
    "drop-column": 'op.drop_column("t", "c")',
    "drop-table": 'op.drop_table("legacy")',
    "drop-index-not-concurrently": 'op.drop_index("ix_a", table_name="t")',
    "add-required-column": 'op.add_column("t", sa.Column("r", sa.Integer, nullable=False))',
    "truncate-table": 'op.execute("TRUNCATE t")',
    "unbatched-data-change": 'op.execute("UPDATE t SET a = 1")',
    "drop-schema": 'op.execute("DROP SCHEMA s CASCADE")',
}


@pytest.mark.parametrize(
    "incomplete",
    [
        'op.get_bind().execute(sa.text("SELECT 1"))',
        'op.add_column("t", sa.Column("x", sa.Text))\nraise RuntimeError("needs the database")',
        "op.execute(\"DO $$ BEGIN EXECUTE 'CREATE TABLE legacy (id int)'; END $$\")",
    ],
    ids=["bind", "raises", "unreadable-sql"],
)
def test_downgrade_findings_needing_the_whole_upgrade_wait_for_it(project: Project, incomplete: str) -> None:
    """Issue #4, 5: with part of the upgrade unseen, "the upgrade did not create it" is a guess."""
    rules = tuple(RULES_BY_ID[rule_id] for rule_id in EXEMPTION_DEPENDENT_DOWNGRADE)
    downgrade = "\n".join(EXEMPTION_DEPENDENT_DOWNGRADE.values())
    upgrade = 'op.alter_column("t", "z", new_column_name="zz")'
    project.add_revision("r1", None, upgrade, downgrade)
    seen = run_rules(record_revision(project.versions / "r1.py"), LintContext(), rules=rules)
    assert {f.rule for f in seen if f.direction == "downgrade"} == set(EXEMPTION_DEPENDENT_DOWNGRADE)

    project.add_revision("r1", None, f"{upgrade}\n{incomplete}", downgrade)
    recorded = record_revision(project.versions / "r1.py")
    assert not recorded.upgrade.fully_seen and recorded.downgrade.fully_seen
    assert [f for f in run_rules(recorded, LintContext(), rules=rules) if f.direction == "downgrade"] == []


def test_get_bind_stand_in_records_on_until_a_result_is_used(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        if op.get_bind().dialect.name != "postgresql":
            raise RuntimeError("PostgreSQL only")
        op.add_column("t", sa.Column("a", sa.Text))
        op.get_bind().execute(sa.text("UPDATE t SET a = 'x'"))
        with op.get_bind().engine.begin() as connection:
            connection.execute(sa.text("UPDATE t SET a = 'y'"))
        op.add_column("t", sa.Column("b", sa.Text))
        if op.get_bind().execute(sa.text("SELECT count(*) FROM t")).scalar():
            op.drop_column("t", "old")
        op.add_column("t", sa.Column("never", sa.Text))
        """,
        'op.drop_column("t", "b")\nop.drop_column("t", "a")',
    )
    path = project.versions / "r1.py"
    recorded = record_revision(path)
    upgrade = recorded.upgrade
    # Nothing recorded on a branch taken on data that does not exist.
    assert [r.op.column.name for r in upgrade.ops] == ["a", "b"]  # type: ignore[attr-defined]
    assert upgrade.used_bind and upgrade.error is not None and "DatabaseNeeded" in upgrade.error
    assert upgrade.error_line == _line_of(path, "SELECT count(*)")
    assert upgrade.opaque == "uses op.get_bind() to reach the database directly"
    assert recorded.downgrade.opaque is None


def test_shop_example_findings() -> None:
    got = []
    for path in sorted(SHOP.glob("0*.py")):
        for finding in lint_file(path):
            text = path.read_text().splitlines()[finding.line - 1].strip()
            got.append((path.stem[:4], finding.rule, finding.severity, finding.direction, text))
    assert got == [
        ("0001", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_table("newsletter_signups")'),
        ("0001", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_table("order_items")'),
        ("0001", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_table("orders")'),
        ("0001", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_table("products")'),
        ("0001", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_table("customers")'),
        ("0002", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_column("customers", "phone")'),
        (
            "0003",
            "create-index-not-concurrently",
            "error",
            "upgrade",
            'op.create_index("ix_orders_customer_id", "orders", ["customer_id"])',
        ),
        (
            "0003",
            "create-index-not-concurrently",
            "error",
            "upgrade",
            'op.create_index("ix_orders_placed_at", "orders", ["placed_at"])',
        ),
        (
            "0004",
            "irreversible-data-change",
            "error",
            "upgrade",
            'op.execute("UPDATE customers SET email = lower(email) WHERE email <> lower(email)")',
        ),
        ("0004", "missing-downgrade", "error", "downgrade", "def downgrade() -> None:"),
        ("0005", "unbatched-data-change", "error", "upgrade", "op.execute("),
        ("0005", "drop-column", "error", "upgrade", 'op.drop_column("customers", "full_name")'),
        (
            "0005",
            "unbatched-data-change",
            "error",
            "downgrade",
            "op.execute(\"UPDATE customers SET full_name = concat_ws(' ', first_name, last_name)\")",
        ),
        (
            "0005",
            "set-not-null",
            "error",
            "downgrade",
            'op.alter_column("customers", "full_name", existing_type=sa.Text, nullable=False)',
        ),
        ("0005", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_column("customers", "last_name")'),
        (
            "0005",
            "downgrade-drops-new-data",
            "info",
            "downgrade",
            'op.drop_column("customers", "first_name")',
        ),
        ("0006", "change-column-type", "error", "upgrade", "op.alter_column("),
        ("0006", "downgrade-loses-data", "error", "upgrade", "op.alter_column("),
        ("0006", "change-column-type", "error", "downgrade", "op.alter_column("),
        ("0007", "downgrade-loses-data", "error", "upgrade", 'op.drop_column("products", "legacy_code")'),
        ("0007", "drop-column", "error", "upgrade", 'op.drop_column("products", "legacy_code")'),
        ("0008", "downgrade-drops-new-data", "info", "downgrade", 'op.drop_column("orders", "notes")'),
        ("0009", "downgrade-loses-data", "error", "upgrade", 'op.drop_table("newsletter_signups")'),
        ("0009", "drop-table", "error", "upgrade", 'op.drop_table("newsletter_signups")'),
    ]


def test_finding_to_dict() -> None:
    finding = Finding("drop-table", "error", "v/r1.py", 7, 5, "r1", "upgrade", "drops t", "snapshot first")
    assert finding.to_dict() == {
        "rule": "drop-table",
        "severity": "error",
        "path": "v/r1.py",
        "line": 7,
        "column": 5,
        "revision": "r1",
        "direction": "upgrade",
        "message": "drops t",
        "hint": "snapshot first",
    }


# --- suppressions -------------------------------------------------------------------------------------


def _finding(rule: str, line: int, path: str = "r.py") -> Finding:
    return Finding(rule, "error", path, line, 5, "r1", "upgrade", "msg", "hint")


SOURCE = """\
def upgrade():
    op.drop_table("a")  # dbrollback: ignore[drop-table] -- archived in table a_archive
    # dbrollback: ignore[drop-column, rename-column] -- column unused since v2
    op.drop_column("t", "c")
    op.drop_table("b")  # dbrollback: ignore[drop-table]
    op.drop_table("c")
    # dbrollback: ignore[create-index-not-concurrently] -- table has 10 rows
    x = "# dbrollback: ignore[drop-table] -- in a string, not a comment"
"""


def test_apply_suppressions_line_and_line_above() -> None:
    findings = [
        _finding("drop-table", 2),
        _finding("drop-column", 4),
        _finding("drop-table", 5),
        _finding("drop-table", 6),
        _finding("drop-table", 8),
        _finding("drop-table", 2, path="other.py"),
    ]
    kept = apply_suppressions(findings, SOURCE, "r.py", revision="r1")
    assert [(f.rule, f.line, f.path) for f in kept] == [
        ("drop-table", 5, "r.py"),  # its ignore has no reason: not suppressed
        ("drop-table", 6, "r.py"),
        ("drop-table", 8, "r.py"),  # the "ignore" is inside a string literal
        ("drop-table", 2, "other.py"),  # another file's finding
        ("ignore-without-reason", 5, "r.py"),
        ("unused-ignore", 7, "r.py"),
    ]
    without_reason = kept[4]
    assert without_reason.severity == "warning" and without_reason.column == 25
    assert without_reason.revision == "r1"
    assert "# dbrollback: ignore[drop-table]" in without_reason.message


def test_apply_suppressions_ignore_file() -> None:
    source = "x = 1\n# dbrollback: ignore-file[drop-table] -- whole file reviewed by DBA\n"
    kept = apply_suppressions([_finding("drop-table", 30), _finding("drop-column", 30)], source, "r.py")
    assert [(f.rule, f.line) for f in kept] == [("drop-column", 30)]
    unused = apply_suppressions([_finding("drop-column", 1)], source, "r.py")
    assert [(f.rule, f.line, f.column) for f in unused] == [("drop-column", 1, 5), ("unused-ignore", 2, 1)]
    no_reason = apply_suppressions(
        [_finding("drop-table", 9)], "# dbrollback: ignore-file[drop-table]\n", "r.py"
    )
    assert [(f.rule, f.line) for f in no_reason] == [("drop-table", 9), ("ignore-without-reason", 1)]
    assert apply_suppressions([], "x = 1\n", "r.py") == []


def test_suppressions_in_a_real_revision(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        """
        # dbrollback: ignore[drop-table] -- rows archived to cold storage in r0
        op.drop_table("legacy")
        op.drop_column("t", "c")  # dbrollback: ignore[drop-column]
    """,
        downgrade="raise NotImplementedError",
        header="# dbrollback: ignore-file[missing-downgrade] -- irreversible by design, see ADR 12\n",
    )
    path = project.versions / "r1.py"
    findings = lint_file(path)
    assert [(f.rule, f.line) for f in findings] == [
        ("drop-column", _line_of(path, "op.drop_column")),
        ("ignore-without-reason", _line_of(path, "op.drop_column")),
    ]
