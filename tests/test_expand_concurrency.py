"""Issue #6's concurrency proof: old code (writing the old column) and new code (writing the new one)
run as separate PROCESSES, continuously, before the expansion, while `dbrollback upgrade` opens it,
while its backfill walks the table in small batches, after it, and (new code only) through contract.
At the end every row is consistent (new = up(old)) and holds the last value its writer committed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.test_expand import ABORT, _args, _columns, _leftovers, _run

ROWS = 50_000

# One writer: role "old" writes the old column, role "new" the new one (waiting until it exists).
# Writer k owns the ids = k (mod 2) and the rows it inserts, so each row's last committed value is
# the last line about it in its owner's log (written after the statement committed).
WRITER = r"""
import json, os, random, sys, time
from decimal import Decimal
import psycopg

url, column, kind, k, rows, stop, log_path, counter = sys.argv[1:9]
k, rows, counter = int(k), int(rows), int(counter)
rng = random.Random(k + counter)
owned = [i for i in range(1, rows + 1) if i % 2 == k]
waited = 0
with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn, open(log_path, "a") as log:
    conn.execute("SET lock_timeout = '300s'")
    while not os.path.exists(stop):
        counter += 1
        if kind == "text":
            value = f"{column}-{k}-{counter}"
        elif kind == "price":
            value = Decimal(counter) + Decimal("0.37")
        else:  # cents
            value = counter * 100 + 59
        try:
            if rng.random() < 0.1:
                row = conn.execute(
                    f'INSERT INTO accounts ("{column}") VALUES (%s) RETURNING id, "{column}"::text', (value,)
                ).fetchone()
                owned.append(row[0])
            else:
                row = conn.execute(
                    f'UPDATE accounts SET "{column}" = %s WHERE id = %s RETURNING id, "{column}"::text',
                    (value, rng.choice(owned)),
                ).fetchone()
        except psycopg.errors.UndefinedColumn:
            if k == 0:  # old code's column exists until contract, and old code stops before it
                raise
            waited += 1  # new code deployed before its column exists: wait for the expansion
            time.sleep(0.005)
            continue
        log.write(json.dumps({"id": row[0], "v": row[1]}) + "\n")
        log.flush()
        time.sleep(0.001)
"""


@dataclass
class Change:
    revision: str
    old: str
    new: str
    old_kind: str
    new_kind: str
    column_sql: str  # the old column in r1
    initial: str  # SQL for the old column's value of row g

    def expected(self, old_value: str | None, new_value: str | None) -> tuple[object, object]:
        """(old, new) a row must hold after its writer's last write."""
        if self.old == "name":
            v = old_value if new_value is None else new_value
            return v, v
        if new_value is not None:
            cents = int(new_value)
            return (Decimal(cents) / 100).quantize(Decimal("0.01")), cents
        price = Decimal(old_value)  # type: ignore[arg-type]
        return price, int((price * 100).to_integral_value())


CHANGES = {
    "rename": Change(
        'expand.rename_column("accounts", "name", "full_name")',
        "name",
        "full_name",
        "text",
        "text",
        "name text NOT NULL",
        "'c' || g",
    ),
    "type": Change(
        'expand.change_column_type("accounts", "price", "bigint", new_column="price_cents", '
        'up="round(price * 100)", down="price_cents / 100.0")',
        "price",
        "price_cents",
        "price",
        "cents",
        "price numeric(12,2) NOT NULL",
        "g * 1.01",
    ),
}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _let_them_write(logs: list[Path], procs: list[subprocess.Popen[bytes]], more: int = 30) -> None:
    """Until every writer committed `more` further writes (a guard against hanging, no timing)."""
    targets = [_lines(p) + more for p in logs]
    deadline = time.monotonic() + 300
    while any(_lines(p) < t for p, t in zip(logs, targets, strict=True)):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a writer stopped: {proc.communicate()}")
        assert time.monotonic() < deadline, "the writers stopped writing"
        time.sleep(0.01)


def _last_values(log: Path) -> dict[int, str]:
    last: dict[int, str] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        last[entry["id"]] = entry["v"]
    return last


def _stop(stop: Path, proc: subprocess.Popen[bytes]) -> None:
    stop.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)


@pytest.mark.parametrize("name", list(CHANGES))
def test_old_and_new_code_write_concurrently_through_expand_backfill_and_contract(
    project, cli, db, database_url, tmp_path, name
):
    change = CHANGES[name]
    store = tmp_path / "store"
    args = _args(database_url, store)
    project.add_revision(
        "r1",
        None,
        f'op.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, {change.column_sql}, pad text)")',
    )
    project.add_revision("r2", "r1", f"from dbrollback import expand\n{change.revision}", ABORT)
    _run(cli, "upgrade", "r1", *args)
    db.execute(
        f"INSERT INTO accounts ({change.old}, pad) SELECT {change.initial}, repeat('x', 50) "
        f"FROM generate_series(1, {ROWS}) g"
    )
    db.execute("VACUUM ANALYZE accounts")
    initial = dict(db.execute(f"SELECT id, {change.old} FROM accounts").fetchall())

    script = tmp_path / "writer.py"
    script.write_text(WRITER)

    def writer(
        column: str, kind: str, k: int, stop: Path, log: Path, counter: int
    ) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            str(script),
            database_url,
            column,
            kind,
            str(k),
            str(ROWS),
            str(stop),
            str(log),
        ]
        return subprocess.Popen([*command, str(counter)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    stops = [tmp_path / "stop_old", tmp_path / "stop_new", tmp_path / "stop_new2"]
    logs = [tmp_path / "old.log", tmp_path / "new.log", tmp_path / "new2.log"]
    procs = [
        writer(change.old, change.old_kind, 0, stops[0], logs[0], 0),
        writer(change.new, change.new_kind, 1, stops[1], logs[1], 0),
    ]
    try:
        _let_them_write(logs[:1], procs)  # old code alone, before the expansion
        assert _lines(logs[1]) == 0
        up = _run(cli, "upgrade", "--no-backfill", "--json", *args).json
        assert up["expansions"] == []
        _let_them_write(logs[:2], procs)  # both, the new column not backfilled yet
        during = [_lines(p) for p in logs[:2]]
        backfilled = _run(
            cli,
            "backfill",
            "--resume",
            "--json",
            "--batch-time",
            "off",
            "--batch-rows",
            "500",
            "--pause",
            "2ms",
            *args,
        ).json
        (result,) = backfilled
        assert result["status"] == "done"
        assert result["batches"] >= ROWS // 500
        # the writers went on while the backfill ran
        assert all(_lines(p) > n for p, n in zip(logs, during, strict=False))
        _let_them_write(logs[:2], procs)  # both, after the backfill
        _stop(stops[0], procs[0])  # old code is gone: every instance runs the new code
        _stop(stops[1], procs[1])  # (stopped too, to compare its last writes with the table)

        values = {i: change.expected(str(v), None) for i, v in initial.items()}
        old_last, new_last = _last_values(logs[0]), _last_values(logs[1])
        values |= {i: change.expected(v, None) for i, v in old_last.items()}
        values |= {i: change.expected(None, v) for i, v in new_last.items()}
        assert len(old_last) > 10 and len(new_last) > 10
        both = db.execute(f"SELECT id, {change.old}, {change.new} FROM accounts").fetchall()
        assert {r[0]: (r[1], r[2]) for r in both} == values
        # every row consistent, counted by the same rule contract uses
        doc = _run(cli, "contract", "--dry-run", "--json", *args).json
        assert doc["expansions"][0]["out_of_sync_rows"] == 0
        assert doc["expansions"][0]["checked_rows"] == len(values)

        procs.append(writer(change.new, change.new_kind, 1, stops[2], logs[2], 1_000_000))
        _let_them_write(logs[2:], procs[2:])
        doc = _run(cli, "contract", "--yes", "--json", *args).json  # while new code writes
        assert doc["expansions"][0]["action"] == "contracted"
        _let_them_write(logs[2:], procs[2:])  # and after
    finally:
        for stop in stops:
            stop.touch()
        outcomes = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outcomes

    assert _columns(db, "accounts") == ["id", "pad", change.new]
    assert _leftovers(db) == []
    values |= {i: change.expected(None, v) for i, v in _last_values(logs[2]).items()}
    got = dict(db.execute(f"SELECT id, {change.new} FROM accounts").fetchall())
    assert got == {i: v[1] for i, v in values.items()}
    assert db.execute(
        "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = %s",
        (change.new,),
    ).fetchone() == ("NO",)
