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


PRINTING = 'print("upgrading t")\nop.add_column("t", sa.Column("note", sa.Text))'


def test_revisions_that_print_do_not_corrupt_json_or_sarif(project: Project, cli) -> None:
    project.add_revision("a1", None, PRINTING, 'print("down")\nop.drop_column("t", "note")',
                         header='print("imported a1")\n')  # fmt: skip
    project.add_revision("b2", "a1", 'op.drop_column("t", "legacy")', "pass")
    for output in ("sarif", "json"):
        result = cli("lint", "--format", output)
        assert result.code == 1
        document = result.json  # stdout is exactly the document
        assert document
        assert "imported a1" in result.err and "upgrading t" in result.err and "down" in result.err


def test_worker_processes_keep_stdout_for_the_document(project: Project) -> None:
    """Above 64 files lint runs in worker processes: also what revisions write below Python's
    sys.stdout (os.write to descriptor 1) must stay out of stdout."""
    import json
    import subprocess
    import sys

    previous = None
    for number in range(70):
        revision = f"r{number:02d}"
        upgrade = PRINTING.replace('"note"', f'"n{number}"')
        if number % 10 == 0:
            upgrade = f'import os\nos.write(1, b"raw bytes from {revision}\\n")\n{upgrade}'
        project.add_revision(revision, previous, upgrade, f'op.drop_column("t", "n{number}")')
        previous = revision
    done = subprocess.run(
        [sys.executable, "-m", "dbrollback", "lint", str(project.versions), "--format", "json"],
        cwd=project.root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)
    assert {f["rule"] for f in findings} == {"downgrade-drops-new-data"} and len(findings) == 70
    assert "raw bytes from r10" in done.stderr and "upgrading t" in done.stderr
