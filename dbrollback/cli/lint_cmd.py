"""lint: static checks of revision files, no database needed (issue #4)."""

from __future__ import annotations

from pathlib import Path

import click

from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True,
              help="text: one finding per line; json: a list of findings; sarif: SARIF 2.1.0 for "
                   "GitHub code scanning; github: workflow annotations.")  # fmt: skip
@click.option("--pg-version", type=click.IntRange(10, 99), default=None,
              help="PostgreSQL major version the rules assume [lint.pg_version, else 14].")  # fmt: skip
@click.option("--changed-since", metavar="GIT_REF",
              help="Lint only revision files added or changed since the merge base with GIT_REF "
                   "(uncommitted and untracked files included).")  # fmt: skip
@global_options
@pass_state
def lint(state: AppState, paths: tuple[Path, ...], output: str, pg_version: int | None,
         changed_since: str | None) -> int:  # fmt: skip
    """Check revision files for irreversible, data-destroying and lock-heavy operations.

    No database needed. PATHS: files or directories [the Alembic project's versions directories].
    Per-rule severity or `off` and pg_version come from [tool.dbrollback.lint]. Suppress one
    finding with `# dbrollback: ignore[rule-id] -- reason`. Exit 0 when no finding is an error,
    1 otherwise, 2 on usage errors. See docs/rules/.
    """
    from dbrollback.lint.changed import changed_files
    from dbrollback.lint.engine import LintConfig
    from dbrollback.lint.engine import lint as run_lint
    from dbrollback.lint.report import github_annotations, sarif_document, text_lines, to_json

    settings = state.settings()
    config = LintConfig(pg_version=pg_version or settings.lint.pg_version, rules=dict(settings.lint.rules))
    targets = list(paths)
    if not targets:
        from dbrollback.alembic_bridge.project import AlembicProject

        script = AlembicProject(settings.alembic_config).script
        targets = [Path(p) for p in script._version_locations]
    only = changed_files(changed_since) if changed_since else None
    report = run_lint(targets, config, only=only)

    for skipped in report.skipped:
        state.console.notice(f"skipped {skipped.path}: {skipped.reason}")
    if changed_since and not report.files:
        state.console.notice(f"no revision file changed since {changed_since}")
    status = EXIT_CHECK_FAILED if report.has_errors else 0
    if state.json or output == "json":
        state.console.emit_json(to_json(report.findings))
        return status
    if output == "sarif":
        state.console.emit_json(sarif_document(report.findings))
        return status
    if output == "github":
        for line in github_annotations(report.findings):
            click.echo(line)
    else:
        for finding, location, rest in text_lines(report.findings):
            state.console.finding(location, finding.severity, rest, finding.hint)
    state.console.notice(
        f"{len(report.files)} revision file(s), {len(report.findings)} finding(s): "
        f"{report.count('error')} error(s), {report.count('warning')} warning(s), {report.count('info')} info"
    )
    return status


COMMANDS = [lint]
