"""`check` results as text lines and as GitHub workflow annotations (JSON is CheckResult.to_dict)."""

from __future__ import annotations

from pathlib import Path

from dbrollback.check.result import CheckResult, RevisionCheck
from dbrollback.ci_output import display_path, escape_data, escape_property, human_path

__all__ = ["github_annotations", "summary_line", "text_lines"]

_INDENT = "    "


def _verdict(check: RevisionCheck) -> str:
    return (f"upgrade {check.upgrade} · downgrade {check.downgrade} · schema {check.schema_roundtrip} · "
            f"data {check.data_roundtrip} · upgrade again {check.reupgrade}")  # fmt: skip


def details(check: RevisionCheck) -> list[str]:
    """One line per problem found (schema differences may span several lines)."""
    lines = [f"schema: {d.message}" for d in check.schema_differences]
    lines += [f"data: {item.message}" for item in check.lost]
    lines += [f"data unverified: {reason}" for reason in check.unverified]
    lines += [f"error: {e}" for e in check.errors]
    return lines


def summary_line(result: CheckResult) -> str:
    counts = result.counts()
    return f"{counts['ok']} ok, {counts['failed']} failed, {counts['not_checked']} not checked"


def text_lines(result: CheckResult, base: Path | None = None) -> list[tuple[str, str | None]]:
    """(line, style) pairs: a header, a block per revision, and a summary."""
    out: list[tuple[str, str | None]] = []
    if not result.revisions:
        return [("No revisions to check.", None)]
    out.append((f"Checked on {result.database}; {result.rows} generated rows per table (seed {result.seed}).",
                None))  # fmt: skip
    for check in result.revisions:
        where = f" ({human_path(check.path, base)}:{check.line})" if check.path else ""
        if check.status == "not_checked":
            out.append((f"NOT CHECKED {check.revision}{where}: {check.not_checked}", "yellow"))
            continue
        label, style = ("ok", "green") if check.status == "ok" else ("FAILED", "bold red")
        out.append((f"{label} {check.revision}{where}: {_verdict(check)}", style))
        for line in details(check):
            out.extend((_INDENT + part, None) for part in line.splitlines())
        out.extend((f"{_INDENT}note: {note}", "dim") for note in check.notes)
    out.extend((f"note: {note}", "dim") for note in result.notes)
    out.append((summary_line(result), "green" if result.ok else "bold red"))
    return out


def github_annotations(result: CheckResult, base: Path | None = None) -> list[str]:
    """``::error file=…,line=…::message`` for each revision that failed or was not checked, at its
    ``revision =`` line; seeding notes as ``::notice``."""
    lines = []
    for check in result.revisions:
        properties = []
        if check.path:
            properties += [
                f"file={escape_property(display_path(check.path, base))}",
                f"line={check.line or 1}",
            ]
        if check.status != "ok":
            title = f"dbrollback check: {check.revision} {check.status.replace('_', ' ')}"
            body = [check.not_checked] if check.not_checked else [_verdict(check), *details(check)]
            props = ",".join([*properties, f"title={escape_property(title)}"])
            lines.append(f"::error {props}::{escape_data(chr(10).join(b for b in body if b))}")
        for note in check.notes:
            props = ",".join([*properties, f"title={escape_property(f'dbrollback check: {check.revision}')}"])
            lines.append(f"::notice {props}::{escape_data(note)}")
    lines.extend(f"::notice title=dbrollback check::{escape_data(note)}" for note in result.notes)
    return lines
