"""Lint on revisions written with the dbrollback.expand helpers: they are the safe way, so they raise
no lock, rename or type-change rule, and ``expand.abort()`` in the downgrade undoes all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrollback.expand import ExpandOperation
from dbrollback.lint import RULES_BY_ID, LintContext, lint_file, record_revision, run_rules
from tests.conftest import Project
from tests.test_lint_rules import Case, _line_of, _write

HEADER = "from dbrollback import expand\n"

RENAME = 'expand.rename_column("customers", "name", "full_name")'
NOT_NULL = 'expand.add_not_null_column("customers", "region", "text", backfill="\'eu\'")'
CHANGE_TYPE = (
    'expand.change_column_type("orders", "total", "numeric(12,2)", up="total::numeric(12,2)",\n'
    '                          down="round(total_new)::integer")'
)
SYNCED = 'expand.add_synced_column("customers", "email_lower", "text", up="lower(email)", old_column="email")'
SPLIT = 'expand.split_column("customers", "name", {"first": ("text", "split_part(name, \' \', 1)")})'
FOREIGN_KEY = 'expand.add_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])'
INDEX = 'expand.create_index("ix_orders_placed_at", "orders", ["placed_at"])'
UNIQUE_INDEX = 'expand.create_index("uq_customers_email", "customers", ["email"], unique=True)'
NEW_NOTE = 'op.add_column("orders", sa.Column("note", sa.Text))'
BACKFILL_NOTE = (
    "with op.get_context().autocommit_block():\n"
    '    expand.backfill("orders", set="note = \'none\'", where="note IS NULL", batch_size=500)'
)
EVERY_HELPER = "\n".join([RENAME, NOT_NULL, CHANGE_TYPE, SYNCED, SPLIT, FOREIGN_KEY, INDEX, UNIQUE_INDEX])
ABORT = "expand.abort()"
HAND_DROP = 'op.drop_column("customers", "full_name")'


def _case(
    name: str,
    rule: str,
    upgrade: str,
    downgrade: str = ABORT,
    expect: tuple[tuple[str, str], ...] = (),
    severity: str | None = None,
) -> Case:
    return Case(name, rule, upgrade, downgrade, header=HEADER, expect=expect, severity=severity)


EXPAND_CASES = [
    # --- expand-without-abort ------------------------------------------------------------------
    _case(
        "hand-written-downgrade",
        "expand-without-abort",
        RENAME,
        HAND_DROP,
        expect=(("downgrade", "def downgrade"),),
    ),
    _case(
        "index-dropped-by-hand",
        "expand-without-abort",
        INDEX,
        'op.drop_index("ix_orders_placed_at", table_name="orders", postgresql_concurrently=True)',
        expect=(("downgrade", "def downgrade"),),
    ),
    _case("abort", "expand-without-abort", EVERY_HELPER),
    _case(
        "abort-after-other-undo",
        "expand-without-abort",
        f"{NEW_NOTE}\n{NOT_NULL}",
        f'op.drop_column("orders", "note")\n{ABORT}',
    ),
    # Empty: missing-downgrade's finding (whose message names expand.abort()), not a second one.
    _case("empty-downgrade", "expand-without-abort", RENAME, "pass"),
    _case(
        "backfill-opens-no-expansion",
        "expand-without-abort",
        f"{NEW_NOTE}\n{BACKFILL_NOTE}",
        'op.drop_column("orders", "note")',
    ),
    # The recording stopped before the end of the downgrade: the abort may come after it.
    _case(
        "opaque-downgrade",
        "expand-without-abort",
        RENAME,
        'if op.get_bind().execute(sa.text("SELECT 1")).scalar():\n    pass\nexpand.abort()',
    ),
    # --- the rules the helpers replace: never raised by the helpers ----------------------------
    _case("rename-helper", "rename-column", RENAME),
    _case("change-type-helper", "change-column-type", f"{CHANGE_TYPE}\n{SPLIT}\n{SYNCED}"),
    _case("not-null-helper", "add-required-column", NOT_NULL),
    _case("not-null-helper", "set-not-null", NOT_NULL),
    _case("index-helper", "create-index-not-concurrently", f"{INDEX}\n{UNIQUE_INDEX}"),
    _case("index-helper", "concurrently-in-transaction", f"{INDEX}\n{UNIQUE_INDEX}"),
    _case("unique-index-helper", "add-unique-constraint", UNIQUE_INDEX),
    _case("foreign-key-helper", "constraint-missing-not-valid", FOREIGN_KEY),
    _case("foreign-key-helper", "validate-in-same-transaction", FOREIGN_KEY),
    _case(
        "backfill-helper",
        "unbatched-data-change",
        f"{NEW_NOTE}\n{BACKFILL_NOTE}",
        'op.drop_column("orders", "note")',
    ),
    _case("helpers", "opaque-migration", f"{EVERY_HELPER}\n{NEW_NOTE}\n{BACKFILL_NOTE}"),
    # --- downgrade rules: expand.abort() is the inverse of every helper of its revision ---------
    _case("abort", "missing-downgrade", EVERY_HELPER),
    _case("pass", "missing-downgrade", EVERY_HELPER, "pass", expect=(("downgrade", "def downgrade"),)),
    _case("abort", "downgrade-not-inverse", EVERY_HELPER),
    # A raw operation on a column a helper added goes with the column.
    _case(
        "raw-index-on-expanded-column",
        "downgrade-not-inverse",
        f'{NOT_NULL}\nop.create_index("ix_region", "customers", ["region"], postgresql_concurrently=True)',
    ),
    # abort undoes the helpers only, not the raw operations beside them.
    _case(
        "abort-does-not-undo-raw-ops",
        "downgrade-not-inverse",
        f"{RENAME}\n{NEW_NOTE}",
        expect=(("downgrade", "op.add_column"),),
    ),
    # A hand-written downgrade is expand-without-abort's finding, not this rule's.
    _case("hand-written-downgrade", "downgrade-not-inverse", RENAME, HAND_DROP),
    _case("abort", "downgrade-loses-data", EVERY_HELPER),
    # Dropping what a helper added is undoing the upgrade, not dropping data that was there, nor an
    # index in use.
    _case(
        "hand-written-downgrade",
        "drop-index-not-concurrently",
        INDEX,
        'op.drop_index("ix_orders_placed_at", table_name="orders")',
    ),
    _case("hand-written-downgrade", "drop-column", RENAME, HAND_DROP),
    # Values written to an add_not_null_column column exist nowhere else; synced columns copy every
    # write back to the old column, so aborting them loses nothing.
    _case(
        "abort-drops-not-null-column",
        "downgrade-drops-new-data",
        NOT_NULL,
        expect=(("downgrade", ABORT),),
        severity="info",
    ),
    _case(
        "abort-drops-synced-columns",
        "downgrade-drops-new-data",
        "\n".join([RENAME, CHANGE_TYPE, SYNCED, SPLIT, FOREIGN_KEY, INDEX]),
    ),
    # --- expand.backfill: batched, but an UPDATE all the same ----------------------------------
    _case(
        "backfill-of-added-column",
        "irreversible-data-change",
        f"{NEW_NOTE}\n{BACKFILL_NOTE}",
        'op.drop_column("orders", "note")',
    ),
    _case(
        "backfill-of-expanded-column",
        "irreversible-data-change",
        f"{NOT_NULL}\nwith op.get_context().autocommit_block():\n"
        '    expand.backfill("customers", set="region = upper(email)")',
    ),
    _case(
        "backfill-overwrites-old-values",
        "irreversible-data-change",
        "with op.get_context().autocommit_block():\n"
        '    expand.backfill("customers", set="email = lower(email)", where="email <> lower(email)")',
        "pass",
        expect=(("upgrade", "expand.backfill"),),
    ),
]


@pytest.mark.parametrize("case", EXPAND_CASES, ids=lambda c: f"{c.rule}:{c.name}")
def test_rule_case(project: Project, case: Case) -> None:
    path = _write(project, case)
    rule = RULES_BY_ID[case.rule]
    findings = run_rules(record_revision(path), LintContext(), rules=(rule,))
    expected = [(direction, _line_of(path, marker)) for direction, marker in case.expect]
    assert [(f.direction, f.line) for f in findings] == expected
    for finding in findings:
        assert finding.rule == case.rule
        assert finding.severity == (case.severity or rule.default_severity)
        assert finding.revision == "r1" and finding.hint == rule.safe_alternative


def _lines(path: Path, prefix: str) -> list[int]:
    return [
        i for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip().startswith(prefix)
    ]


def test_every_helper_is_recorded_with_its_line_and_not_run(project: Project, monkeypatch) -> None:
    """Under lint the helpers' implementation would need a database: it is not called at all, and
    the recording stays complete (not opaque)."""
    import dbrollback.expand.apply

    ran: list[object] = []
    monkeypatch.setattr(dbrollback.expand.apply, "apply_operation", lambda *args: ran.append(args))
    project.add_revision("r1", None, f"{EVERY_HELPER}\n{NEW_NOTE}\n{BACKFILL_NOTE}", ABORT, header=HEADER)
    path = project.versions / "r1.py"

    recorded = record_revision(path)

    assert ran == []
    assert recorded.upgrade.fully_seen and recorded.downgrade.fully_seen
    ops = [
        (
            r.direction,
            type(r.op).__name__,
            getattr(r.op, "kind", None),
            r.line,
            r.column,
            r.in_autocommit_block,
        )
        for r in recorded.ops
    ]
    helper_lines = _lines(path, "expand.")[:8]  # the upgrade's helpers before the backfill and abort
    assert ops == [
        ("upgrade", "ExpandOperation", kind, line, 5, False)
        for kind, line in zip(
            [
                "rename_column",
                "not_null_column",
                "change_column_type",
                "synced_column",
                "split_column",
                "foreign_key",
                "index",
                "index",
            ],
            helper_lines,
            strict=True,
        )
    ] + [
        ("upgrade", "AddColumnOp", None, _line_of(path, "op.add_column"), 5, False),
        ("upgrade", "ExpandOperation", "backfill", _line_of(path, "expand.backfill"), 9, True),
        ("downgrade", "ExpandOperation", "abort", _line_of(path, ABORT), 5, False),
    ]
    # The multi-line change_column_type call is reported at its first line.
    assert helper_lines[2] == _line_of(path, "expand.change_column_type")
    first = recorded.upgrade.ops[0].op
    assert isinstance(first, ExpandOperation)
    assert (first.table_name, first.schema, first.revision) == ("customers", None, "r1")
    assert first.arguments["old"] == ["name"] and first.arguments["new"][0]["name"] == "full_name"


def test_a_revision_using_every_helper_has_only_the_not_null_column_info(project: Project) -> None:
    project.add_revision(
        "r1",
        None,
        f"{EVERY_HELPER}\n{NEW_NOTE}\n{BACKFILL_NOTE}",
        f'{ABORT}\nop.drop_column("orders", "note")',
        header=HEADER,
    )
    path = project.versions / "r1.py"

    findings = lint_file(path)

    assert [(f.rule, f.severity, f.direction, f.line, f.message) for f in findings] == [
        (
            "downgrade-drops-new-data",
            "info",
            "downgrade",
            _line_of(path, ABORT),
            "drops customers.region, created by the upgrade; data written there since is lost",
        ),
        (
            "downgrade-drops-new-data",
            "info",
            "downgrade",
            _line_of(path, 'op.drop_column("orders"'),
            "drops orders.note, created by the upgrade; data written there since is lost",
        ),
    ]

    # The same schema changes with the raw Alembic operations: the findings the helpers avoid.
    raw = """
        op.alter_column("customers", "name", new_column_name="full_name")
        op.add_column("customers", sa.Column("region", sa.Text, nullable=False))
        op.alter_column("orders", "total", existing_type=sa.Integer, type_=sa.Numeric(12, 2))
        op.create_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])
        op.create_index("ix_orders_placed_at", "orders", ["placed_at"])
        op.create_unique_constraint("uq_customers_email", "customers", ["email"])
    """
    project.add_revision("r1", None, raw, "pass")
    assert sorted({f.rule for f in lint_file(path)}) == [
        "add-required-column",
        "add-unique-constraint",
        "change-column-type",
        "constraint-missing-not-valid",
        "create-index-not-concurrently",
        "missing-downgrade",
        "rename-column",
    ]


def test_downgrade_findings_name_expand_abort(project: Project) -> None:
    project.add_revision("r1", None, f"{RENAME}\n{INDEX}", "pass", header=HEADER)
    path = project.versions / "r1.py"
    assert [(f.rule, f.line, f.message) for f in lint_file(path)] == [
        (
            "missing-downgrade",
            _line_of(path, "def downgrade"),
            "the downgrade is empty but the upgrade is not; expand.abort() in the downgrade undoes the "
            "upgrade's expand helpers",
        ),
    ]

    project.add_revision("r1", None, f"{RENAME}\n{INDEX}", HAND_DROP, header=HEADER)
    rename, index = _line_of(path, "expand.rename_column"), _line_of(path, "expand.create_index")
    assert [(f.rule, f.severity, f.line, f.message) for f in lint_file(path)] == [
        (
            "expand-without-abort",
            "error",
            _line_of(path, "def downgrade"),
            f"the downgrade does not call expand.abort() to undo expand.rename_column (line {rename}), "
            f"expand.create_index (line {index}); a plain `alembic downgrade` leaves the expansions open, "
            "with what they added and their sync triggers still in place",
        ),
        (
            "downgrade-drops-new-data",
            "info",
            _line_of(path, HAND_DROP),
            "drops customers.full_name, created by the upgrade; data written there since is lost",
        ),
    ]


def test_lint_cli_on_expand_revisions(project: Project, cli) -> None:
    project.add_revision(
        "a1", None, "\n".join([RENAME, CHANGE_TYPE, SYNCED, SPLIT, FOREIGN_KEY, INDEX]), ABORT, header=HEADER
    )
    clean = cli("lint", "--format", "json")
    assert clean.code == 0, clean.out + clean.err
    assert clean.json == []

    project.add_revision("b2", "a1", NOT_NULL, 'op.drop_column("customers", "region")', header=HEADER)
    project.add_revision("c3", "b2", UNIQUE_INDEX, "pass", header=HEADER)
    found = cli("lint", "--format", "json")
    assert found.code == 1
    b2, c3 = project.versions / "b2.py", project.versions / "c3.py"
    assert [
        (Path(f["path"]).stem, f["rule"], f["severity"], f["direction"], f["line"]) for f in found.json
    ] == [
        ("b2", "expand-without-abort", "error", "downgrade", _line_of(b2, "def downgrade")),
        ("b2", "downgrade-drops-new-data", "info", "downgrade", _line_of(b2, "op.drop_column")),
        ("c3", "missing-downgrade", "error", "downgrade", _line_of(c3, "def downgrade")),
    ]
    assert found.json[0]["hint"] == RULES_BY_ID["expand-without-abort"].safe_alternative

    # A suppression with a reason works on the new rule like on any other.
    b2.write_text(
        b2.read_text().replace(
            "def downgrade():",
            "# dbrollback: ignore[expand-without-abort] -- only ever rolled back by dbrollback rollback\ndef downgrade():",
        )
    )
    suppressed = cli("lint", "--format", "json", str(b2))
    assert suppressed.code == 0, suppressed.out + suppressed.err
    assert [f["rule"] for f in suppressed.json] == ["downgrade-drops-new-data"]
