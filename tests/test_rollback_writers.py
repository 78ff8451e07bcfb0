"""Issue #5's concurrency proof: writer PROCESSES update, insert and delete rows continuously before,
during and after the upgrade and the rollback. At the end every row holds the last value its writer
committed (or is gone if its writer deleted it last), and every value the migration destroyed is
back, in one transaction and with --batched."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from .test_rollback import _accounts, _args, _fill, _rollback, _rows, _upgrade

ROWS = 600
WRITERS = 2

# Each writer owns the ids = k (mod WRITERS) and the ids it inserts, so the last write to a row is the
# last line of one log. Amounts are 1,000,000 + 2 * counter + 0.5: never a value the migration's
# rounding made of an earlier write (that would be the same value written again, which no hash can
# tell from no write), and the amount actually stored (rounded while the column is an integer) is
# read back with RETURNING.
WRITER = r"""
import json, os, random, sys, time
from decimal import Decimal
import psycopg

url, k, writers, rows, stop, log_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rng = random.Random(k)
alive = {i for i in range(1, rows + 1) if i % writers == k}
next_id = 100_000 * (k + 1)
counter = 0
with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn, open(log_path, "a") as log:
    conn.execute("SET lock_timeout = '120s'")
    while not os.path.exists(stop):
        counter += 1
        amount = Decimal(1_000_000 + 2 * counter) + Decimal("0.5")
        email = f"w{k}-{counter}"
        dice = rng.random()
        if dice < 0.10 or not alive:
            next_id += 1
            row = conn.execute(
                "INSERT INTO accounts (id, email, amount) VALUES (%s, %s, %s) RETURNING id, email, amount::text",
                (next_id, email, amount),
            ).fetchone()
            alive.add(next_id)
            entry = {"op": "set", "id": row[0], "email": row[1], "amount": row[2], "wrote_amount": True}
        elif dice < 0.15:
            victim = rng.choice(sorted(alive))
            conn.execute("DELETE FROM accounts WHERE id = %s", (victim,))
            alive.discard(victim)
            entry = {"op": "delete", "id": victim}
        elif dice < 0.60:
            row = conn.execute(
                "UPDATE accounts SET email = %s, amount = %s WHERE id = %s RETURNING id, email, amount::text",
                (email, amount, rng.choice(sorted(alive))),
            ).fetchone()
            entry = {"op": "set", "id": row[0], "email": row[1], "amount": row[2], "wrote_amount": True}
        else:
            row = conn.execute(
                "UPDATE accounts SET email = %s WHERE id = %s RETURNING id, email, amount::text",
                (email, rng.choice(sorted(alive))),
            ).fetchone()
            entry = {"op": "set", "id": row[0], "email": row[1], "amount": row[2], "wrote_amount": False}
        log.write(json.dumps(entry) + "\n")
        log.flush()
        time.sleep(0.002)
"""


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _let_them_write(logs: list[Path], procs: list[subprocess.Popen[bytes]], more: int = 25) -> None:
    """Until every writer committed `more` further writes (a guard against hanging, no timing)."""
    targets = [_lines(p) + more for p in logs]
    deadline = time.monotonic() + 120
    while any(_lines(p) < t for p, t in zip(logs, targets, strict=True)):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a writer stopped: {proc.communicate()}")
        assert time.monotonic() < deadline, "the writers stopped writing"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "mode", [(), ("--batched", "--batch-rows", "50")], ids=["one transaction", "batched"]
)
def test_writer_processes_through_upgrade_and_rollback_keep_their_last_value(
    project, cli, db, database_url, tmp_path, mode
):
    # one revision that destroys data two ways: a dropped column and a narrowed type
    _accounts(
        project,
        'op.drop_column("accounts", "legacy")\n'
        'op.alter_column("accounts", "amount", type_=sa.Integer, postgresql_using="round(amount)::integer")',
        'op.alter_column("accounts", "amount", type_=sa.Numeric(10, 2))\n'
        'op.add_column("accounts", sa.Column("legacy", sa.Text))',
    )
    store = tmp_path / "store"
    assert cli("upgrade", "r1", *_args(database_url, store)).code == 0
    _fill(db, ROWS)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop = tmp_path / "stop"
    logs = [tmp_path / f"writer{k}.log" for k in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                database_url,
                str(k),
                str(WRITERS),
                str(ROWS),
                str(stop),
                str(logs[k]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(WRITERS)
    ]
    try:
        _let_them_write(logs, procs)  # before the upgrade
        _upgrade(cli, database_url, store)
        _let_them_write(logs, procs)  # between the upgrade and the rollback
        doc = _rollback(cli, database_url, store, *mode)
        _let_them_write(logs, procs)  # after it
    finally:
        stop.touch()
        outcomes = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * WRITERS, outcomes
    assert doc["verified"] and doc["schema_matches"]

    expected: dict[int, tuple[str, Decimal, str | None] | None] = {
        i: (f"User{i}@X.org", Decimal(i) + Decimal("0.25"), f"L{i}") for i in range(1, ROWS + 1)
    }
    for log in logs:
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["op"] == "delete":
                expected[entry["id"]] = None
            else:  # an email-only update read the amount back but did not write it
                before = expected.get(entry["id"])
                amount = Decimal(entry["amount"]) if entry["wrote_amount"] or before is None else before[1]
                legacy = f"L{entry['id']}" if entry["id"] <= ROWS else None
                expected[entry["id"]] = (entry["email"], amount, legacy)
    actual = {
        row[0]: (row[1], row[2], row[3])
        for row in _rows(db, "SELECT id, email, amount, legacy FROM accounts")
    }
    wanted = {i: v for i, v in expected.items() if v is not None}
    assert actual == wanted
    # the rows the writers left alone got both destroyed values back; some rows were written in
    # every phase, so the merge saw later writes (kept) as well as untouched rows (restored)
    untouched = [
        i
        for i in range(1, ROWS + 1)
        if expected[i] == (f"User{i}@X.org", Decimal(i) + Decimal("0.25"), f"L{i}")
    ]
    assert len(untouched) >= 50
    (table,) = doc["tables"]
    assert table["restored_rows"] > 0 and table["kept_rows"] > 0
