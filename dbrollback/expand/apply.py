"""Carry out an ExpandOperation on the revision's own connection (Alembic calls this)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from dbrollback.errors import ConfigError

if TYPE_CHECKING:
    from alembic.operations import Operations

    from dbrollback.expand import ExpandOperation


def _driver(operations: Operations) -> psycopg.Connection:
    context = operations.migration_context
    if context.as_sql:
        raise ConfigError(
            "dbrollback.expand helpers read the live table and record the expansion in the "
            "database; they cannot be rendered as offline SQL (alembic --sql)."
        )
    driver = operations.get_bind().connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError("dbrollback.expand needs the psycopg 3 driver (postgresql+psycopg://).")
    return driver


def apply_operation(operations: Operations, operation: ExpandOperation) -> None:
    try:
        _apply(operations, operation)
    except ConfigError as exc:
        if operation.revision and not exc.message.startswith("Revision "):
            exc.message = f"Revision {operation.revision}: {exc.message}"
            exc.args = (exc.message,)
        raise


def _apply(operations: Operations, operation: ExpandOperation) -> None:
    from dbrollback.catalog.schema import ensure_catalog
    from dbrollback.expand.table import live_table

    conn = _driver(operations)
    ensure_catalog(conn)  # under plain `alembic upgrade` the catalog may not exist yet
    kind, args, revision = operation.kind, operation.arguments, operation.revision
    if kind == "abort":
        _abort_revision(conn, revision)
        return
    table = live_table(conn, operation.table_name, operation.schema)
    if kind == "backfill":
        _backfill_now(conn, table.name, args)
    elif kind in ("synced_column", "rename_column", "change_column_type", "split_column"):
        _start_synced(conn, table, kind, args, revision)
    elif kind == "not_null_column":
        from dbrollback.expand import not_null

        not_null.start(conn, table, args["column"], args["type"], args["backfill"], revision=revision)
    elif kind == "foreign_key":
        from dbrollback.expand import schema_objects

        referent = live_table(conn, args["referent"], args["referent_schema"])
        schema_objects.start_foreign_key(
            conn,
            args["name"],
            table,
            referent,
            args["local_cols"],
            args["remote_cols"],
            ondelete=args["ondelete"],
            onupdate=args["onupdate"],
            revision=revision,
        )
    elif kind == "index":
        _create_index(operations, conn, table, args, revision)
    else:  # pragma: no cover - the public functions only make the kinds above
        raise ConfigError(f"Unknown expand operation {kind!r}.")


def _start_synced(
    conn: psycopg.Connection, table: Any, kind: str, args: dict[str, Any], revision: str | None
) -> None:
    from dbrollback.expand import synced

    old: list[str] = args["old"] or []
    if not old:
        raise ConfigError("add_synced_column needs old_column= (the column the new one is computed from).")
    new = []
    for item in args["new"]:
        # rename_column: same type as the old column, value copied as is.
        type_ = item["type"] or table.column(old[0]).type
        up = item["up"] or _ident(conn, old[0])
        new.append(synced.NewColumn(item["name"], type_, up))
    down = dict(args["down"])
    if kind == "rename_column":
        down = {old[0]: _ident(conn, new[0].name)}
    spec = synced.SyncSpec(old=old, new=new, down=down, new_default=args.get("new_default"))
    first_old = table.column(old[0])
    if kind == "rename_column" and first_old.default is not None:
        spec.new_default = first_old.default
    # The new column takes over the old one's NOT NULL at contract (it cannot be added NOT NULL
    # to a table with rows, and old code does not write it).
    spec.not_null = len(old) == 1 and len(new) == 1 and first_old.not_null
    synced.start(conn, table, spec, kind=kind, revision=revision)


def _ident(conn: psycopg.Connection, name: str) -> str:
    from psycopg import sql

    return sql.Identifier(name).as_string(conn)


def _create_index(
    operations: Operations, conn: psycopg.Connection, table: Any, args: dict[str, Any], revision: str | None
) -> None:
    from dbrollback.expand import schema_objects
    from dbrollback.expand.registry import list_expansions

    spec = schema_objects.index_spec(
        table, args["name"], args["columns"], unique=args["unique"], where=args["where"], using=args["using"]
    )
    already = [
        e
        for e in list_expansions(conn, revision=revision, exact=True)
        if e.kind == "index" and e.spec["name"] == spec["name"] and e.table == table.name
    ]
    if not already:  # an earlier attempt of this revision committed its record before failing
        schema_objects.start_index(conn, table, spec, revision=revision)
    # CONCURRENTLY cannot run in a transaction block: the autocommit block commits what the revision
    # did so far and runs the build outside any transaction.
    with operations.get_context().autocommit_block():
        schema_objects.build_index_concurrently(conn, table, spec)


def _abort_revision(conn: psycopg.Connection, revision: str | None) -> None:
    from dbrollback.expand.lifecycle import abort
    from dbrollback.expand.registry import list_expansions

    if revision is None:
        raise ConfigError("expand.abort() must be called from a revision's downgrade().")
    from dbrollback.expand_api import refuse_contracted

    # A contracted expansion's old shape is gone: moving the version back would leave the new
    # shape behind under the old revision, so the downgrade is refused (exit 3 under dbrollback).
    refuse_contracted(conn, [revision])
    for expansion in reversed(list_expansions(conn, revision=revision, exact=True)):
        if expansion.revision == revision:
            abort(conn, expansion, "downgrade")


def _backfill_now(conn: psycopg.Connection, table: Any, args: dict[str, Any]) -> None:
    from dbrollback.backfill.engine import BackfillOptions, create_backfill, run_backfill

    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigError(
            "expand.backfill() commits batch by batch, so it must run outside the revision's "
            "transaction: call it inside `with op.get_context().autocommit_block():`."
        )
    try:
        options = BackfillOptions(**args["options"])
    except TypeError as exc:
        raise ConfigError(f"expand.backfill(): {exc}") from None
    backfill_id = create_backfill(conn, table, args["set"], args["where"])
    run_backfill(conn, backfill_id, options)
