"""`rollback --batched`: put values back in short transactions of their own, resumable after kill -9.

The rollback's transaction still does everything else (downgrades, re-inserts, conflicts, the
journal's mark, verification of what it wrote). For the one statement that grows with the table,
the UPDATE putting back the values of every row, it instead records per table a work table in the
catalog schema (:func:`defer`): each row's key, the value the merge would write, the 64-bit hash
the live value had right after the downgrade and the hash of the pre-image value. That commits
with the rollback (after :func:`check_still_fillable`). Then :func:`run_fills` walks the work
table in batches of `batch_rows`, each its own transaction:

* a value is written only where the live value still hashes as it did right after the downgrade;
  one the application wrote since (it runs between batches) is kept and reported as a conflict,
  and so is a value a later write makes break a constraint (the batch is then redone row by row);
* in the same transaction, with the batch's rows still locked by its UPDATE, every row of the
  batch is checked: it holds the pre-image's value, or one written since the downgrade. A row
  holding neither fails the batch (rolled back) and the fill stops: `verified` is per batch;
* the batch's progress (`done_n`, counts) commits with it, so a killed fill resumes after the last
  committed batch (`dbrollback rollback --resume`) and no batch is applied twice.

A dry run (:data:`DRY_RUN`) stops after the work table, a temp table checked against the pre-image.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbrollback.catalog import SCHEMA
from dbrollback.catalog.fingerprints import pinned_text_settings
from dbrollback.database import Notify
from dbrollback.errors import MigrationFailed
from dbrollback.progress import SILENT, ProgressReporter
from dbrollback.rollback.report import MAX_CONFLICT_EXAMPLES, TableReport
from dbrollback.rollback.sqlparts import Hasher, key_json, keys_equal, live_columns, names
from dbrollback.snapshot.checksum import pin_text_settings

ORDINAL = "_dbrb_n"
DEFAULT_BATCH_ROWS = 10_000


def _before(i: int) -> str:
    """The work table's column with the hash of the i-th value right after the downgrade."""
    return f"_dbrb_d{i}"


@dataclass
class Fill:
    """One row of dbrollback.rollback_fills: one table's values still to put back."""

    rollback_run_id: int
    position: int
    schema: str
    table: str
    work_table: str
    key: list[str]
    columns: list[str]
    types: list[str]
    total_rows: int
    done_n: int = 0
    restored_rows: int = 0
    kept_rows: int = 0
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    rollback_report: dict[str, Any] = field(default_factory=dict)
    verified: bool = True
    batches: int = 0
    batch_rows: int = DEFAULT_BATCH_ROWS
    finished: bool = False

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def live(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def work(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.work_table)

    def add_to(self, report: TableReport) -> None:
        """Add this fill's counts to the rollback transaction's report of the table."""
        report.restored_rows += self.restored_rows
        report.kept_rows += self.kept_rows
        report.conflicts += self.kept_rows
        report.conflict_examples = (report.conflict_examples + self.conflict_examples)[:MAX_CONFLICT_EXAMPLES]
        report.verified = bool(report.verified and self.verified and self.finished)


DRY_RUN = 0  # the "rollback run" of a dry run's deferred rows: a temp table, nothing recorded


def work_table_name(rollback_run_id: int, number: int) -> str:
    return f"_dbrb_fill_{rollback_run_id}_{number}"


def _work_identifier(rollback_run_id: int, number: int) -> sql.Identifier:
    schema = "pg_temp" if rollback_run_id == DRY_RUN else SCHEMA
    return sql.Identifier(schema, work_table_name(rollback_run_id, number))


def _preimage(i: int) -> str:
    """The work table's column with the hash of the i-th pre-image value the row should get back
    (NULL: a write made since the migration is kept instead)."""
    return f"_dbrb_p{i}"


def defer(
    conn: psycopg.Connection,
    hasher: Hasher,
    *,
    rollback_run_id: int,
    number: int,
    schema: str,
    table: str,
    key: list[str],
    values: list[tuple[str, str, sql.Composable, sql.Composable]],
    source: sql.Composable,
    where: sql.Composable,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> int:
    """In the rollback's transaction, instead of ``UPDATE t SET column = value FROM source WHERE
    where``: record those rows for the batches; `values`: (column, live type, value, hash of the
    pre-image value or NULL). Returns how many rows they are. A dry run (`rollback_run_id`
    DRY_RUN) only makes a temp table of them and checks it against the pre-image."""
    work = _work_identifier(rollback_run_id, number)
    dry = rollback_run_id == DRY_RUN
    selected: list[sql.Composable] = [
        sql.SQL("row_number() OVER () AS {}").format(sql.Identifier(ORDINAL)),
        names(key, "t"),
    ]
    for i, (column, type_name, value, preimage) in enumerate(values):
        selected += [
            sql.SQL("({})::{} AS {}").format(value, sql.SQL(type_name), sql.Identifier(column)),
            sql.SQL("{} AS {}").format(hasher.value("t", column, type_name), sql.Identifier(_before(i))),
            sql.SQL("{} AS {}").format(preimage, sql.Identifier(_preimage(i))),
        ]
    with pinned_text_settings(conn):
        conn.execute(
            sql.SQL("CREATE {}TABLE {} AS SELECT {} FROM {} AS t, {} WHERE {}").format(
                sql.SQL("TEMP " if dry else ""),
                work,
                sql.SQL(", ").join(selected),
                sql.Identifier(schema, table),
                source,
                where,
            )
        )
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(work)).fetchone()
    total = int(row[0]) if row else 0
    if dry:
        return total
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(work, sql.Identifier(ORDINAL)))
    conn.execute(sql.SQL("ANALYZE {}").format(work))
    conn.execute(
        """INSERT INTO dbrollback.rollback_fills (rollback_run_id, position, table_schema, table_name,
               work_table, key_columns, columns, column_types, total_rows, batch_rows)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            rollback_run_id,
            number,
            schema,
            table,
            work_table_name(rollback_run_id, number),
            key,
            [c for c, _, _, _ in values],
            [t for _, t, _, _ in values],
            total,
            batch_rows,
        ),
    )
    return total


def values_set_aside_match(
    conn: psycopg.Connection, hasher: Hasher, number: int, columns: list[tuple[str, str]]
) -> bool:
    """Dry run: every value set aside for the batches (`columns`: name, live type) is the
    pre-image's value where the merge puts the pre-image back (hashes compared on the server)."""
    work = _work_identifier(DRY_RUN, number)
    differs = [
        sql.SQL("(w.{} IS NOT NULL AND {} IS DISTINCT FROM w.{})").format(
            sql.Identifier(_preimage(i)), hasher.value("w", c, t), sql.Identifier(_preimage(i))
        )
        for i, (c, t) in enumerate(columns)
    ]
    with pinned_text_settings(conn):
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} AS w WHERE {}").format(work, sql.SQL(" OR ").join(differs))
        ).fetchone()
    return row is not None and row[0] == 0


def check_still_fillable(
    conn: psycopg.Connection, deferred: list[tuple[str, str, list[tuple[str, str]]]]
) -> None:
    """In the rollback's transaction, after its last downgrade: every deferred table (schema, table,
    [(column, type)]) still has the columns its batches will write; an older revision's downgrade
    may have changed it. Raising here rolls the whole rollback back, so a batch can never be stuck
    on a missing table."""
    for schema, table, columns in deferred:
        now = live_columns(conn, schema, table)
        changed = [c for c, t in columns if now is None or c not in now or now[c].type != t]
        if changed:
            raise MigrationFailed(
                f"--batched: a later downgrade of this rollback changed {schema}.{table} "
                f"({', '.join(changed)}) after its values were set aside for the batches; roll the runs "
                "back one at a time, or without --batched. The rollback was rolled back; nothing was "
                "changed.",
                table=f"{schema}.{table}",
            )


def record_rollback_report(conn: psycopg.Connection, rollback_run_id: int, report: dict[str, Any]) -> None:
    """The rollback's report as its transaction commits, for `--resume` to complete."""
    conn.execute(
        "UPDATE dbrollback.rollback_fills SET rollback_report = %s WHERE rollback_run_id = %s",
        (json.dumps(report), rollback_run_id),
    )


def _fills_table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('dbrollback.rollback_fills') IS NOT NULL").fetchone()
    return bool(row and row[0])


def fills_of(conn: psycopg.Connection, rollback_run_id: int) -> list[Fill]:
    rows = conn.execute(
        """SELECT rollback_run_id, position, table_schema, table_name, work_table, key_columns, columns,
                  column_types, total_rows, done_n, restored_rows, kept_rows, conflict_examples,
                  rollback_report, verified, batches, batch_rows, finished_at IS NOT NULL
           FROM dbrollback.rollback_fills WHERE rollback_run_id = %s ORDER BY position""",
        (rollback_run_id,),
    ).fetchall()
    return [Fill(*r) for r in rows]


def pending_fill_run(conn: psycopg.Connection) -> int | None:
    """The rollback run whose batches have not all committed yet (at most one: everything else
    refuses to run until it is finished)."""
    if not _fills_table_exists(conn):
        return None
    row = conn.execute(
        "SELECT min(rollback_run_id) FROM dbrollback.rollback_fills WHERE finished_at IS NULL"
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def pending_progress(conn: psycopg.Connection) -> tuple[int, int, int] | None:
    """(rollback run, rows done, rows in all) of the unfinished batched rollback, if any."""
    run_id = pending_fill_run(conn)
    if run_id is None:
        return None
    fills = fills_of(conn, run_id)
    return run_id, sum(f.done_n for f in fills), sum(f.total_rows for f in fills)


def abandon_fills(conn: psycopg.Connection, rollback_run_id: int) -> list[Fill]:
    """Give up the unfinished batches of `rollback_run_id`: their work tables are dropped and they
    count as not verified; returns every fill of that rollback."""
    fills = fills_of(conn, rollback_run_id)
    with conn.transaction():
        for f in fills:
            if f.finished:
                continue
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(f.work))
            conn.execute(
                "UPDATE dbrollback.rollback_fills SET finished_at = clock_timestamp(), verified = false "
                "WHERE rollback_run_id = %s AND position = %s",
                (f.rollback_run_id, f.position),
            )
            f.finished, f.verified = True, False
    return fills


def resume_hint(run_id: int) -> str:
    return (
        f"Rollback run {run_id} has committed its downgrades but not yet put back every value (its batches "
        "were interrupted). Finish it first: `dbrollback rollback --resume` (or give the rest up: "
        "`--resume --abandon`)."
    )


def run_fills(
    conn: psycopg.Connection,
    rollback_run_id: int,
    *,
    batch_rows: int | None = None,
    lock_timeout_ms: int = 5000,
    lock_retries: int = 3,
    notify: Notify,
    progress: ProgressReporter = SILENT,
) -> list[Fill]:
    """Run the batches of every unfinished table of `rollback_run_id` (autocommit `conn`, holding
    the dbrollback lock); returns every fill of that rollback, finished ones included.
    `batch_rows` None: the size the rollback started with (a resume goes on as it began)."""
    fills = fills_of(conn, rollback_run_id)
    hasher = Hasher(conn)
    for f in fills:
        if f.finished:
            continue
        if f.done_n:
            notify(f"{f.name}: resuming after {f.done_n:,} of {f.total_rows:,} rows")
        task = progress.task(f"putting back {f.name}", f.total_rows - f.done_n, unit="rows")
        while f.done_n < f.total_rows:
            low = f.done_n
            _batch_with_retries(
                conn,
                hasher,
                f,
                min(low + (batch_rows or f.batch_rows), f.total_rows),
                lock_timeout_ms,
                lock_retries,
                notify,
            )
            task.advance(f.done_n - low)
        task.finish()
        last = all(other.finished for other in fills if other is not f)
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(f.work))
            conn.execute(
                "UPDATE dbrollback.rollback_fills SET finished_at = clock_timestamp() "
                "WHERE rollback_run_id = %s AND position = %s",
                (f.rollback_run_id, f.position),
            )
            if last:  # with the last batch's table, or a kill right after would leave it "interrupted"
                conn.execute(
                    "UPDATE dbrollback.runs SET status = 'succeeded', finished_at = clock_timestamp(), "
                    "error = NULL WHERE id = %s",
                    (rollback_run_id,),
                )
        f.finished = True
        notify(
            f"{f.name}: {f.restored_rows:,} row(s) put back in {f.batches:,} batch(es), "
            f"{f.kept_rows:,} kept (written since the downgrade)"
        )
    return fills


def _batch_with_retries(
    conn: psycopg.Connection,
    hasher: Hasher,
    f: Fill,
    high: int,
    lock_timeout_ms: int,
    lock_retries: int,
    notify: Notify,
) -> None:
    for attempt in range(lock_retries + 1):
        try:
            _batch(conn, hasher, f, high, lock_timeout_ms)
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            what = "a deadlock" if isinstance(exc, psycopg.errors.DeadlockDetected) else "the lock timeout"
            if attempt == lock_retries:
                raise MigrationFailed(
                    f"{f.name}: a batch could not lock its rows ({what}) {lock_retries + 1} time(s); "
                    f"{f.done_n:,} of {f.total_rows:,} rows are done. Resume with "
                    "`dbrollback rollback --resume`.",
                    table=f.name,
                    resumable=True,
                ) from None
            delay = min(2.0**attempt, 30.0)
            notify(f"{f.name}: {what}, retrying the batch in {delay:g} s")
            time.sleep(delay)


def _batch(conn: psycopg.Connection, hasher: Hasher, f: Fill, high: int, lock_timeout_ms: int) -> None:
    """Rows done_n < n <= high of the work table, in one transaction with its progress."""
    low = f.done_n
    in_batch = sql.SQL("w.{} > {} AND w.{} <= {}").format(
        sql.Identifier(ORDINAL), sql.Literal(low), sql.Identifier(ORDINAL), sql.Literal(high)
    )
    typed = list(enumerate(zip(f.columns, f.types, strict=True)))
    unchanged = [  # the live value is still what the downgrade left: nobody wrote it since
        sql.SQL("{} IS NOT DISTINCT FROM w.{}").format(hasher.value("t", c, t), sql.Identifier(_before(i)))
        for i, (c, t) in typed
    ]
    sets = sql.SQL(", ").join(
        sql.SQL("{} = CASE WHEN {} THEN w.{} ELSE t.{} END").format(
            sql.Identifier(c), unchanged[i], sql.Identifier(c), sql.Identifier(c)
        )
        for i, c in enumerate(f.columns)
    )
    put_back = [hasher.differs(c, ("t", t), ("w", t)) for _, (c, t) in typed]  # true: not put back
    gained = [  # the column holds the value put back, and that is a change from the downgrade's
        sql.SQL("(NOT {} AND {} IS DISTINCT FROM w.{})").format(
            put_back[i], hasher.value("w", c, t), sql.Identifier(_before(i))
        )
        for i, (c, t) in typed
    ]
    wrong = [  # not put back though nobody wrote it since; or put back but not the pre-image's value
        sql.SQL("(({} AND {}) OR (NOT {} AND w.{} IS NOT NULL AND {} IS DISTINCT FROM w.{}))").format(
            put_back[i],
            unchanged[i],
            put_back[i],
            sql.Identifier(_preimage(i)),
            hasher.value("t", c, t),
            sql.Identifier(_preimage(i)),
        )
        for i, (c, t) in typed
    ]
    update = sql.SQL("UPDATE {} AS t SET {} FROM {} AS w WHERE {} AND ").format(
        f.live, sets, f.work, keys_equal(f.key, "t", "w")
    )
    refused: dict[int, str] = {}  # n -> why a constraint refused that row its values
    with conn.transaction():
        pin_text_settings(conn)  # SET LOCAL: this transaction is the batch's own
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        # Deferred constraints checked per statement, so a violation is a row's conflict below and
        # never a COMMIT that fails the same way on every resume.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        try:
            with conn.transaction():
                conn.execute(update + in_batch)
        except psycopg.errors.IntegrityError:
            # A write since the downgrade makes a value break a constraint (a unique value taken, a
            # parent deleted): row by row, and those rows keep what they hold, as conflicts.
            refused = _row_by_row(conn, f, update, in_batch)
        # Verification, while the UPDATE still holds these rows: each holds the value put back (the
        # pre-image's, as hashed when the rollback set it aside) or one written since the downgrade.
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}) "
                "FROM {} AS w JOIN {} AS t ON {} WHERE {} AND NOT (w.{} = ANY(%s))"
            ).format(
                sql.SQL(" OR ").join(gained),
                sql.SQL(" OR ").join(put_back),
                sql.SQL(" OR ").join(wrong),
                f.work,
                f.live,
                keys_equal(f.key, "t", "w"),
                in_batch,
                sql.Identifier(ORDINAL),
            ),
            (list(refused),),
        ).fetchone()
        assert row is not None
        restored, kept, wrong_rows = (int(v) for v in row)
        if wrong_rows:
            raise MigrationFailed(
                f"{f.name}: verification failed in the batch of rows {low + 1:,}-{high:,}: {wrong_rows:,} "
                "row(s) hold neither the pre-image's value nor a later write; the batch was rolled back "
                f"({low:,} of {f.total_rows:,} rows are done)",
                table=f.name,
                resumable=True,
            )
        kept += len(refused)
        room = MAX_CONFLICT_EXAMPLES - len(f.conflict_examples)
        examples = _refused_examples(conn, f, refused, room)
        room -= len(examples)
        if kept > len(refused) and room > 0:
            not_refused = sql.SQL("{} AND NOT (w.{} = ANY({}))").format(
                in_batch, sql.Identifier(ORDINAL), sql.Literal(list(refused))
            )
            examples += _examples(conn, hasher, f, not_refused, put_back, room)
        conn.execute(
            """UPDATE dbrollback.rollback_fills SET done_n = %s, restored_rows = restored_rows + %s,
                   kept_rows = kept_rows + %s, batches = batches + 1,
                   conflict_examples = conflict_examples || %s::jsonb
               WHERE rollback_run_id = %s AND position = %s""",
            (high, restored, kept, json.dumps(examples), f.rollback_run_id, f.position),
        )
    f.done_n = high
    f.restored_rows += restored
    f.kept_rows += kept
    f.batches += 1
    f.conflict_examples.extend(examples)


def _row_by_row(
    conn: psycopg.Connection, f: Fill, update: sql.Composed, in_batch: sql.Composable
) -> dict[int, str]:
    refused: dict[int, str] = {}
    ordinals = conn.execute(
        sql.SQL("SELECT w.{} FROM {} AS w WHERE {} ORDER BY 1").format(
            sql.Identifier(ORDINAL), f.work, in_batch
        )
    ).fetchall()
    for (n,) in ordinals:
        try:
            with conn.transaction():
                conn.execute(update + sql.SQL("w.{} = {}").format(sql.Identifier(ORDINAL), sql.Literal(n)))
        except psycopg.errors.IntegrityError as exc:
            refused[int(n)] = f"not put back: {exc.diag.message_primary or exc}"
    return refused


def _refused_examples(
    conn: psycopg.Connection, f: Fill, refused: dict[int, str], limit: int
) -> list[dict[str, Any]]:
    if not refused or limit <= 0:
        return []
    rows = conn.execute(
        sql.SQL("SELECT w.{}, {} FROM {} AS w WHERE w.{} = ANY(%s) ORDER BY 1 LIMIT {}").format(
            sql.Identifier(ORDINAL), key_json(f.key, "w"), f.work, sql.Identifier(ORDINAL), sql.Literal(limit)
        ),
        (list(refused),),
    ).fetchall()
    return [
        {"key": k, "column": ", ".join(f.columns), "current": refused[int(n)], "preimage": None}
        for n, k in rows
    ]


def _examples(
    conn: psycopg.Connection,
    hasher: Hasher,
    f: Fill,
    in_batch: sql.Composable,
    put_back: list[sql.Composable],
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` values written since the downgrade that kept the pre-image out."""
    found: list[dict[str, Any]] = []
    for i, c in enumerate(f.columns):
        rows = conn.execute(
            sql.SQL(
                "SELECT {}, t.{}::text, w.{}::text FROM {} AS w JOIN {} AS t ON {} WHERE {} AND {} LIMIT {}"
            ).format(
                key_json(f.key, "t"),
                sql.Identifier(c),
                sql.Identifier(c),
                f.work,
                f.live,
                keys_equal(f.key, "t", "w"),
                in_batch,
                put_back[i],
                sql.Literal(limit - len(found)),
            )
        ).fetchall()
        found.extend({"key": k, "column": c, "current": cur, "preimage": pre} for k, cur, pre in rows)
        if len(found) >= limit:
            break
    return found
