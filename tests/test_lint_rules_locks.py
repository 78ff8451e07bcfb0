"""Lock and rewrite rules as data: add-column-volatile-default, constraint-missing-not-valid,
add-unique-constraint, add-primary-key, validate-in-same-transaction — each through Alembic ops and
raw SQL, including the false-positive traps of issue #4 (STABLE defaults, PostgreSQL 11 constant
defaults, tables created in the same revision, NOT VALID then VALIDATE, autocommit blocks, USING INDEX)."""

from __future__ import annotations

import pytest

from dbrollback.lint import RULES_BY_ID, LintContext, record_revision, run_rules
from dbrollback.lint.rules import ALL_RULES
from tests.conftest import Project
from tests.test_lint_rules import Case, _line_of, _write

AUTOCOMMIT = "with op.get_context().autocommit_block():\n"

LOCK_CASES = [
    # --- add-column-volatile-default -----------------------------------------------------------
    Case(
        "random-default",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("c", sa.Float, server_default=sa.text("random()")))',
        expect=(("upgrade", "random()"),),
    ),
    Case(
        "gen-random-uuid-func",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("u", sa.Uuid, nullable=False, server_default=sa.func.gen_random_uuid()))',
        expect=(("upgrade", "gen_random_uuid"),),
    ),
    Case(
        "clock-timestamp-raw-odd-table",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE \\"Bestell Pos; ä\\" ADD COLUMN seen timestamptz DEFAULT clock_timestamp()")',
        expect=(("upgrade", "clock_timestamp"),),
    ),
    Case(
        "nextval-in-downgrade",
        "add-column-volatile-default",
        'op.drop_column("t", "n")',
        "op.execute(\"ALTER TABLE t ADD COLUMN n bigint DEFAULT nextval('t_n_seq'::regclass)\")",
        expect=(("downgrade", "nextval"),),
    ),
    Case(
        "bigserial-raw",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE s.t ADD COLUMN id bigserial")',
        expect=(("upgrade", "bigserial"),),
    ),
    Case(
        # Alembic renders an integer primary-key column as SERIAL NOT NULL.
        "serial-through-add-column",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("n", sa.Integer, primary_key=True))',
        expect=(("upgrade", "primary_key=True"),),
    ),
    Case(
        "identity-column",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("n", sa.BigInteger, sa.Identity()))',
        expect=(("upgrade", "sa.Identity()"),),
    ),
    Case(
        "identity-raw",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY")',
        expect=(("upgrade", "IDENTITY"),),
    ),
    Case(
        # CREATE FUNCTION makes functions VOLATILE unless declared otherwise: unknown counts as volatile.
        "unknown-function",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("code", sa.Text, server_default=sa.text("billing.next_code()")))',
        expect=(("upgrade", "next_code"),),
    ),
    Case(
        "extension-function-in-schema",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("u", sa.Uuid, server_default=sa.text("public.uuid_generate_v4()")))',
        expect=(("upgrade", "uuid_generate_v4"),),
    ),
    Case(
        "volatile-inside-expression",
        "add-column-volatile-default",
        "op.execute(\"ALTER TABLE t ADD COLUMN due timestamptz DEFAULT now() + random() * interval '1 day'\")",
        expect=(("upgrade", "interval"),),
    ),
    Case(
        "batch-add-column",
        "add-column-volatile-default",
        'with op.batch_alter_table("t") as b:\n'
        '    b.add_column(sa.Column("c", sa.Float, server_default=sa.func.random()))',
        expect=(("upgrade", "b.add_column"),),
    ),
    Case(
        "now-default",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()")))',
    ),
    Case(
        "stable-defaults-raw",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE t ADD COLUMN a timestamptz DEFAULT CURRENT_TIMESTAMP, '
        "ADD COLUMN b date DEFAULT CURRENT_DATE, ADD COLUMN c timestamptz DEFAULT statement_timestamp(), "
        "ADD COLUMN d timestamp DEFAULT (now() AT TIME ZONE 'utc'), ADD COLUMN e text DEFAULT current_user\")",
    ),
    Case(
        "stable-defaults-sqlalchemy",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("a", sa.DateTime, server_default=sa.func.now()))\n'
        'op.add_column("t", sa.Column("b", sa.DateTime, server_default=sa.func.current_timestamp()))',
    ),
    Case(
        "constant-defaults",
        "add-column-volatile-default",
        'op.add_column("t", sa.Column("s", sa.Text, nullable=False, server_default="new"))\n'
        'op.add_column("t", sa.Column("n", sa.Integer, server_default=sa.text("0")))\n'
        "op.execute(\"ALTER TABLE t ADD COLUMN j jsonb DEFAULT '{}'::jsonb\")",
    ),
    Case(
        "volatile-default-on-new-table",
        "add-column-volatile-default",
        'op.create_table("n", sa.Column("a", sa.Integer))\n'
        'op.add_column("n", sa.Column("u", sa.Uuid, server_default=sa.func.gen_random_uuid()))',
    ),
    Case(
        "serial-on-new-table-raw",
        "add-column-volatile-default",
        'op.execute("CREATE TABLE \\"Neu Ö\\" (a int)")\nop.execute("ALTER TABLE \\"Neu Ö\\" ADD COLUMN id bigserial")',
    ),
    Case(
        # SET DEFAULT only affects rows inserted later: no rewrite.
        "set-default-volatile",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE t ALTER COLUMN c SET DEFAULT random()")',
    ),
    Case(
        "default-null",
        "add-column-volatile-default",
        'op.execute("ALTER TABLE t ADD COLUMN c int DEFAULT NULL, ADD COLUMN d text DEFAULT NULL::text")',
    ),
    # --- constraint-missing-not-valid ----------------------------------------------------------
    Case(
        "create-foreign-key",
        "constraint-missing-not-valid",
        'op.create_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])',
        'op.drop_constraint("fk_orders_customer", "orders", type_="foreignkey")',
        expect=(("upgrade", "create_foreign_key"),),
    ),
    Case(
        "create-check-constraint",
        "constraint-missing-not-valid",
        'op.create_check_constraint("ck_total", "orders", "total >= 0")',
        expect=(("upgrade", "create_check_constraint"),),
    ),
    Case(
        "raw-foreign-key-odd-names",
        "constraint-missing-not-valid",
        'op.execute(\'ALTER TABLE "Bestellungen" ADD CONSTRAINT "fk Kunde; ü" '
        'FOREIGN KEY (kunde_id) REFERENCES "Kunden Ä" (id)\')',
        expect=(("upgrade", "Bestellungen"),),
    ),
    Case(
        "raw-check-in-downgrade",
        "constraint-missing-not-valid",
        'op.execute("ALTER TABLE t DROP CONSTRAINT ck_a")',
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck_a CHECK (a > 0)")',
        expect=(("downgrade", "CHECK (a > 0)"),),
    ),
    Case(
        "add-column-with-foreign-key",
        "constraint-missing-not-valid",
        'op.add_column("orders", sa.Column("coupon_id", sa.BigInteger, sa.ForeignKey("coupons.id")))',
        expect=(("upgrade", "coupon_id"),),
    ),
    Case(
        "add-column-with-check",
        "constraint-missing-not-valid",
        'op.add_column("t", sa.Column("q", sa.Integer, sa.CheckConstraint("q > 0")))',
        expect=(("upgrade", "q > 0"),),
    ),
    Case(
        "add-column-inline-references",
        "constraint-missing-not-valid",
        'op.add_column("t", sa.Column("u_id", sa.Integer, sa.ForeignKey("u.id")), inline_references=True)',
        expect=(("upgrade", "inline_references"),),
    ),
    Case(
        "raw-add-column-references",
        "constraint-missing-not-valid",
        'op.execute("ALTER TABLE t ADD COLUMN u_id int REFERENCES u (id)")',
        expect=(("upgrade", "REFERENCES"),),
    ),
    Case(
        "not-valid-ops",
        "constraint-missing-not-valid",
        'op.create_foreign_key("fk", "orders", "customers", ["customer_id"], ["id"], postgresql_not_valid=True)\n'
        'op.create_check_constraint("ck", "orders", "total >= 0", postgresql_not_valid=True)',
    ),
    Case(
        "not-valid-raw",
        "constraint-missing-not-valid",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck CHECK (a > 0) NOT VALID, '
        'ADD CONSTRAINT fk FOREIGN KEY (u_id) REFERENCES u (id) NOT VALID")',
    ),
    Case(
        "not-enforced-raw",
        "constraint-missing-not-valid",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck CHECK (a > 0) NOT ENFORCED")',
    ),
    Case(
        "foreign-key-on-new-table",
        "constraint-missing-not-valid",
        'op.create_table("n", sa.Column("c_id", sa.BigInteger))\n'
        'op.create_foreign_key("fk_n", "n", "customers", ["c_id"], ["id"])',
    ),
    Case(
        "validate-only",
        "constraint-missing-not-valid",
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck")',
    ),
    # --- add-unique-constraint -----------------------------------------------------------------
    Case(
        "create-unique-constraint",
        "add-unique-constraint",
        'op.create_unique_constraint("uq_email", "customers", ["email"])',
        'op.drop_constraint("uq_email", "customers", type_="unique")',
        expect=(("upgrade", "create_unique_constraint"),),
    ),
    Case(
        "raw-unique-odd-names",
        "add-unique-constraint",
        'op.execute(\'ALTER TABLE "Kunden Ä" ADD CONSTRAINT "uq; x" UNIQUE (email, "Straße")\')',
        expect=(("upgrade", "Kunden"),),
    ),
    Case(
        "add-column-unique",
        "add-unique-constraint",
        'op.add_column("t", sa.Column("code", sa.Text, unique=True))',
        expect=(("upgrade", "unique=True"),),
    ),
    Case(
        "unique-in-downgrade",
        "add-unique-constraint",
        'op.drop_constraint("uq_sku", "products", type_="unique")',
        'op.create_unique_constraint("uq_sku", "products", ["sku"])',
        expect=(("downgrade", "create_unique_constraint"),),
    ),
    Case(
        "unique-using-index",
        "add-unique-constraint",
        AUTOCOMMIT + '    op.create_index("ix_email", "customers", ["email"], unique=True, '
        "postgresql_concurrently=True)\n"
        'op.execute("ALTER TABLE customers ADD CONSTRAINT uq_email UNIQUE USING INDEX ix_email")',
    ),
    Case(
        "unique-on-new-table",
        "add-unique-constraint",
        'op.create_table("n", sa.Column("a", sa.Text))\nop.create_unique_constraint("uq_n_a", "n", ["a"])',
    ),
    # --- add-primary-key -----------------------------------------------------------------------
    Case(
        "create-primary-key",
        "add-primary-key",
        'op.create_primary_key("pk_t", "t", ["id"])',
        'op.drop_constraint("pk_t", "t", type_="primary")',
        expect=(("upgrade", "create_primary_key"),),
    ),
    Case(
        "raw-primary-key",
        "add-primary-key",
        'op.execute(\'ALTER TABLE "Posten Ü" ADD PRIMARY KEY (a, "b c")\')',
        expect=(("upgrade", "PRIMARY KEY"),),
    ),
    Case(
        "raw-column-primary-key",
        "add-primary-key",
        'op.execute("ALTER TABLE t ADD COLUMN id bigint PRIMARY KEY")',
        expect=(("upgrade", "PRIMARY KEY"),),
    ),
    Case(
        "add-column-inline-primary-key",
        "add-primary-key",
        'op.add_column("t", sa.Column("k", sa.Text, primary_key=True), inline_primary_key=True)',
        expect=(("upgrade", "inline_primary_key"),),
    ),
    Case(
        "primary-key-in-downgrade",
        "add-primary-key",
        'op.drop_constraint("pk_t", "t", type_="primary")',
        'op.create_primary_key("pk_t", "t", ["id"])',
        expect=(("downgrade", "create_primary_key"),),
    ),
    Case(
        "primary-key-using-index",
        "add-primary-key",
        AUTOCOMMIT + '    op.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_t_id ON t (id)")\n'
        'op.execute("ALTER TABLE t ADD CONSTRAINT pk_t PRIMARY KEY USING INDEX ix_t_id")',
    ),
    Case(
        "primary-key-on-new-table",
        "add-primary-key",
        'op.create_table("n", sa.Column("id", sa.Integer, nullable=False))\n'
        'op.create_primary_key("pk_n", "n", ["id"])',
    ),
    # --- validate-in-same-transaction ----------------------------------------------------------
    Case(
        "raw-not-valid-then-validate",
        "validate-in-same-transaction",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck_a CHECK (a > 0) NOT VALID")\n'
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck_a")',
        'op.drop_constraint("ck_a", "t")',
        expect=(("upgrade", "VALIDATE"),),
    ),
    Case(
        "foreign-key-op-then-validate",
        "validate-in-same-transaction",
        'op.create_foreign_key("fk_o_c", "orders", "customers", ["customer_id"], ["id"], '
        "postgresql_not_valid=True)\n"
        'op.execute(sa.text("ALTER TABLE public.orders VALIDATE CONSTRAINT fk_o_c"))',
        expect=(("upgrade", "VALIDATE"),),
    ),
    Case(
        "check-op-then-validate-in-downgrade",
        "validate-in-same-transaction",
        'op.drop_constraint("ck_q", "t")',
        'op.create_check_constraint("ck_q", "t", "q > 0", postgresql_not_valid=True)\n'
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck_q")',
        expect=(("downgrade", "VALIDATE"),),
    ),
    Case(
        "odd-identifiers",
        "validate-in-same-transaction",
        'op.execute(\'ALTER TABLE "Kunden Ä" ADD CONSTRAINT "ck; ü" CHECK (x > 0) NOT VALID\')\n'
        'op.execute(\'ALTER TABLE "Kunden Ä" VALIDATE CONSTRAINT "ck; ü"\')',
        expect=(("upgrade", "VALIDATE"),),
    ),
    Case(
        # Several statements in one string run as one implicit transaction, even in autocommit mode.
        "one-string-in-autocommit-block",
        "validate-in-same-transaction",
        AUTOCOMMIT + '    op.execute("ALTER TABLE t ADD CONSTRAINT ck CHECK (a > 0) NOT VALID; '
        'ALTER TABLE t VALIDATE CONSTRAINT ck")',
        expect=(("upgrade", "VALIDATE"),),
    ),
    Case(
        "validate-in-autocommit-block",
        "validate-in-same-transaction",
        'op.execute("ALTER TABLE t ADD CONSTRAINT ck_a CHECK (a > 0) NOT VALID")\n'
        + AUTOCOMMIT
        + '    op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck_a")',
    ),
    Case(
        "add-in-autocommit-block-validate-after",
        "validate-in-same-transaction",
        AUTOCOMMIT + '    op.execute("ALTER TABLE t ADD CONSTRAINT ck_a CHECK (a > 0) NOT VALID")\n'
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck_a")',
    ),
    Case(
        "validate-constraint-of-earlier-revision",
        "validate-in-same-transaction",
        'op.execute("ALTER TABLE t VALIDATE CONSTRAINT ck_a")',
    ),
    Case(
        "same-name-other-table",
        "validate-in-same-transaction",
        'op.execute("ALTER TABLE a ADD CONSTRAINT ck CHECK (x > 0) NOT VALID")\n'
        'op.execute("ALTER TABLE b VALIDATE CONSTRAINT ck")',
    ),
    Case(
        "validate-on-new-table",
        "validate-in-same-transaction",
        'op.create_table("n", sa.Column("a", sa.Integer))\n'
        'op.execute("ALTER TABLE n ADD CONSTRAINT ck CHECK (a > 0) NOT VALID")\n'
        'op.execute("ALTER TABLE n VALIDATE CONSTRAINT ck")',
    ),
]

# (target PostgreSQL major version, case): rules whose answer depends on the version.
VERSIONED_CASES = [
    (
        10,
        Case(
            "constant-default-before-pg11",
            "add-column-volatile-default",
            'op.add_column("t", sa.Column("s", sa.Text, nullable=False, server_default="new"))',
            expect=(("upgrade", "server_default"),),
        ),
    ),
    (
        10,
        Case(
            "stable-default-before-pg11",
            "add-column-volatile-default",
            'op.execute("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now()")',
            expect=(("upgrade", "now()"),),
        ),
    ),
    (
        10,
        Case(
            "no-or-null-default-before-pg11",
            "add-column-volatile-default",
            'op.add_column("t", sa.Column("s", sa.Text))\n'
            'op.execute("ALTER TABLE t ADD COLUMN c int DEFAULT NULL")',
        ),
    ),
    (
        11,
        Case(
            "constant-default-from-pg11",
            "add-column-volatile-default",
            'op.add_column("t", sa.Column("s", sa.Text, nullable=False, server_default="new"))',
        ),
    ),
]


def _findings(project: Project, case: Case, context: LintContext) -> list[tuple[str, int]]:
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    recorded = record_revision(path)
    assert recorded.upgrade.opaque is None and recorded.downgrade.opaque is None
    findings = run_rules(recorded, context, rules=(rule,))
    for finding in findings:
        assert finding.rule == case.rule
        assert finding.severity == (case.severity or rule.default_severity)
        assert finding.path == str(path.resolve())
        assert finding.revision == "r1"
        assert finding.message and finding.hint == rule.safe_alternative
    return [(f.direction, f.line) for f in findings]


@pytest.mark.parametrize("case", LOCK_CASES, ids=lambda c: f"{c.rule}:{c.name}")
def test_rule_case(project: Project, case: Case) -> None:
    got = _findings(project, case, LintContext())
    path = project.versions / "r1.py"
    assert got == [(direction, _line_of(path, marker)) for direction, marker in case.expect]


@pytest.mark.parametrize(("pg_version", "case"), VERSIONED_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_rule_case_at_pg_version(project: Project, pg_version: int, case: Case) -> None:
    got = _findings(project, case, LintContext(pg_version=pg_version))
    path = project.versions / "r1.py"
    assert got == [(direction, _line_of(path, marker)) for direction, marker in case.expect]


def test_severities_and_axes() -> None:
    ids = sorted({c.rule for c in LOCK_CASES})
    assert {i: (RULES_BY_ID[i].default_severity, RULES_BY_ID[i].axes) for i in ids} == {
        "add-column-volatile-default": ("error", ("lock-rewrite",)),
        "add-primary-key": ("error", ("lock-rewrite",)),
        "add-unique-constraint": ("error", ("lock-rewrite",)),
        "constraint-missing-not-valid": ("error", ("lock-rewrite",)),
        "validate-in-same-transaction": ("error", ("lock-rewrite",)),
    }


def test_not_valid_then_validate_raises_only_validate_in_same_transaction(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        'op.create_foreign_key("fk_o_c", "orders", "customers", ["customer_id"], ["id"], '
        "postgresql_not_valid=True)\n"
        'op.execute("ALTER TABLE orders ADD CONSTRAINT ck_total CHECK (total >= 0) NOT VALID")\n'
        'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT fk_o_c")\n'
        'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_total")',
        'op.drop_constraint("ck_total", "orders")\nop.drop_constraint("fk_o_c", "orders")',
    )
    path = project.versions / "r1.py"
    lock_rules = tuple(rule for rule in ALL_RULES if "lock-rewrite" in rule.axes)
    findings = run_rules(record_revision(path), LintContext(), rules=lock_rules)
    assert [(f.rule, f.line) for f in findings] == [
        ("validate-in-same-transaction", _line_of(path, "VALIDATE CONSTRAINT fk_o_c")),
        ("validate-in-same-transaction", _line_of(path, "VALIDATE CONSTRAINT ck_total")),
    ]


def test_one_statement_raising_several_lock_rules_once_each(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        'op.execute("ALTER TABLE t ADD COLUMN id bigserial PRIMARY KEY, ADD COLUMN u uuid '
        'DEFAULT gen_random_uuid() UNIQUE REFERENCES u (id), ADD CONSTRAINT ck CHECK (a > 0)")',
        'op.execute("ALTER TABLE t DROP COLUMN id, DROP COLUMN u, DROP CONSTRAINT ck")',
    )
    path = project.versions / "r1.py"
    lock_rules = tuple(RULES_BY_ID[r] for r in ("add-column-volatile-default", "constraint-missing-not-valid",
                                                "add-unique-constraint", "add-primary-key"))  # fmt: skip
    findings = run_rules(record_revision(path), LintContext(), rules=lock_rules)
    assert [(f.rule, f.message) for f in findings] == [
        (
            "add-column-volatile-default",
            "adds column t.id (bigserial: its nextval() default is computed for every row), "
            "t.u (volatile default gen_random_uuid(), computed for every row), "
            "rewriting the table under an ACCESS EXCLUSIVE lock",
        ),
        ("add-primary-key", "adds primary key t (id), building its index under an ACCESS EXCLUSIVE lock"),
        (
            "add-unique-constraint",
            "adds unique constraint t (u), building its index under an ACCESS EXCLUSIVE lock",
        ),
        (
            "constraint-missing-not-valid",
            "adds foreign key on t referencing u: validating it scans t holding SHARE ROW EXCLUSIVE locks on "
            "both tables, blocking their writes; check constraint ck on t: validating it scans the table "
            "under an ACCESS EXCLUSIVE lock, blocking reads and writes",
        ),
    ]


def test_messages_name_the_objects(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        'op.add_column("Kunden Ä", sa.Column("code", sa.Text, server_default=sa.text("billing.next_code()")))\n'
        'op.create_unique_constraint("uq; x", "Kunden Ä", ["email", "Straße"])\n'
        'op.create_foreign_key("fk", "orders", "Kunden Ä", ["k_id"], ["id"], postgresql_not_valid=True)\n'
        "op.execute('ALTER TABLE orders VALIDATE CONSTRAINT \"fk\"')",
        'op.drop_constraint("fk", "orders")',
    )
    path = project.versions / "r1.py"
    rules = tuple(RULES_BY_ID[r] for r in ("add-column-volatile-default", "add-unique-constraint",
                                           "validate-in-same-transaction"))  # fmt: skip
    messages = [f.message for f in run_rules(record_revision(path), LintContext(), rules=rules)]
    add_line = _line_of(path, "create_foreign_key")
    assert messages == [
        "adds column Kunden Ä.code (default billing.next_code(): billing.next_code() is not a known "
        "STABLE or IMMUTABLE function, and PostgreSQL treats functions as VOLATILE unless declared "
        "otherwise), rewriting the table under an ACCESS EXCLUSIVE lock",
        "adds unique constraint Kunden Ä uq; x (email, Straße), building its index under an ACCESS "
        "EXCLUSIVE lock",
        f"validates constraint fk on orders in the transaction that added it NOT VALID (line {add_line}), "
        "so the scan runs under the SHARE ROW EXCLUSIVE locks on orders and Kunden Ä taken there",
    ]


def test_constant_default_message_names_the_version(project: Project) -> None:
    case = VERSIONED_CASES[0][1]
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    [finding] = run_rules(record_revision(path), LintContext(pg_version=10), rules=(rule,))
    assert "the target PostgreSQL 10 is older than 11" in finding.message
    assert run_rules(record_revision(path), LintContext(pg_version=14), rules=(rule,)) == []
