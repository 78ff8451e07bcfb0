"""Lint rules as data (second block): pass and fail snippets for each rule, including the
"table created in the same revision" exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrollback.lint import RULES_BY_ID, Finding, LintConfig, LintContext, lint, record_revision, run_rules
from tests.conftest import Project
from tests.test_lint_rules import Case, _line_of, _write

MORE_CASES = [
    # --- drop-schema ---------------------------------------------------------------------------
    Case(
        "drop-schema-cascade",
        "drop-schema",
        'op.execute("DROP SCHEMA \\"Ärchiv; x\\" CASCADE")',
        expect=(("upgrade", "DROP SCHEMA"),),
    ),
    Case(
        "drop-schema-in-downgrade",
        "drop-schema",
        "pass",
        'op.execute("DROP SCHEMA IF EXISTS old CASCADE")',
        expect=(("downgrade", "DROP SCHEMA"),),
    ),
    # Without CASCADE PostgreSQL refuses a non-empty schema: no data can be lost.
    Case("drop-empty-schema", "drop-schema", 'op.execute("DROP SCHEMA old")'),
    Case(
        "downgrade-drops-created-schema",
        "drop-schema",
        'op.execute("CREATE SCHEMA reporting")',
        'op.execute("DROP SCHEMA reporting CASCADE")',
    ),
    # --- truncate-table ------------------------------------------------------------------------
    Case(
        "truncate",
        "truncate-table",
        'op.execute("TRUNCATE \\"Order Items\\", public.orders")',
        expect=(("upgrade", "TRUNCATE"),),
    ),
    Case(
        "truncate-in-downgrade",
        "truncate-table",
        "pass",
        'op.execute("TRUNCATE TABLE audit")',
        expect=(("downgrade", "TRUNCATE"),),
    ),
    Case(
        "truncate-new-table",
        "truncate-table",
        'op.create_table("staging", sa.Column("id", sa.Integer))\nop.execute("TRUNCATE staging")',
    ),
    Case("delete-with-where", "truncate-table", 'op.execute("DELETE FROM t WHERE id = 1")'),
    # --- rename-table --------------------------------------------------------------------------
    Case(
        "rename-table",
        "rename-table",
        'op.rename_table("orders", "Bestellungen")',
        'op.rename_table("Bestellungen", "orders")',
        expect=(("upgrade", '"orders", "Bestellungen"'), ("downgrade", '"Bestellungen", "orders"')),
        severity="warning",
    ),
    Case(
        "rename-table-raw",
        "rename-table",
        'op.execute("ALTER TABLE s.a RENAME TO b")',
        expect=(("upgrade", "RENAME TO"),),
    ),
    Case(
        "rename-new-table",
        "rename-table",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.rename_table("n", "m")',
    ),
    Case("rename-column-not-table", "rename-table", 'op.execute("ALTER TABLE t RENAME COLUMN a TO b")'),
    # --- enum-value-added ----------------------------------------------------------------------
    Case(
        "add-value",
        "enum-value-added",
        "op.execute(\"ALTER TYPE mood ADD VALUE 'meh'\")",
        expect=(("upgrade", "ADD VALUE"),),
    ),
    Case(
        "add-value-text",
        "enum-value-added",
        "op.execute(sa.text(\"ALTER TYPE public.\\\"Status\\\" ADD VALUE IF NOT EXISTS 'x' AFTER 'a'\"))",
        expect=(("upgrade", "ADD VALUE"),),
    ),
    Case("rename-value", "enum-value-added", "op.execute(\"ALTER TYPE mood RENAME VALUE 'a' TO 'b'\")"),
    Case(
        "add-value-to-new-type",
        "enum-value-added",
        "op.execute(\"CREATE TYPE mood AS ENUM ('a')\")\nop.execute(\"ALTER TYPE mood ADD VALUE 'b'\")",
        'op.execute("DROP TYPE mood")',
    ),
    # --- unbatched-data-change -----------------------------------------------------------------
    Case(
        "update-all",
        "unbatched-data-change",
        'op.execute("UPDATE customers SET email = lower(email)")',
        expect=(("upgrade", "UPDATE customers"),),
    ),
    Case(
        "delete-all-in-downgrade",
        "unbatched-data-change",
        'op.execute("INSERT INTO t (a) VALUES (1)")',
        'op.execute("DELETE FROM \\"Straße; x\\"")',
        expect=(("downgrade", "DELETE FROM"),),
    ),
    Case(
        "sa-text-with-bind-parameter",
        "unbatched-data-change",
        'op.execute(sa.text("UPDATE t SET a = :v").bindparams(v="x"))',
        expect=(("upgrade", "bindparams"),),
    ),
    Case(
        "update-with-where",
        "unbatched-data-change",
        'op.execute("UPDATE customers SET email = lower(email) WHERE email <> lower(email)")',
    ),
    Case(
        "update-new-table",
        "unbatched-data-change",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.execute("UPDATE n SET a = \'x\'")',
    ),
    Case(
        "downgrade-deletes-from-created-table",
        "unbatched-data-change",
        'op.execute("CREATE TABLE n (a int)")',
        'op.execute("DELETE FROM n")\nop.execute("DROP TABLE n")',
    ),
    # --- add-required-column -------------------------------------------------------------------
    Case(
        "not-null-no-default",
        "add-required-column",
        'op.add_column("t", sa.Column("c", sa.Text, nullable=False))',
        expect=(("upgrade", "add_column"),),
    ),
    Case(
        "not-null-no-default-raw",
        "add-required-column",
        'op.execute("ALTER TABLE \\"Kunden\\" ADD COLUMN c int NOT NULL")',
        expect=(("upgrade", "ADD COLUMN"),),
    ),
    Case(
        "not-null-batch",
        "add-required-column",
        'with op.batch_alter_table("t") as b:\n    b.add_column(sa.Column("c", sa.Text, nullable=False))',
        expect=(("upgrade", "b.add_column"),),
    ),
    Case(
        "not-null-with-server-default",
        "add-required-column",
        'op.add_column("t", sa.Column("c", sa.Text, nullable=False, server_default="x"))',
    ),
    Case(
        "not-null-with-default-raw",
        "add-required-column",
        'op.execute("ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0, ADD COLUMN d bigserial NOT NULL")',
    ),
    Case("nullable-column", "add-required-column", 'op.add_column("t", sa.Column("c", sa.Text))'),
    Case(
        "not-null-on-new-table",
        "add-required-column",
        'op.create_table("n", sa.Column("id", sa.Integer))\n'
        'op.add_column("n", sa.Column("c", sa.Text, nullable=False))',
    ),
    Case(
        "downgrade-on-created-table",
        "add-required-column",
        'op.create_table("n", sa.Column("id", sa.Integer), sa.Column("c", sa.Text, nullable=False))',
        'op.drop_column("n", "c")\nop.add_column("n", sa.Column("c", sa.Text, nullable=False))',
    ),
    # --- drop-index-not-concurrently -----------------------------------------------------------
    Case(
        "plain-drop-index",
        "drop-index-not-concurrently",
        'op.drop_index("ix_a", table_name="t")',
        expect=(("upgrade", "drop_index"),),
    ),
    Case(
        "plain-drop-index-raw",
        "drop-index-not-concurrently",
        'op.execute("DROP INDEX IF EXISTS s.\\"Ix Ä\\"")',
        expect=(("upgrade", "DROP INDEX"),),
    ),
    Case(
        "drop-index-in-downgrade",
        "drop-index-not-concurrently",
        'op.drop_index("ix_old", table_name="t")',
        'op.create_index("ix_old", "t", ["a"])\nop.drop_index("ix_other", table_name="t")',
        expect=(("upgrade", 'drop_index("ix_old"'), ("downgrade", '"ix_other"')),
    ),
    Case(
        # The downgrade undoing the upgrade's own index: at most downgrade-drops-new-data (issue #4).
        "downgrade-drops-index-the-upgrade-created",
        "drop-index-not-concurrently",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix", "t", ["a"], postgresql_concurrently=True)',
        'op.drop_index("ix", table_name="t")',
    ),
    Case(
        "autogenerated-downgrade",
        "drop-index-not-concurrently",
        'op.create_table("posts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("user_id", sa.Integer))\n'
        'op.create_index(op.f("ix_posts_user_id"), "posts", ["user_id"])',
        'op.drop_index(op.f("ix_posts_user_id"), table_name="posts")\nop.drop_table("posts")',
    ),
    Case(
        "downgrade-raw-drop-of-an-index-create-table-made",
        "drop-index-not-concurrently",
        'op.create_table("n", sa.Column("a", sa.Text, index=True))',
        'op.execute("DROP INDEX ix_n_a")\nop.drop_table("n")',
    ),
    Case(
        "downgrade-drops-index-on-a-table-the-upgrade-created",
        "drop-index-not-concurrently",
        'op.execute("CREATE TABLE n (a text)")\nop.execute("CREATE INDEX n_a ON n (a)")',
        'op.drop_index("n_a", table_name="n")\nop.execute("DROP TABLE n")',
    ),
    Case(
        "concurrent-drop-index",
        "drop-index-not-concurrently",
        "with op.get_context().autocommit_block():\n"
        '    op.drop_index("ix", table_name="t", postgresql_concurrently=True)\n'
        '    op.execute("DROP INDEX CONCURRENTLY ix2")',
    ),
    Case(
        "drop-index-on-new-table",
        "drop-index-not-concurrently",
        'op.create_table("n", sa.Column("a", sa.Text))\n'
        'op.create_index("ix", "n", ["a"])\n'
        'op.drop_index("ix", table_name="n")',
    ),
    Case(
        "drop-index-created-earlier-raw",
        "drop-index-not-concurrently",
        'op.execute("CREATE INDEX CONCURRENTLY ix_tmp ON t (a)")\nop.execute("DROP INDEX ix_tmp")',
    ),
    # --- set-not-null --------------------------------------------------------------------------
    Case(
        "set-not-null",
        "set-not-null",
        'op.alter_column("t", "c", existing_type=sa.Text, nullable=False)',
        'op.alter_column("t", "c", existing_type=sa.Text, nullable=True)',
        expect=(("upgrade", "nullable=False"),),
    ),
    Case(
        "set-not-null-raw",
        "set-not-null",
        'op.execute("ALTER TABLE \\"Kunden Größe\\" ALTER COLUMN c SET NOT NULL")',
        expect=(("upgrade", "SET NOT NULL"),),
    ),
    Case(
        "set-not-null-in-downgrade",
        "set-not-null",
        'op.alter_column("t", "c", nullable=True)',
        'op.alter_column("t", "c", nullable=False)',
        expect=(("downgrade", "nullable=False"),),
    ),
    Case(
        "check-not-valid-never-validated",
        "set-not-null",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck CHECK (c IS NOT NULL) NOT VALID")\n'
        'op.alter_column("t", "c", nullable=False)',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "check-on-other-column",
        "set-not-null",
        'op.create_check_constraint("ck", "t", "d IS NOT NULL")\nop.alter_column("t", "c", nullable=False)',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "after-validated-check",
        "set-not-null",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck CHECK (c IS NOT NULL) NOT VALID")\n'
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck")\n'
        'op.alter_column("t", "c", nullable=False)\n'
        'op.drop_constraint("ck", "t")',
    ),
    Case(
        "after-create-check-constraint",
        "set-not-null",
        'op.create_check_constraint("ck", "t", "c IS NOT NULL")\n'
        'op.execute("ALTER TABLE t ALTER COLUMN c SET NOT NULL")',
    ),
    Case(
        "set-not-null-on-new-table",
        "set-not-null",
        'op.create_table("n", sa.Column("c", sa.Text))\nop.alter_column("n", "c", nullable=False)',
    ),
    Case("drop-not-null", "set-not-null", 'op.alter_column("t", "c", nullable=True)'),
    # --- change-column-type --------------------------------------------------------------------
    Case(
        "int-to-bigint",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.Integer, type_=sa.BigInteger)',
        'op.alter_column("t", "c", existing_type=sa.BigInteger, type_=sa.Integer)',
        expect=(("upgrade", "type_=sa.BigInteger"), ("downgrade", "type_=sa.Integer")),
    ),
    Case(
        "varchar-narrowing",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.String(50), type_=sa.String(20))',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "unbounded-varchar-to-bounded",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.String(), type_=sa.String(20))',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "text-to-varchar",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.Text(), type_=sa.String(20))',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "varchar-to-text-without-existing-type",
        "change-column-type",
        'op.alter_column("t", "c", type_=sa.Text())',
        expect=(("upgrade", "alter_column"),),
    ),
    Case(
        "type-change-raw",
        "change-column-type",
        'op.execute("ALTER TABLE t ALTER COLUMN c TYPE varchar(100)")',
        expect=(("upgrade", "ALTER COLUMN"),),
    ),
    Case(
        "varchar-to-text",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.String(50), type_=sa.Text())',
    ),
    Case(
        "varchar-widening",
        "change-column-type",
        'op.alter_column("t", "c", existing_type=sa.VARCHAR(length=50), type_=sa.String(200))\n'
        'op.alter_column("t", "d", existing_type=sa.String(50), type_=sa.String())',
    ),
    Case(
        "type-change-on-new-table",
        "change-column-type",
        'op.create_table("n", sa.Column("c", sa.Integer))\n'
        'op.alter_column("n", "c", existing_type=sa.Integer, type_=sa.BigInteger)',
    ),
    Case(
        "type-change-on-new-column",
        "change-column-type",
        'op.add_column("t", sa.Column("c", sa.Integer))\n'
        'op.alter_column("t", "c", existing_type=sa.Integer, type_=sa.BigInteger)',
    ),
]


@pytest.mark.parametrize("case", MORE_CASES, ids=lambda c: f"{c.rule}:{c.name}")
def test_rule_case(project: Project, case: Case) -> None:
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    recorded = record_revision(path)
    assert recorded.upgrade.opaque is None and recorded.downgrade.opaque is None
    findings = run_rules(recorded, LintContext(), rules=(rule,))
    expected = [(direction, _line_of(path, marker)) for direction, marker in case.expect]
    assert [(f.direction, f.line) for f in findings] == expected
    for finding in findings:
        assert finding.rule == case.rule
        assert finding.severity == (case.severity or rule.default_severity)
        assert finding.path == str(path.resolve())
        assert finding.revision == "r1"
        assert finding.message and finding.hint


def test_severities() -> None:
    severities = {
        rule_id: RULES_BY_ID[rule_id].default_severity for rule_id in sorted({c.rule for c in MORE_CASES})
    }
    assert severities == {
        "add-required-column": "error",
        "change-column-type": "error",
        "drop-index-not-concurrently": "error",
        "drop-schema": "error",
        "enum-value-added": "error",
        "rename-table": "warning",
        "set-not-null": "error",
        "truncate-table": "error",
        "unbatched-data-change": "error",
    }


def test_set_not_null_check_exception_needs_pg12(project: Project) -> None:
    # Before PostgreSQL 12, SET NOT NULL scans the table even with a validated CHECK constraint.
    case = MORE_CASES[[c.name for c in MORE_CASES].index("after-validated-check")]
    path = _write(project, case)
    rule = RULES_BY_ID["set-not-null"]
    findings = run_rules(record_revision(path), LintContext(pg_version=11), rules=(rule,))
    assert [(f.direction, f.line) for f in findings] == [("upgrade", _line_of(path, "alter_column"))]
    assert run_rules(record_revision(path), LintContext(pg_version=12), rules=(rule,)) == []


def test_messages_name_the_objects(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        'op.execute("DROP SCHEMA \\"Ärchiv\\" CASCADE; TRUNCATE a; UPDATE \\"Straße; x\\" SET v = 1")\n'
        'op.alter_column("t", "c", existing_type=sa.Integer, type_=sa.BigInteger)',
        "op.execute(\"ALTER TYPE mood ADD VALUE 'meh'\")",
    )
    recorded = record_revision(project.versions / "r1.py")
    rules = tuple(RULES_BY_ID[r] for r in ("drop-schema", "truncate-table", "unbatched-data-change",
                                           "change-column-type", "enum-value-added"))  # fmt: skip
    assert [(f.rule, f.message) for f in run_rules(recorded, LintContext(), rules=rules)] == [
        ("drop-schema", "drops schema Ärchiv with CASCADE, deleting every table in it"),
        ("truncate-table", "truncates a, deleting every row"),
        ("unbatched-data-change", "updates every row of Straße; x (no WHERE) in one statement"),
        ("change-column-type", "changes the type of t.c to BIGINT, rewriting the table"),
        ("enum-value-added", "adds value 'meh' to enum type mood, which no downgrade can remove"),
    ]


def test_every_rule_has_a_docs_page_saying_what_it_says() -> None:
    from dbrollback.lint.rules import ALL_RULES

    docs = Path(__file__).parents[1] / "docs" / "rules"
    index = (docs / "README.md").read_text()
    for rule in ALL_RULES:
        page = (docs / f"{rule.id}.md").read_text()
        assert page.startswith(f"# `{rule.id}`"), rule.id
        assert rule.problem[1:] in page and rule.safe_alternative[1:] in page, rule.id
        assert f"**Default severity:** {rule.default_severity}" in page, rule.id
        assert f"[`{rule.id}`]({rule.id}.md)" in index, rule.id


# --- set-not-null after a check proven by an earlier revision ------------------------------------

ADD_CHECK = (
    'op.create_check_constraint("ck_users_age_nn", "users", "age IS NOT NULL", postgresql_not_valid=True)'
)
VALIDATE = (
    "with op.get_context().autocommit_block():\n"
    '    op.execute("ALTER TABLE users VALIDATE CONSTRAINT ck_users_age_nn")'
)
DROP_CHECK = 'op.drop_constraint("ck_users_age_nn", "users", type_="check")'
SET_NOT_NULL = 'op.alter_column("users", "age", nullable=False, existing_type=sa.Integer())'
DROP_NOT_NULL = 'op.alter_column("users", "age", nullable=True, existing_type=sa.Integer())'


def _not_null_history(project: Project, between: list[tuple[str, str]]) -> Path:
    """p6 (base), p7 adds the check NOT VALID, then ``between`` revisions, then p9 sets NOT NULL."""
    project.add_revision("p6", None, 'op.add_column("users", sa.Column("age", sa.Integer))',
                         'op.drop_column("users", "age")')  # fmt: skip
    project.add_revision("p7", "p6", ADD_CHECK, DROP_CHECK)
    previous = "p7"
    for revision, upgrade in between:
        project.add_revision(revision, previous, upgrade, "pass")
        previous = revision
    project.add_revision("p9", previous, f"{SET_NOT_NULL}\n{DROP_CHECK}", f"{ADD_CHECK}\n{DROP_NOT_NULL}")
    return project.versions / "p9.py"


def _set_not_null_lines(report_findings: list[Finding]) -> list[tuple[str, int]]:
    return [(Path(f.path).stem, f.line) for f in report_findings if f.rule == "set-not-null"]


def test_set_not_null_after_a_check_validated_in_an_earlier_revision(project: Project) -> None:
    p9 = _not_null_history(project, [("p8", VALIDATE)])
    assert _set_not_null_lines(lint([project.versions]).findings) == []
    # --changed-since: only p9 is linted; its ancestors are still read from the directory.
    assert _set_not_null_lines(lint([project.versions], only={p9.resolve()}).findings) == []
    assert _set_not_null_lines(lint([p9]).findings) == []  # a pre-commit hook passes single files
    # PostgreSQL 11 scans despite the check.
    at_11 = lint([project.versions], LintConfig(pg_version=11)).findings
    assert _set_not_null_lines(at_11) == [("p9", _line_of(p9, "nullable=False"))]


def test_set_not_null_when_the_earlier_check_was_never_validated_or_dropped_since(project: Project) -> None:
    p9 = _not_null_history(project, [("p8", 'op.add_column("users", sa.Column("x", sa.Text))')])
    assert _set_not_null_lines(lint([project.versions]).findings) == [("p9", _line_of(p9, "nullable=False"))]

    for path in project.versions.glob("p*.py"):
        path.unlink()
    p9 = _not_null_history(project, [("p8", VALIDATE), ("p8b", DROP_CHECK)])
    assert _set_not_null_lines(lint([project.versions]).findings) == [("p9", _line_of(p9, "nullable=False"))]


def test_set_not_null_through_a_merge_and_in_raw_sql(project: Project) -> None:
    project.add_revision("a1", None, "op.execute(\"ALTER TABLE t ADD CONSTRAINT t_c_nn CHECK (c IS NOT NULL)\")",
                         'op.execute("ALTER TABLE t DROP CONSTRAINT t_c_nn")')  # fmt: skip
    project.add_revision(
        "b1", "a1", 'op.add_column("u", sa.Column("x", sa.Text))', 'op.drop_column("u", "x")'
    )
    project.add_revision(
        "c1", "a1", 'op.add_column("u", sa.Column("y", sa.Text))', 'op.drop_column("u", "y")'
    )
    project.add_revision("m1", ("b1", "c1"), "pass", "pass")
    project.add_revision("d1", "m1", 'op.execute("ALTER TABLE t ALTER COLUMN c SET NOT NULL")',
                         'op.execute("ALTER TABLE t ALTER COLUMN c DROP NOT NULL")')  # fmt: skip
    assert _set_not_null_lines(lint([project.versions]).findings) == []


def test_the_history_is_read_only_for_a_set_not_null_its_revision_does_not_explain(project: Project) -> None:
    from dbrollback.lint.history import RevisionHistory
    from dbrollback.lint.rules.set_not_null import NOT_NULL_CHECKS

    _not_null_history(project, [("p8", VALIDATE)])
    rule = RULES_BY_ID["set-not-null"]
    history = RevisionHistory([project.versions])
    context = LintContext(history=history)
    assert run_rules(record_revision(project.versions / "p7.py"), context, rules=(rule,)) == []
    assert not history.graph_read  # no SET NOT NULL: nothing read
    assert run_rules(record_revision(project.versions / "p9.py"), context, rules=(rule,)) == []
    assert history.graph_read
    proven = history.state_before("p9", NOT_NULL_CHECKS).proven
    assert proven == {((None, "users"), "age")}
    assert history.state_before("p8", NOT_NULL_CHECKS).proven == set()


def test_copies_of_one_history_in_a_worker_share_its_cache(project: Project) -> None:
    """Every task of a worker process unpickles its own lint context: copies of the same run's
    history must not read the graph again; another run's must."""
    import pickle

    from dbrollback.lint.history import RevisionHistory
    from dbrollback.lint.rules.set_not_null import NOT_NULL_CHECKS

    _not_null_history(project, [("p8", VALIDATE)])
    history = RevisionHistory([project.versions])
    first, second = pickle.loads(pickle.dumps(history)), pickle.loads(pickle.dumps(history))
    assert first.state_before("p9", NOT_NULL_CHECKS).proven == {((None, "users"), "age")}
    assert second.graph_read and not history.graph_read
    assert not pickle.loads(pickle.dumps(RevisionHistory([project.versions]))).graph_read
