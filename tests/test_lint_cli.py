"""`dbrollback lint` as CI runs it: no database, findings, exit codes."""

from __future__ import annotations

from .conftest import Project


def test_clean_project_exits_0_and_destructive_revision_exits_1(project: Project, cli) -> None:
    project.add_revision("a1", None, 'op.add_column("t", sa.Column("note", sa.Text))',
                         'op.drop_column("t", "note")')  # fmt: skip
    (project.versions / "helpers.py").write_text("X = 1\n")  # not a revision: skipped
    clean = cli("lint")  # the project's versions directory, from alembic.ini
    assert clean.code == 0, clean.out + clean.err
    assert "error" not in clean.out and "0 error(s)" in clean.err

    project.add_revision("b2", "a1", 'op.drop_column("t", "legacy")', "pass")
    found = cli("lint", "--format", "json")
    assert found.code == 1
    rules = {(f["revision"], f["rule"], f["severity"]) for f in found.json}
    assert ("b2", "drop-column", "error") in rules and ("b2", "missing-downgrade", "error") in rules
    line = next(f for f in found.json if f["rule"] == "drop-column")
    assert line["path"].endswith("b2.py") and line["direction"] == "upgrade"
    assert (
        (project.versions / "b2.py")
        .read_text()
        .splitlines()[line["line"] - 1]
        .strip()
        .startswith("op.drop_column")
    )


def test_explicit_paths_and_a_file_that_does_not_import(project: Project, cli) -> None:
    broken = project.versions / "broken.py"
    broken.write_text('revision = "x"\ndown_revision = None\ndef upgrade(:\n    pass\n')
    result = cli("lint", str(broken), "--json")
    assert result.code == 1
    (finding,) = result.json
    assert finding["rule"] == "syntax-error" and finding["line"] == 3
    assert cli("lint", str(project.versions / "nope.py")).code == 2  # not a path: usage error
