"""demo."""

from __future__ import annotations

import click

from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.cli.status_cmd import render_runs, render_status


@click.command()
@click.option("--customers", default=2000, show_default=True, help="Customers to seed.")
@click.option("--keep", is_flag=True, help="Keep the temporary server and directory afterwards.")
@global_options
@pass_state
def demo(state: AppState, customers: int, keep: bool) -> None:
    """Run the shop example end to end on a throwaway embedded PostgreSQL."""
    from dbrollback.demo import run_demo

    console = state.console
    report = run_demo(customers, keep, notify=console.notice)
    if state.json:
        console.emit_json(report.to_dict())
        return
    console.table("Seeded rows", ["table", "rows"], sorted(report.seeded.items()))
    render_status(console, report.status, show_runs=False)
    render_runs(console, "History (newest first)", report.history)
    console.line(f"Demo finished in {report.seconds:.1f}s.", style="green")
    if keep:
        pgdata = report.workdir / "pgdata"
        console.line(f"Kept {report.workdir}. Stop its server with:")
        console.line(f"  DBROLLBACK_EMBEDDED_PGDATA={pgdata} dbrollback db stop")


COMMANDS = [demo]
