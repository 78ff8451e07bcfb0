"""The lint rules, one module each. :data:`ALL_RULES` is the registry, keyed by the public rule ids."""

from __future__ import annotations

from dbrollback.lint.findings import Finding, LintContext, Rule
from dbrollback.lint.recorder import RecordedRevision
from dbrollback.lint.rules.add_column_volatile_default import AddColumnVolatileDefault
from dbrollback.lint.rules.add_primary_key import AddPrimaryKey
from dbrollback.lint.rules.add_required_column import AddRequiredColumn
from dbrollback.lint.rules.add_unique_constraint import AddUniqueConstraint
from dbrollback.lint.rules.broken_revision_chain import BrokenRevisionChain
from dbrollback.lint.rules.change_column_type import ChangeColumnType
from dbrollback.lint.rules.concurrently_in_transaction import ConcurrentlyInTransaction
from dbrollback.lint.rules.constraint_missing_not_valid import ConstraintMissingNotValid
from dbrollback.lint.rules.create_index_not_concurrently import CreateIndexNotConcurrently
from dbrollback.lint.rules.downgrade_drops_new_data import DowngradeDropsNewData
from dbrollback.lint.rules.downgrade_leaves_enum import DowngradeLeavesEnum
from dbrollback.lint.rules.downgrade_loses_data import DowngradeLosesData
from dbrollback.lint.rules.downgrade_not_inverse import DowngradeNotInverse
from dbrollback.lint.rules.drop_column import DropColumn
from dbrollback.lint.rules.drop_index_not_concurrently import DropIndexNotConcurrently
from dbrollback.lint.rules.drop_schema import DropSchema
from dbrollback.lint.rules.drop_table import DropTable
from dbrollback.lint.rules.enum_value_added import EnumValueAdded
from dbrollback.lint.rules.expand_without_abort import ExpandWithoutAbort
from dbrollback.lint.rules.irreversible_data_change import IrreversibleDataChange
from dbrollback.lint.rules.missing_downgrade import MissingDowngrade
from dbrollback.lint.rules.multiple_heads import MultipleHeads
from dbrollback.lint.rules.opaque_migration import OpaqueMigration
from dbrollback.lint.rules.rename_column import RenameColumn
from dbrollback.lint.rules.rename_table import RenameTable
from dbrollback.lint.rules.set_not_null import SetNotNull
from dbrollback.lint.rules.suppression_rules import IgnoreWithoutReason, UnusedIgnore
from dbrollback.lint.rules.syntax_error import SyntaxErrorRule
from dbrollback.lint.rules.truncate_table import TruncateTable
from dbrollback.lint.rules.unbatched_data_change import UnbatchedDataChange
from dbrollback.lint.rules.validate_in_same_transaction import ValidateInSameTransaction

__all__ = ["ALL_RULES", "RULES_BY_ID", "run_rules"]

ALL_RULES: tuple[Rule, ...] = (
    MissingDowngrade(),
    DowngradeDropsNewData(),
    DowngradeNotInverse(),
    DowngradeLosesData(),
    DowngradeLeavesEnum(),
    IrreversibleDataChange(),
    OpaqueMigration(),
    DropTable(),
    DropColumn(),
    CreateIndexNotConcurrently(),
    ConcurrentlyInTransaction(),
    RenameColumn(),
    SyntaxErrorRule(),
    EnumValueAdded(),
    DropSchema(),
    TruncateTable(),
    UnbatchedDataChange(),
    AddRequiredColumn(),
    SetNotNull(),
    ChangeColumnType(),
    DropIndexNotConcurrently(),
    RenameTable(),
    AddColumnVolatileDefault(),
    ConstraintMissingNotValid(),
    AddUniqueConstraint(),
    AddPrimaryKey(),
    ValidateInSameTransaction(),
    ExpandWithoutAbort(),
    MultipleHeads(),
    BrokenRevisionChain(),
    UnusedIgnore(),
    IgnoreWithoutReason(),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in ALL_RULES}


def run_rules(revision: RecordedRevision, context: LintContext | None = None,
              rules: tuple[Rule, ...] | None = None) -> list[Finding]:  # fmt: skip
    """Every finding of ``rules`` (default: all) on one recorded revision, in file order.

    A file that does not import only gets ``syntax-error``; other rules would have nothing to see."""
    context = context or LintContext()
    selected = rules if rules is not None else ALL_RULES
    if revision.syntax_error is not None:
        selected = tuple(rule for rule in selected if rule.id == "syntax-error")
    findings = [finding for rule in selected for finding in rule.check(revision, context)]
    return sorted(findings, key=lambda f: (f.line, f.column, f.rule))
