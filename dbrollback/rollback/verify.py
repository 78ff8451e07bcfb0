"""Proof that a table holds what the merge promised, computed on the server.

* Rows untouched since the migration (not deleted, none of their hashed columns written): their
  key and every column the merge put back equal the pre-image (checksum over exactly those keys).
* Re-inserted rows (and every row of a table the migration dropped) equal the pre-image in every
  column of the snapshot.
* Row counts add up: rows now = rows after the migration - deleted since + inserted since +
  re-inserted.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbrollback.catalog.fingerprints import _pinned_text_settings
from dbrollback.rollback.merge import GONE, TableMerge
from dbrollback.rollback.sqlparts import Hasher, count, keys_equal


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


def verify_table(conn: psycopg.Connection, hasher: Hasher, m: TableMerge) -> bool:
    with _pinned_text_settings(conn):
        if m.gone:
            return _same(conn, hasher, m, m.insertable, None)
        rows_now = count(conn, sql.SQL("SELECT count(*) FROM {}").format(m.live))
        expected = (
            (m.fingerprint.row_count or 0) - m.deleted_since + m.inserted_since + m.report.reinserted_rows
        )
        if rows_now != expected:
            return False
        untouched = m.temp("untouched")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} AS s JOIN {} AS p ON {} "
                "WHERE NOT s.{} AND NOT ({})"
            ).format(
                untouched,
                sql.SQL(", ").join(sql.Identifier("s", k) for k in m.key),
                m.temp("since"),
                m.temp("pre"),
                keys_equal(m.key, "s", "p"),
                sql.Identifier(GONE),
                m.changed_any("s"),
            )
        )
        restored = list(dict.fromkeys([*m.key, *m.restored_columns]))
        return _same(conn, hasher, m, restored, untouched) and _same(
            conn, hasher, m, m.insertable, m.temp("reinserted")
        )
