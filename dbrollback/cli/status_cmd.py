"""status and history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from dbrollback.cli.console import Console
from dbrollback.cli.state import AppState, global_options, pass_state

if TYPE_CHECKING:
    from dbrollback import api
    from dbrollback.catalog.journal import RunRecord
    from dbrollback.rollback.readiness import Readiness


def _when(run: RunRecord) -> str:
    return run.started_at.strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: RunRecord) -> str:
    if run.finished_at is None or run.status == "interrupted":
        return "-"  # an interrupted run's end is only known as the moment it was noticed
    return f"{(run.finished_at - run.started_at).total_seconds():.2f}s"


def _rollback_cell(readiness: Readiness | None) -> str:
    if readiness is None:
        return "-"
    return "possible" if readiness.possible else f"no: {readiness.reason}"


def render_runs(
    console: Console,
    title: str,
    runs: Sequence[RunRecord],
    readiness: Mapping[int, Readiness] | None = None,
) -> None:
    readiness = readiness or {}
    console.table(
        title,
        ["run", "started", "took", "command", "target", "status", "applied", "actor@host", "error",
         "rollback"],
        [
            (r.id, _when(r), _duration(r), r.command, r.target, r.status,
             " ".join(r.applied_revisions) or "-", f"{r.actor}@{r.host}", r.error,
             _rollback_cell(readiness.get(r.id)))
            for r in runs
        ],
    )  # fmt: skip


def with_readiness(run: dict[str, Any], readiness: Mapping[int, Readiness]) -> dict[str, Any]:
    """A run's JSON object with `rollback: {possible, reason}` (null for a run not checked)."""
    found = readiness.get(run["id"])
    return {**run, "rollback": found.to_dict() if found else None}


def status_document(report: api.StatusReport, readiness: Mapping[int, Readiness]) -> dict[str, Any]:
    doc = report.to_dict()
    for key in ("runs", "interrupted_runs"):
        doc[key] = [with_readiness(r, readiness) for r in doc[key]]
    if doc["last_run"] is not None:
        doc["last_run"] = with_readiness(doc["last_run"], readiness)
    return doc


def _backfill_cell(backfill: dict[str, Any] | None) -> str:
    if backfill is None:
        return "-"
    if backfill["status"] == "done":
        return f"done ({backfill['rows_updated']:,} rows)"
    total = backfill["estimated_rows"]
    share = f" of ~{total:,} ({min(100, 100 * backfill['rows_scanned'] // total)}%)" if total else ""
    return f"{backfill['status']}: {backfill['rows_scanned']:,} rows scanned{share}"


def render_status(
    console: Console,
    report: api.StatusReport,
    show_runs: bool = True,
    readiness: Mapping[int, Readiness] | None = None,
) -> None:
    console.line(f"Database:      {report.database}" + (" (embedded)" if report.embedded else ""))
    console.line(f"Current heads: {', '.join(report.current_heads) or '(base: nothing applied)'}")
    console.line(f"Script heads:  {', '.join(report.script_heads) or '(no revisions)'}")
    if report.lock_holder:
        console.line(f"Running now:   {report.lock_holder.describe()}", style="yellow")
    if report.pending:
        console.table(
            f"Pending revisions ({len(report.pending)})",
            ["#", "revision", "description"],
            [(i, s.revision, s.doc) for i, s in enumerate(report.pending, 1)],
        )
    else:
        console.line("Up to date: no pending revisions.", style="green")
    for run in report.interrupted_runs:
        console.line(
            f"Run {run.id} ({run.command} to {run.target}, started {_when(run)} by {run.actor}) "
            f"was INTERRUPTED. Applied: {', '.join(run.applied_revisions) or 'nothing'}. "
            f"Not applied: {', '.join(run.not_applied_revisions) or 'nothing'}.",
            style="bold yellow",
        )
    if report.batched_rollback is not None:
        run_id, done, rows = report.batched_rollback
        console.line(
            f"Rollback run {run_id} (--batched) committed its downgrades but has put back only {done:,} of "
            f"{rows:,} rows; finish it with `dbrollback rollback --resume` (upgrade and rollback refuse "
            "until then).",
            style="bold yellow",
        )
    if report.open_expansions:
        console.table(
            "Open expansions (contract or abort them: `dbrollback contract REV` / `dbrollback abort REV`)",
            ["id", "revision", "table", "change", "backfill"],
            [(str(e["id"]), e["revision"] or "-", e["table"], e["change"], _backfill_cell(e["backfill"]))
             for e in report.open_expansions],
        )  # fmt: skip
    if report.runs and show_runs:
        render_runs(console, "Recent runs", report.runs[:5], readiness)


@click.command()
@click.option("--limit", default=10, show_default=True, help="How many recent runs to include.")
@global_options
@pass_state
def status(state: AppState, limit: int) -> None:
    """Current heads, pending revisions, the last runs and any interrupted run.

    Each run says whether it can still be rolled back losslessly, or why not.
    """
    from dbrollback import api
    from dbrollback.rollback.readiness import readiness_for

    settings = state.settings()
    report = api.status(settings, limit=limit, notify=state.console.notice)
    readiness = readiness_for(settings, report.runs)
    if state.json:
        state.console.emit_json(status_document(report, readiness))
    else:
        render_status(state.console, report, readiness=readiness)


@click.command()
@click.option("--limit", default=50, show_default=True, help="How many runs to show.")
@global_options
@pass_state
def history(state: AppState, limit: int) -> None:
    """Runs recorded in this database's journal, newest first.

    Each run says whether it can still be rolled back losslessly, or why not.
    """
    from dbrollback import api
    from dbrollback.rollback.readiness import readiness_for

    settings = state.settings()
    runs = api.history(settings, limit=limit, notify=state.console.notice)
    readiness = readiness_for(settings, runs)
    if state.json:
        state.console.emit_json({"runs": [with_readiness(r.to_dict(), readiness) for r in runs]})
    elif not runs:
        state.console.line("No runs recorded yet.")
    else:
        render_runs(state.console, "Run history (newest first)", runs, readiness)


COMMANDS = [status, history]
