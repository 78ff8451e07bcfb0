"""demo."""

from __future__ import annotations

import click

from dbrollback.cli.rollback_cmd import render_result as render_rollback
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
    render_runs(console, "History (newest first)", report.history, report.readiness)
    if report.snapshots:
        console.table(
            "Snapshots taken automatically before the lossy revisions (dbrollback snapshot list)",
            ["id", "revision", "tables", "rows", "bytes"],
            [
                (s.id, s.revision, ", ".join(s.tables), f"{s.rows:,}", f"{s.bytes:,}")
                for s in report.snapshots
            ],
        )
    if report.verified is not None:
        for t in report.verified.tables:
            verdict = "matches the snapshot (rows and checksum)" if t.ok else "DIFFERS from the snapshot"
            console.line(f"recovered.{t.table}: {t.live_rows:,} rows restored side by side; {verdict}",
                         style="green" if t.ok else "bold red")  # fmt: skip
    if report.app_writes:
        console.table(
            "The app kept writing after the upgrade",
            ["write", "rows"],
            [(name.replace("_", " "), f"{rows:,}") for name, rows in report.app_writes.items()],
        )
    if report.rollback_dry_run is not None:
        console.line("$ dbrollback rollback --dry-run")
        render_rollback(console, report.rollback_dry_run)
    if report.rollback is not None:
        console.line("$ dbrollback rollback --yes")
        render_rollback(console, report.rollback)
        after = report.history_after_rollback
        render_runs(console, "History after the rollback", after, report.readiness_after_rollback)
    console.line(f"Demo finished in {report.seconds:.1f}s.", style="green")
    if keep:
        pgdata = report.workdir / "pgdata"
        console.line(f"Kept {report.workdir}. Stop its server with:")
        console.line(f"  DBROLLBACK_EMBEDDED_PGDATA={pgdata} dbrollback db stop")


COMMANDS = [demo]
