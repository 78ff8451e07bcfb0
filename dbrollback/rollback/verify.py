"""Proof that a table holds what the merge promised, computed on the server.

* Rows untouched since the migration (not deleted, none of their hashed columns written): their
  key and every column the merge put back equal the pre-image: the 64-bit hash of each live row
  against its pre-image row's, over exactly those keys, in one pass (a stricter test than equal
  sums, and one join instead of a key table and two checksum scans).
* Re-inserted rows equal the pre-image in every column of the snapshot (row by row too); every row
  of a table the migration dropped does (checksums of both sides).
* Row counts add up: rows now = rows after the migration - deleted since + inserted since +
  re-inserted.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbrollback.catalog.fingerprints import pinned_text_settings
from dbrollback.rollback.merge import GONE, WORK_MEM, TableMerge
from dbrollback.rollback.sqlparts import Hasher, count, keys_equal, local_settings


def _checksum(
    conn: psycopg.Connection,
    hasher: Hasher,
    source: sql.Composable,
    alias: str,
    columns: list[tuple[str, str]],
    where: sql.Composable,
) -> tuple[int, str]:
    row = conn.execute(
        sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} AS {} WHERE {}").format(
            hasher.row(alias, columns), source, sql.Identifier(alias), where
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _same(
    conn: psycopg.Connection, hasher: Hasher, m: TableMerge, columns: list[str], keys: sql.Composable | None
) -> bool:
    """live and pre-image agree on `columns` for the keys in `keys` (a table with the key columns),
    or on every row when `keys` is None."""
    after, pre = m.columns_after_rollback, m.pre_types

    def within(alias: str) -> sql.Composable:
        if keys is None:
            return sql.SQL("true")
        return sql.SQL("EXISTS (SELECT FROM {} AS k WHERE {})").format(keys, keys_equal(m.key, "k", alias))

    live = _checksum(conn, hasher, m.live, "t", [(c, after[c].type) for c in columns], within("t"))
    image = _checksum(conn, hasher, m.temp("pre"), "p", [(c, pre[c]) for c in columns], within("p"))
    return live == image


def _rows_differing(
    conn: psycopg.Connection,
    hasher: Hasher,
    m: TableMerge,
    columns: list[str],
    source: sql.Composable,
    where: sql.Composable,
) -> int:
    """Rows of `source` (binding the pre-image as p, the live table as t) where `where` holds and the
    live row is missing or differs from the pre-image in `columns`: one pass, row by row."""
    after, pre = m.columns_after_rollback, m.pre_types
    return count(
        conn,
        sql.SQL("SELECT count(*) FROM {} WHERE ({}) AND (t.{} IS NULL OR {} IS DISTINCT FROM {})").format(
            source,
            where,
            sql.Identifier(m.key[0]),
            hasher.row("t", [(c, after[c].type) for c in columns]),
            hasher.row("p", [(c, pre[c]) for c in columns]),
        ),
    )


def verify_table(conn: psycopg.Connection, hasher: Hasher, m: TableMerge) -> bool:
    with pinned_text_settings(conn):
        if m.gone:
            return _same(conn, hasher, m, m.insertable, None)
        rows_now = count(conn, sql.SQL("SELECT count(*) FROM {}").format(m.live))
        expected = (
            (m.fingerprint.row_count or 0) - m.deleted_since + m.inserted_since + m.report.reinserted_rows
        )
        if rows_now != expected:
            return False
        key, pre, live = m.key, m.temp("pre"), m.live
        # --batched: the values put back are checked per batch, in the batch's transaction (fill.py);
        # a dry run checks the values set aside for them against the pre-image instead.
        deferred = m.deferred_rows is not None
        if deferred and not m.deferred_match:
            return False
        restored = list(dict.fromkeys([*key, *([] if deferred else m.restored_columns)]))
        # Merge joins along the live table's key, as the merge's UPDATE: faster here than hash
        # joins of millions of keys in batches.
        with local_settings(conn, {"enable_hashjoin": "off", "work_mem": WORK_MEM}):
            if m.transformed:  # untouched: not deleted since, no hashed column written since
                source = sql.SQL("{} AS s JOIN {} AS p ON {} LEFT JOIN {} AS t ON {}").format(
                    m.temp("since"), pre, keys_equal(key, "s", "p"), live, keys_equal(key, "t", "p")
                )
                where = sql.SQL("NOT s.{} AND NOT ({})").format(sql.Identifier(GONE), m.changed_any("s"))
            else:
                # Nothing hashed: a live row with a pre-image key the migration did not delete is
                # an untouched row (one deleted since has no live row; the row count covers it).
                source = sql.SQL("{} AS p JOIN {} AS t ON {}").format(pre, live, keys_equal(key, "t", "p"))
                where = sql.SQL("NOT EXISTS (SELECT FROM {} AS d WHERE {})").format(
                    m.temp("deleted"), keys_equal(key, "d", "p")
                )
            if _rows_differing(conn, hasher, m, restored, source, where):
                return False
            reinserted = sql.SQL("{} AS r JOIN {} AS p ON {} LEFT JOIN {} AS t ON {}").format(
                m.temp("reinserted"), pre, keys_equal(key, "r", "p"), live, keys_equal(key, "t", "p")
            )
            if not m.report.reinserted_rows:
                return True
            return _rows_differing(conn, hasher, m, m.insertable, reinserted, sql.SQL("true")) == 0
