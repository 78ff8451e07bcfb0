"""lint: static checks of revision files (issue #4; text and JSON output so far)."""

from __future__ import annotations

from pathlib import Path

import click

from dbrollback.cli.state import AppState, global_options, pass_state
from dbrollback.errors import EXIT_CHECK_FAILED


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: one finding per line; json: a list of findings.")  # fmt: skip
@click.option("--pg-version", type=click.IntRange(10, 99), default=14, show_default=True,
              help="PostgreSQL major version the rules assume.")  # fmt: skip
@global_options
@pass_state
def lint(state: AppState, paths: tuple[Path, ...], output: str, pg_version: int) -> int:
    """Check revision files for irreversible, data-destroying and lock-heavy operations.

    No database needed. PATHS: files or directories [the Alembic project's versions directories].
    Exit 0 when no finding is an error, 1 otherwise. See docs/rules/.
    """
    from dbrollback.alembic_bridge.project import AlembicProject
    from dbrollback.lint import LintContext, lint_paths

    targets = list(paths)
    if not targets:
        script = AlembicProject(state.settings().alembic_config).script
        targets = [Path(p) for p in script._version_locations]
    findings = lint_paths(targets, LintContext(pg_version=pg_version))
    errors = sum(1 for f in findings if f.severity == "error")
    if state.json or output == "json":
        state.console.emit_json([f.to_dict() for f in findings])
        return EXIT_CHECK_FAILED if errors else 0
    for f in findings:
        click.echo(f"{f.path}:{f.line}:{f.column}: {f.severity} {f.rule} ({f.direction}): {f.message}")
        if f.hint:
            click.echo(f"    hint: {f.hint}")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    state.console.notice(
        f"{len(findings)} finding(s): {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} info"
    )
    return EXIT_CHECK_FAILED if errors else 0


COMMANDS = [lint]
