"""Render lint findings: text, JSON, SARIF 2.1.0 (GitHub code scanning) and GitHub annotations.

Text is for people: paths relative to the current directory. JSON, SARIF and annotations are for
CI tools: paths relative to the repository root (see :func:`dbrollback.ci_output.ci_root`), the
same wherever in the repository the command ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbrollback import __version__
from dbrollback.ci_output import (
    ci_root,
    display_path,
    escape_data,
    escape_property,
    human_path,
    uri_reference,
)
from dbrollback.lint.findings import Finding
from dbrollback.lint.rules import ALL_RULES

__all__ = ["github_annotations", "sarif_document", "text_lines", "to_json"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_GITHUB_COMMAND = {"error": "error", "warning": "warning", "info": "notice"}


def text_lines(findings: list[Finding], base: Path | None = None) -> list[tuple[Finding, str, str]]:
    """(finding, location, rest) per finding: ``path:line:col`` and ``severity rule (direction): msg``."""
    return [
        (f, f"{human_path(f.path, base)}:{f.line}:{f.column}", f"{f.rule} ({f.direction}): {f.message}")
        for f in findings
    ]


def to_json(findings: list[Finding], base: Path | None = None) -> list[dict[str, Any]]:
    base = base if base is not None else ci_root()
    return [{**f.to_dict(), "path": display_path(f.path, base)} for f in findings]


def _rule_name(rule_id: str) -> str:
    return "".join(part.capitalize() for part in rule_id.split("-"))


def sarif_document(findings: list[Finding], base: Path | None = None) -> dict[str, Any]:
    """One SARIF 2.1.0 run. Every rule is listed (GitHub shows their help); results refer to them by
    index. Paths are relative to ``base`` (default: the repository root) under %SRCROOT%, as
    percent-encoded URI references; files outside it get absolute ``file:`` URIs."""
    base = (base if base is not None else ci_root()).resolve()
    rules = [
        {
            "id": rule.id,
            "name": _rule_name(rule.id),
            "shortDescription": {"text": rule.problem},
            "fullDescription": {"text": rule.problem},
            "help": {"text": f"Safe alternative: {rule.safe_alternative}",
                     "markdown": f"**Safe alternative:** {rule.safe_alternative}\n\n"
                                 f"See docs/rules/{rule.id}.md"},
            "defaultConfiguration": {"level": _SARIF_LEVEL[rule.default_severity]},
            "properties": {"tags": list(rule.axes)},
        }
        for rule in ALL_RULES
    ]  # fmt: skip
    index = {rule["id"]: number for number, rule in enumerate(rules)}
    results = []
    for f in findings:
        relative = display_path(f.path, base)
        location: dict[str, Any]
        if Path(relative).is_absolute():
            location = {"uri": Path(relative).as_uri()}
        else:
            location = {"uri": uri_reference(relative), "uriBaseId": "%SRCROOT%"}
        result: dict[str, Any] = {
            "ruleId": f.rule,
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message}. Safe alternative: {f.hint}" if f.hint else f.message},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": location,
                    "region": {"startLine": max(f.line, 1), "startColumn": max(f.column, 1)},
                }
            }],
            "properties": {"direction": f.direction, "revision": f.revision},
        }  # fmt: skip
        if f.rule in index:
            result["ruleIndex"] = index[f.rule]
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "dbrollback", "version": __version__,
                                "semanticVersion": __version__, "rules": rules}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": base.as_uri() + "/"}},
            "results": results,
        }],
    }  # fmt: skip


def github_annotations(findings: list[Finding], base: Path | None = None) -> list[str]:
    """GitHub Actions workflow commands (``::error file=…,line=…::message``), one per finding."""
    base = base if base is not None else ci_root()
    lines = []
    for f in findings:
        properties = ",".join([
            f"file={escape_property(display_path(f.path, base))}",
            f"line={f.line}",
            f"col={f.column}",
            f"title={escape_property(f'{f.rule} ({f.direction})')}",
        ])  # fmt: skip
        message = f"{f.message}. Safe alternative: {f.hint}" if f.hint else f.message
        lines.append(f"::{_GITHUB_COMMAND[f.severity]} {properties}::{escape_data(message)}")
    return lines
