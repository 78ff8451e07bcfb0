"""`dbrollback lint` over 1,000 generated revision files, against squawk, side by side (issue #4).

Generates, into a temporary directory, a linear chain of --files Alembic revision files (fixed
seed) drawn evenly from the categories in CATEGORIES (a safe add/drop column pair, an index built
concurrently inside `autocommit_block()`, a FOREIGN KEY without NOT VALID, an empty downgrade, …),
then times, --runs runs each:

* the library in this process, what the CLI calls (`dbrollback.lint.engine.lint`, or
  `dbrollback.lint.lint_paths` in checkouts without the engine; imports already paid);
* `python -m dbrollback lint DIR --format json` as a user runs it (a subprocess; wall time with
  interpreter start-up and imports);
* squawk (`pip install squawk-cli`, the baseline; skipped with a message when it is not installed)
  over one .sql file per revision: once with all files in one invocation, and once per file.
  squawk reads SQL, not Python: each revision's upgrade SQL is rendered first with Alembic's
  offline mode in this process (one `BEGIN; … COMMIT;` per revision, as `alembic upgrade --sql`
  writes it, without the alembic_version bookkeeping). That rendering is timed on its own line
  and is NOT included in squawk's figure.

Every lint run starts without __pycache__ in the corpus, as in a fresh CI checkout. Then it prints,
per category, which rules each tool raised. With --profile, cProfile of one in-process run shows
where dbrollback's time goes.

    python benchmarks/lint_speed.py [--files 1000] [--runs 3] [--seed 4] [--pg-version 14]
                                    [--profile] [--keep DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from dbrollback.lint import Finding, LintContext, lint_paths

TARGET_FILES_PER_S = 500
ROOT = Path(__file__).resolve().parent.parent

Body = list[str]


@dataclass(frozen=True)
class Names:
    """Random but plausible identifiers for one revision."""

    table: str
    other: str
    column: str
    index: str
    constraint: str
    enum: str
    length: int


@dataclass(frozen=True)
class Category:
    label: str
    build: Callable[[Names], tuple[Body, Body]]  # (upgrade body, downgrade body)


_ID = 'sa.Column("id", sa.BigInteger(), primary_key=True)'


def _autocommit(lines: Body) -> Body:
    return ["with op.get_context().autocommit_block():", *(f"    {line}" for line in lines)]


# fmt: off
CATEGORIES: tuple[Category, ...] = (
    Category("add nullable column, downgrade drops it", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.String({n.length}), nullable=True))'],
        [f'op.drop_column("{n.table}", "{n.column}")'])),
    Category("create_table, downgrade drop_table", lambda n: (
        [f'op.create_table(\n    "{n.table}_{n.column}",\n    {_ID},\n'
         f'    sa.Column("name", sa.String({n.length}), nullable=False),\n    sa.Column("created_at", '
         'sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),\n)'],
        [f'op.drop_table("{n.table}_{n.column}")'])),
    Category("create_index (plain)", lambda n: (
        [f'op.create_index("{n.index}", "{n.table}", ["{n.column}"])'],
        [f'op.drop_index("{n.index}", table_name="{n.table}")'])),
    Category("create_index concurrently in autocommit_block", lambda n: (
        _autocommit([f'op.create_index("{n.index}", "{n.table}", ["{n.column}"], '
                     'postgresql_concurrently=True)']),
        _autocommit([f'op.drop_index("{n.index}", table_name="{n.table}", postgresql_concurrently=True)']))),
    Category("create_index concurrently, no autocommit_block", lambda n: (
        [f'op.create_index("{n.index}", "{n.table}", ["{n.column}"], postgresql_concurrently=True)'],
        [f'op.drop_index("{n.index}", table_name="{n.table}", postgresql_concurrently=True)'])),
    Category("drop_column, downgrade re-adds it", lambda n: (
        [f'op.drop_column("{n.table}", "{n.column}")'],
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.String({n.length}), nullable=True))'])),
    Category("alter_column type int -> bigint", lambda n: (
        [f'op.alter_column("{n.table}", "{n.column}", type_=sa.BigInteger(), existing_type=sa.Integer())'],
        [f'op.alter_column("{n.table}", "{n.column}", type_=sa.Integer(), existing_type=sa.BigInteger())'])),
    Category("alter_column type varchar(n) -> text", lambda n: (
        [f'op.alter_column("{n.table}", "{n.column}", type_=sa.Text(), '
         f'existing_type=sa.String({n.length}))'],
        [f'op.alter_column("{n.table}", "{n.column}", type_=sa.String({n.length}), '
         'existing_type=sa.Text())'])),
    Category("add column + UPDATE without WHERE", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.String({n.length}), nullable=True))',
         f"op.execute(\"UPDATE {n.table} SET {n.column} = 'active'\")"],
        [f'op.drop_column("{n.table}", "{n.column}")'])),
    Category("FOREIGN KEY without NOT VALID (op.execute)", lambda n: (
        [f'op.execute("ALTER TABLE {n.table} ADD CONSTRAINT {n.constraint} FOREIGN KEY ({n.column}) '
         f'REFERENCES {n.other} (id)")'],
        [f'op.execute("ALTER TABLE {n.table} DROP CONSTRAINT {n.constraint}")'])),
    Category("SET NOT NULL (op.execute)", lambda n: (
        [f'op.execute("ALTER TABLE {n.table} ALTER COLUMN {n.column} SET NOT NULL")'],
        [f'op.execute("ALTER TABLE {n.table} ALTER COLUMN {n.column} DROP NOT NULL")'])),
    Category("CREATE INDEX CONCURRENTLY in autocommit_block", lambda n: (
        _autocommit([f'op.execute("CREATE INDEX CONCURRENTLY {n.index} ON {n.table} ({n.column})")']),
        _autocommit([f'op.execute("DROP INDEX CONCURRENTLY {n.index}")']))),
    Category("CREATE INDEX CONCURRENTLY, no autocommit_block", lambda n: (
        [f'op.execute("CREATE INDEX CONCURRENTLY {n.index} ON {n.table} ({n.column})")'],
        [f'op.execute("DROP INDEX CONCURRENTLY {n.index}")'])),
    Category("ALTER TYPE ... ADD VALUE", lambda n: (
        _autocommit([f"op.execute(\"ALTER TYPE {n.enum} ADD VALUE '{n.column}'\")"]),
        ["# PostgreSQL cannot remove a value from an enum type.", "pass"])),
    Category("empty downgrade (pass)", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.Text(), nullable=True))'],
        ["pass"])),
    Category("rename_column", lambda n: (
        [f'op.alter_column("{n.table}", "{n.column}", new_column_name="{n.column}_new")'],
        [f'op.alter_column("{n.table}", "{n.column}_new", new_column_name="{n.column}")'])),
    Category("add_column NOT NULL without default", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.Integer(), nullable=False))'],
        [f'op.drop_column("{n.table}", "{n.column}")'])),
    Category("add_column NOT NULL, constant default", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.Integer(), nullable=False, '
         'server_default="0"))'],
        [f'op.drop_column("{n.table}", "{n.column}")'])),
    Category("add_column server_default=random()", lambda n: (
        [f'op.add_column("{n.table}", sa.Column("{n.column}", sa.Float(), '
         'server_default=sa.text("random()")))'],
        [f'op.drop_column("{n.table}", "{n.column}")'])),
    Category("drop_table, downgrade recreates it", lambda n: (
        [f'op.drop_table("{n.table}_{n.column}")'],
        [f'op.create_table(\n    "{n.table}_{n.column}",\n    {_ID},\n'
         f'    sa.Column("name", sa.String({n.length}), nullable=True),\n)'])),
    Category("sa.Enum in create_table, downgrade drop_table", lambda n: (
        [f'op.create_table(\n    "{n.table}_{n.column}",\n    {_ID},\n'
         f'    sa.Column("state", sa.Enum("new", "done", name="{n.enum}"), nullable=False),\n)'],
        [f'op.drop_table("{n.table}_{n.column}")'])),
)
# fmt: on

_TABLES = ("users", "orders", "invoices", "payments", "accounts", "products", "shipments", "events",
           "sessions", "audit_log", "customers", "line_items")  # fmt: skip
_WORDS = ("status", "email", "amount", "note", "region", "score", "owner_id", "currency", "flag", "label")


def _indent(body: Body) -> str:
    return "\n".join("    " + line for chunk in body for line in chunk.splitlines())


def generate_corpus(directory: Path, files: int, seed: int) -> dict[str, str]:
    """Write a linear chain of revision files; returns {file name: category label}."""
    rng = random.Random(seed)
    picks = [CATEGORIES[i % len(CATEGORIES)] for i in range(files)]
    rng.shuffle(picks)
    labels: dict[str, str] = {}
    previous: str | None = None
    for number, category in enumerate(picks):
        revision = f"{rng.getrandbits(48):012x}"
        word = rng.choice(_WORDS)
        names = Names(
            table=rng.choice(_TABLES),
            other=rng.choice(_TABLES),
            column=f"{word}_{number}",
            index=f"ix_{word}_{number}",
            constraint=f"fk_{word}_{number}",
            enum=f"{word}_kind_{number}",
            length=rng.choice((32, 64, 100, 255)),
        )
        upgrade, downgrade = category.build(names)
        name = f"{number:04d}_{revision}.py"
        (directory / name).write_text(
            f'"""{category.label}\n\nRevision ID: {revision}\nRevises: {previous or ""}\n'
            f'Create Date: 2026-01-01 00:00:00\n"""\n\nfrom __future__ import annotations\n\n'
            f"import sqlalchemy as sa\nfrom alembic import op\n\n"
            f'revision = "{revision}"\ndown_revision = {json.dumps(previous) if previous else None}\n'
            f"branch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade() -> None:\n{_indent(upgrade)}\n\n\n"
            f"def downgrade() -> None:\n{_indent(downgrade)}\n"
        )
        labels[name] = category.label
        previous = revision
    return labels


def library_lint(
    corpus: Path, pg_version: int, jobs: int | None = None
) -> tuple[str, Callable[[], list[Finding]]]:
    """What `dbrollback lint` runs in-process: the engine (graph rules, per-rule configuration) when
    this checkout has it, else :func:`dbrollback.lint.lint_paths`. ``jobs``: worker processes (the
    engine's default is one per CPU)."""
    try:
        from dbrollback.lint.engine import LintConfig, lint
    except ImportError:
        context = LintContext(pg_version=pg_version)
        return "dbrollback.lint.lint_paths", lambda: lint_paths([corpus], context)
    config = LintConfig(pg_version=pg_version)
    label = "dbrollback.lint.engine.lint" + (f", jobs={jobs}" if jobs else f", jobs={os.cpu_count()}")
    return label, lambda: lint([corpus], config, jobs=jobs).findings


def clear_bytecode(directory: Path) -> None:
    """A fresh CI checkout has no __pycache__: every timed run compiles the revision files."""
    for cache in directory.rglob("__pycache__"):
        shutil.rmtree(cache)


# --- offline SQL for squawk ---------------------------------------------------------------------------


def render_upgrade_sql(path: Path, number: int) -> str:
    """The revision's upgrade() as `alembic upgrade --sql` renders it (one transaction per file)."""
    spec = importlib.util.spec_from_file_location(f"_bench_render_{number}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True, "transactional_ddl": True},
    )
    operations = Operations(context)
    operations._install_proxy()
    try:
        context.impl.emit_begin()
        module.upgrade()
        context.impl.emit_commit()
    finally:
        operations._remove_proxy()
    return buffer.getvalue()


# --- running and timing ---------------------------------------------------------------------------------


def run_process(cmd: Sequence[str | Path], cwd: Path) -> tuple[float, int, str, str]:
    # No stray DBROLLBACK_* setting may change what the commands do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBROLLBACK_")}
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr


def find_squawk() -> Path | None:
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return beside
    found = shutil.which("squawk")
    return Path(found) if found else None


# --- description of the run ---------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))  # fmt: skip
        ram = f"{kib / 1024**2:.1f} GiB RAM"
    except (OSError, StopIteration):
        ram = "RAM unknown"
    versions = ", ".join(f"{name} {_version(name)}" for name in ("alembic", "sqlalchemy", "pglast"))
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {ram}, {platform.system()} {platform.release()}",
        f"python: {platform.python_version()}, {versions}",
        f"dbrollback {_version('dbrollback')} at {_commit()}",
    ]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        status = ["git", "status", "--porcelain", "--untracked-files=no", "dbrollback"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes in dbrollback/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- profile ------------------------------------------------------------------------------------------

# (label, file name suffix, function name): cumulative time of these shows where lint's time goes.
_BUCKETS = (
    ("whole run", "", "<whole>"),
    ("record_revision (read, AST, import, run)", "recorder.py", "record_revision"),
    ("  ast.parse (recorder and graph: twice per file)", "ast.py", "parse"),
    ("  _op_calls (every call's span, for op. lines)", "recorder.py", "_op_calls"),
    ("  import of each revision module (_import)", "recorder.py", "_import"),
    ("  _run: upgrade()/downgrade() under the recorder", "recorder.py", "_run"),
    ("    MigrationContext.configure (all callers)", "migration.py", "configure"),
    ("    Operations.invoke (all callers)", "operations/base.py", "invoke"),
    ("run_rules (all rules)", "rules/__init__.py", "run_rules"),
    ("  render_offline (DDL of add_column & constraints)", "recorder.py", "render_offline"),
    ("  pg_type (type names through pglast)", "recorder.py", "pg_type"),
    ("  pglast: Python AST nodes of parsed SQL (own time)", "site-packages/pglast/", "<own>"),
    ("graph entries (graph rules' own read + parse)", "engine.py", "_graph_entries"),
    ("apply_suppressions (tokenize)", "findings.py", "apply_suppressions"),
)


def profile_lint(corpus: Path, run_lint: Callable[[], object]) -> list[str]:
    clear_bytecode(corpus)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    run_lint()
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    lines = ["", "where the time goes (cProfile of one in-process run; profiling itself slows it down)"]
    for label, suffix, name in _BUCKETS:
        found = [(nc, ct) for (f, _, fn), (_, nc, _, ct, _) in raw.items()
                 if (fn == name or fn.endswith(f".{name}>")) and suffix in f]  # fmt: skip
        if name == "<whole>":
            found = [(1, total)]
        elif name == "<own>":  # pglast's parser is C; building its Python nodes is what costs
            found = [(nc, tt) for (f, _, _), (_, nc, tt, _, _) in raw.items() if suffix in f]
        if found:
            calls, seconds = sum(c for c, _ in found), sum(s for _, s in found)
            share = f"{seconds / total:5.0%}" if total else ""
            lines.append(f"  {label:56}{seconds:7.2f} s {share}  {calls:>8,} calls")
    lines.append("  top functions by own time:")
    by_own = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:15]
    for (f, line, fn), (_, nc, tt, ct, _) in by_own:
        where = f"{Path(f).parent.name}/{Path(f).name}:{line}" if line else f
        lines.append(f"    {tt:6.2f} s own {ct:6.2f} s cum {nc:>9,}  {fn} ({where})")
    return lines


# --- the benchmark --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--pg-version", type=int, default=14)
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process lint run")
    parser.add_argument("--keep", type=Path, help="generate the corpus here and keep it (must not exist)")
    args = parser.parse_args()
    began = time.perf_counter()
    load_before = load()

    workdir = Path(tempfile.mkdtemp(prefix="dbrb-lint-bench-"))
    corpus = args.keep or workdir / "versions"
    corpus.mkdir(parents=True)
    sql_dir = workdir / "sql"
    sql_dir.mkdir()
    try:
        start = time.perf_counter()
        labels = generate_corpus(corpus, args.files, args.seed)
        generated = time.perf_counter() - start
        paths = [corpus / name for name in labels]
        n = len(paths)
        lines_total = sum(len(p.read_text().splitlines()) for p in paths)
        library_name, run_lint = library_lint(corpus, args.pg_version)
        serial_name, run_serial = library_lint(corpus, args.pg_version, jobs=1)

        def cli_lint(directory: Path) -> list[str | Path]:
            return [sys.executable, "-m", "dbrollback", "lint", directory, "--format", "json",
                    "--pg-version", str(args.pg_version)]  # fmt: skip

        squawk = find_squawk()
        render_seconds = 0.0
        squawk_base: list[str | Path] = []
        sql_files: list[Path] = []
        if squawk is not None:
            squawk_base = [squawk, "--pg-version", f"{args.pg_version}.0"]
            start = time.perf_counter()
            for number, path in enumerate(paths):
                target = sql_dir / (path.stem + ".sql")
                target.write_text(render_upgrade_sql(path, number))
                sql_files.append(target)
            render_seconds = time.perf_counter() - start

        # The tools take turns within each run, so a burst of load from elsewhere hits all of them.
        in_process: list[float] = []
        in_process_serial: list[float] = []
        cli_runs: list[float] = []
        fixed_runs: list[float] = []  # the CLI on an empty directory: start-up, imports, settings
        empty = workdir / "empty"
        empty.mkdir()
        squawk_all: list[float] = []
        findings: list[Finding] = []
        report: list[dict[str, object]] = []
        for i in range(args.runs):
            log(f"run {i + 1}/{args.runs}")
            clear_bytecode(corpus)
            start = time.perf_counter()
            findings = run_lint()
            in_process.append(time.perf_counter() - start)
            clear_bytecode(corpus)
            start = time.perf_counter()
            if len(run_serial()) != len(findings):
                raise SystemExit("one process and several disagree on the number of findings")
            in_process_serial.append(time.perf_counter() - start)

            clear_bytecode(corpus)
            seconds, code, stdout, stderr = run_process(cli_lint(corpus), workdir)
            if code not in (0, 1):
                raise SystemExit(f"dbrollback lint exited {code}:\n{stderr}")
            if len(json.loads(stdout)) != len(findings):
                raise SystemExit("the CLI and the library disagree on the number of findings")
            cli_runs.append(seconds)
            fixed_runs.append(run_process(cli_lint(empty), workdir)[0])

            if squawk is not None:
                seconds, code, stdout, stderr = run_process([*squawk_base, "--reporter", "json", *sql_files],
                                                            sql_dir)  # fmt: skip
                if code not in (0, 1):
                    raise SystemExit(f"squawk exited {code}:\n{stderr}")
                report = json.loads(stdout)
                squawk_all.append(seconds)
        load_after = load()

        squawk_rules: dict[str, Counter[str]] = defaultdict(Counter)
        for violation in report:
            squawk_rules[Path(str(violation["file"])).stem + ".py"][str(violation["rule_name"])] += 1
        squawk_each = 0.0
        squawk_summary = ""
        if squawk is not None:
            log("squawk, one process per file")
            _, _, stdout, stderr = run_process([*squawk_base, *sql_files], sql_dir)
            squawk_summary = next((line.strip() for line in (stdout + stderr).splitlines()[::-1]
                                   if line.strip().startswith("Found ")), "")  # fmt: skip
            start = time.perf_counter()
            for sql_file in sql_files:
                run_process([*squawk_base, "--reporter", "json", sql_file], sql_dir)
            squawk_each = time.perf_counter() - start

        now = datetime.datetime.now(datetime.UTC)
        out = [
            f"Issue #4: lint speed, {n:,} generated revision files, {now:%Y-%m-%d %H:%M} UTC",
            *machine(),
            f"load average (1, 5, 15 min) before: {load_before}; after the timed runs: {load_after}",
            f"corpus: {n:,} files ({lines_total:,} lines) in {len(CATEGORIES)} categories, seed {args.seed}, "
            f"a linear chain, generated in {generated:.2f} s",
            f"--pg-version {args.pg_version} for both tools; median of {args.runs} run(s), the tools taking "
            "turns; no __pycache__ in the corpus at the start of any run",
            "",
            f"  {'':58}{'median s':>9}{'min s':>8}{'max s':>8}{'files/s':>9}",
        ]

        def row(label: str, seconds: list[float]) -> None:
            med = statistics.median(seconds)
            out.append(f"  {label:58}{med:9.2f}{min(seconds):8.2f}{max(seconds):8.2f}{n / med:9,.0f}")

        row(f"{library_name} (in this process)", in_process)
        if serial_name != library_name:
            row(f"{serial_name} (no worker processes)", in_process_serial)
        row("python -m dbrollback lint DIR --format json (process)", cli_runs)
        fixed = statistics.median(fixed_runs)
        per_file = statistics.median(cli_runs) - fixed
        out.append(f"    of which fixed: the same on an empty directory (start-up, imports): {fixed:.2f} s; "
                   f"the rest: {per_file:.2f} s, {n / per_file:,.0f} files/s")  # fmt: skip
        if squawk is not None:
            row(f"squawk {_squawk_version(squawk)}, one invocation, {n:,} .sql files", squawk_all)
            row("squawk, one process per .sql file (one run)", [squawk_each])
            out.append(f"    not in squawk's figures: rendering the {n:,} upgrade SQL files with Alembic "
                       f"offline mode, in this process: {render_seconds:.2f} s "
                       f"({n / render_seconds:,.0f} files/s)")  # fmt: skip
            if squawk_summary:
                out.append(f"    squawk's own count (tty reporter): {squawk_summary}")
        else:
            out.append("  squawk: not installed (pip install squawk-cli); squawk column skipped")
        out += ["", f"targets (>= {TARGET_FILES_PER_S} files/s)"]
        for label, runs in (("library, in process", in_process), ("CLI, start-up included", cli_runs)):
            rate = n / statistics.median(runs)
            verdict = "PASS" if rate >= TARGET_FILES_PER_S else "MISS"
            out.append(f"  {label:40}{rate:8,.0f} files/s  {verdict}")

        out += case_table(labels, findings, squawk_rules, squawk is not None)
        if args.profile:
            log("profiling one in-process run")
            out += profile_lint(corpus, run_lint)
        out.append(f"\n(benchmark took {time.perf_counter() - began:.0f} s)")
        print("\n".join(out))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _squawk_version(squawk: Path) -> str:
    found = subprocess.run([squawk, "--version"], capture_output=True, text=True, check=False).stdout.split()
    return found[-1] if found else "?"


def case_table(labels: dict[str, str], findings: Sequence[object], squawk_rules: dict[str, Counter[str]],
               with_squawk: bool) -> list[str]:  # fmt: skip
    """Per category: the rules each tool raised, with how many of the category's files had it when
    that is not all of them. squawk rules raised for nearly every category are listed once."""
    files_in: Counter[str] = Counter(labels.values())
    ours: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for finding in findings:
        name = Path(finding.path).name  # type: ignore[attr-defined]
        rule = f"{finding.rule}({finding.direction[0]})"  # type: ignore[attr-defined]
        ours[labels[name]][rule].add(name)
    theirs: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, rules in squawk_rules.items():
        for rule in rules:
            theirs[labels[name]][rule].add(name)
    everywhere = {rule for rule in {r for rules in theirs.values() for r in rules}
                  if sum(rule in rules for rules in theirs.values()) >= 0.75 * len(CATEGORIES)}  # fmt: skip

    def cell(rules: dict[str, set[str]], total: int, skip: set[str]) -> str:
        parts = [rule if len(files) == total else f"{rule} {len(files)}/{total}"
                 for rule, files in sorted(rules.items()) if rule not in skip]  # fmt: skip
        return ", ".join(parts) or "—"

    lines = ["", "cases: the rules each tool raised per category (dbrollback: (u)pgrade / (d)owngrade; "
             "squawk sees the upgrade SQL only)", f"  {'category':48}{'files':>6}  dbrollback" +
             ("  |  squawk" if with_squawk else "")]  # fmt: skip
    for category in CATEGORIES:
        total = files_in[category.label]
        text = f"  {category.label:48}{total:>6}  {cell(ours[category.label], total, set())}"
        if with_squawk:
            text += f"  |  {cell(theirs[category.label], total, everywhere)}"
        lines.append(text)
    if everywhere:
        lines.append("  squawk rules raised in >= 75% of the categories, left out above: "
                     + ", ".join(sorted(everywhere)))  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
