"""plan: what the pending revisions will do to existing tables, and the snapshot upgrade will take."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, get_args

import click

from dbrollback.cli.console import Console
from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.settings import SnapshotPolicy

if TYPE_CHECKING:
    from dbrollback.analysis.plan import MigrationPlan, RevisionAnalysis, SnapshotPlan

_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def _ident(name: str) -> str:
    return name if _PLAIN_IDENTIFIER.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, table: str) -> str:
    return f"{_ident(schema)}.{_ident(table)}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _render_revision(console: Console, revision: RevisionAnalysis, show_sql: bool) -> None:
    marks = [revision.method]
    if revision.lossy:
        marks.append("LOSSY")
    if revision.opaque:
        marks.append("OPAQUE")
    title = f"{revision.revision}" + (f" — {revision.doc}" if revision.doc else "") + f" ({', '.join(marks)})"
    if revision.tables:
        console.table(
            title,
            ["table", "operations", "columns", "lossy", "existed before"],
            [
                (_qualified(t.schema, t.table), ", ".join(t.operations), ", ".join(t.columns) or "-",
                 _yes(t.lossy), _yes(t.exists_before))
                for t in revision.tables
            ],
        )  # fmt: skip
    else:
        console.line(title, style="bold")
        console.line("  touches no table")
    if revision.reason:
        console.line(f"  {revision.method}: {revision.reason}", style="yellow")
    if show_sql:
        for statement in dict.fromkeys(e.sql for e in revision.effects if e.sql):
            console.line("  " + statement.replace("\n", "\n  ") + ";", style="dim")
    console.line()


def _render_snapshot(console: Console, snapshot: SnapshotPlan) -> None:
    console.table(
        f"Snapshot before {snapshot.revision}: {len(snapshot.tables)} table(s), "
        f"~{snapshot.estimated_rows:,} rows, ~{_size(snapshot.estimated_bytes)}",
        ["table", "columns (* = affected)", "est. rows", "est. size"],
        [
            (_qualified(t.schema, t.table)
             + (f" (currently {_qualified(*t.name_before_run)})" if t.name_before_run else ""),
             ", ".join(_ident(c.name) + ("*" if c.affected else "") for c in t.columns),
             f"{t.estimated_rows:,}", _size(t.estimated_bytes))
            for t in snapshot.tables
        ],
    )  # fmt: skip


def render_plan(console: Console, plan: MigrationPlan, show_sql: bool = False) -> None:
    console.line(f"Database:        {plan.database}")
    console.line(f"Current heads:   {', '.join(plan.current_heads) or '(base: nothing applied)'}")
    console.line(f"Target:          {plan.target}")
    if not plan.revisions:
        console.line("Nothing to do: no pending revisions.", style="green")
        return
    console.line(f"Snapshot policy: {plan.policy}")
    console.line(f"SQL captured on: {plan.scratch or 'none (Alembic offline mode)'}")
    console.line()
    for revision in plan.revisions:
        _render_revision(console, revision, show_sql)
    if plan.snapshots:
        for snapshot in plan.snapshots:
            _render_snapshot(console, snapshot)
    elif plan.policy == "never":
        console.line("No snapshot: the policy is 'never'.")
    else:
        console.line(f"No snapshot needed (policy {plan.policy}): no existing table is at risk.",
                     style="green")  # fmt: skip
    for warning in plan.warnings:
        console.line(f"Warning: {warning}", style="yellow")


@click.command()
@click.argument("revision", default="heads", required=False)
@click.option("--snapshot", "policy", type=click.Choice(get_args(SnapshotPolicy)),
              help="Snapshot policy to plan for [setting `snapshot`, default lossy].")  # fmt: skip
@click.option("--sql", "show_sql", is_flag=True, help="Also print the SQL each revision runs.")
@global_options
@pass_state
def plan(state: AppState, revision: str, policy: str | None, show_sql: bool) -> None:
    """Show what upgrading to REVISION (default: heads) would do, changing nothing.

    The pending revisions run on a throwaway schema-only copy of the database to capture the SQL
    they really execute; each statement is classified, and the tables each revision changes are
    listed as schema-only or lossy, with the snapshot upgrade will take before it.
    """
    from dbrollback.analysis.plan import build_plan

    result = build_plan(state.settings(), revision, policy=policy, notify=state.console.notice)
    if state.json:
        state.console.emit_json(result.to_dict())
    else:
        render_plan(state.console, result, show_sql)


COMMANDS = [plan]
