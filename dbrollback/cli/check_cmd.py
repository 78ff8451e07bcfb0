"""check: every revision up, down and up again on a throwaway database with generated rows."""

from __future__ import annotations

import click

from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED


@click.command()
@click.option("--from", "from_rev", metavar="REV",
              help="First revision to check; earlier ones are only applied [base: all].")  # fmt: skip
@click.option("--to", "to_rev", metavar="REV", help="Last revision to check [heads].")
@click.option("--format", "output", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="text; json: one document; github: workflow annotations.")  # fmt: skip
@click.option("--rows", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="Generated rows per table.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated rows.")
@click.option("--embedded", is_flag=True,
              help="Use a throwaway database on the embedded PostgreSQL even if a database URL "
                   "is configured.")  # fmt: skip
@global_options
@pass_state
def check(state: AppState, from_rev: str | None, to_rev: str | None, output: str, rows: int, seed: int,
          embedded: bool) -> int:  # fmt: skip
    """Prove each revision's downgrade: upgrade, downgrade and upgrade again, with data.

    For every revision from --from to --to, on a throwaway database: seed the tables,
    upgrade, seed again, downgrade, compare schema and data with the state before the
    upgrade, upgrade again. By default a new database on the embedded PostgreSQL, dropped
    afterwards; a configured --database-url is used only if it has no tables (else exit 3).
    Exit 0 when every revision comes back, 1 otherwise. See docs/check.md.
    """
    from dbrollback.check.report import github_annotations, summary_line, text_lines
    from dbrollback.check_api import check as run_check

    settings = state.settings()
    result = run_check(settings, from_rev, to_rev, rows=rows, seed=seed, embedded=embedded,
                       notify=state.console.notice)  # fmt: skip
    code = 0 if result.ok else EXIT_CHECK_FAILED
    if state.json or output == "json":
        state.console.emit_json(result.to_dict())
    elif output == "github":
        for line in github_annotations(result):
            click.echo(line)
        state.console.notice(summary_line(result))
    else:
        for line, style in text_lines(result):
            state.console.line(line, style=style)
    return code


COMMANDS = [check]
