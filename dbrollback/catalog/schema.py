"""The catalog's own migration chain, kept apart from the user's Alembic history.

Each entry is applied once, in order, in one transaction under a transaction-level advisory
lock, so two processes creating the catalog at the same moment cannot both do it.
Invariants live in the database as constraints (one running run, append-only audit).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbrollback import __version__
from dbrollback.catalog import SCHEMA
from dbrollback.catalog.lock import CATALOG_LOCK

CATALOG_MIGRATIONS: list[str] = [
    # 1: journal and audit
    """
    CREATE TABLE dbrollback.catalog_version (
        version      integer PRIMARY KEY,
        applied_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
        tool_version text NOT NULL
    );
    CREATE TABLE dbrollback.runs (
        id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        command           text NOT NULL,
        direction         text CHECK (direction IN ('upgrade', 'downgrade')),
        status            text NOT NULL
                          CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
        started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at       timestamptz,
        actor             text NOT NULL,
        os_user           text,
        host              text,
        pid               integer,
        backend_pid       integer,
        tool_version      text NOT NULL,
        command_line      text,
        target            text,
        from_revisions    text[] NOT NULL DEFAULT '{}',
        planned_revisions text[] NOT NULL DEFAULT '{}',
        to_revisions      text[],
        failed_revision   text,
        error             text,
        CONSTRAINT runs_finished_iff_not_running CHECK ((status = 'running') = (finished_at IS NULL))
    );
    -- At most one run may be running per database: the advisory lock is the gate, this is the proof.
    CREATE UNIQUE INDEX runs_one_running ON dbrollback.runs ((true)) WHERE status = 'running';
    CREATE TABLE dbrollback.run_steps (
        run_id       bigint NOT NULL REFERENCES dbrollback.runs (id),
        seq          integer NOT NULL,
        revision     text NOT NULL,
        phase        text NOT NULL CHECK (phase IN ('upgrade', 'downgrade')),
        started_at   timestamptz NOT NULL,
        finished_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        status       text NOT NULL CHECK (status IN ('succeeded', 'failed')),
        attempt      integer NOT NULL DEFAULT 1,
        error        text,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE dbrollback.audit (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at            timestamptz NOT NULL DEFAULT clock_timestamp(),
        command       text NOT NULL,
        actor         text NOT NULL,
        os_user       text,
        host          text,
        database_user text NOT NULL DEFAULT current_user,
        run_id        bigint REFERENCES dbrollback.runs (id),
        details       jsonb NOT NULL DEFAULT '{}'
    );
    CREATE FUNCTION dbrollback._dbrb_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'dbrollback.audit is append-only';
    END $$;
    CREATE TRIGGER _dbrb_audit_append_only
        BEFORE UPDATE OR DELETE OR TRUNCATE ON dbrollback.audit
        FOR EACH STATEMENT EXECUTE FUNCTION dbrollback._dbrb_audit_append_only();
    """,
    # 2: snapshots (a copy of what the store holds, for listing; the store is the truth) and the
    #    WAL position before each revision, for whole-cluster point-in-time recovery.
    """
    CREATE TABLE dbrollback.snapshots (
        id          text PRIMARY KEY,
        created_at  timestamptz NOT NULL,
        run_id      bigint REFERENCES dbrollback.runs (id),
        revision    text,
        label       text,
        location    text NOT NULL,
        tables      text[] NOT NULL,
        rows        bigint NOT NULL,
        bytes       bigint NOT NULL,
        expires_at  timestamptz,
        deleted_at  timestamptz
    );
    CREATE TABLE dbrollback.restore_points (
        run_id         bigint NOT NULL REFERENCES dbrollback.runs (id),
        revision       text NOT NULL,
        at             timestamptz NOT NULL DEFAULT clock_timestamp(),
        wal_lsn        pg_lsn NOT NULL,
        name           text,
        created        boolean NOT NULL,
        note           text,
        PRIMARY KEY (run_id, revision)
    );
    ALTER TABLE dbrollback.runs ADD COLUMN snapshot_policy text, ADD COLUMN snapshot_skipped boolean;
    """,
    # 3: an identity for this database, written into snapshot manifests, so one store shared by
    #    several databases (dev, staging, prod) never mixes their snapshots up.
    """
    CREATE TABLE dbrollback.identity (
        id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
    );
    INSERT INTO dbrollback.identity DEFAULT VALUES;
    """,
    # 4: what a rollback needs besides the snapshot: the source of every applied revision (the
    #    checkout may no longer hold it), the post-image fingerprint of every snapshotted table
    #    (keys and per-column hashes right after the revision ran, in tables named
    #    dbrollback._dbrb_fp_*), and the schema before each upgrade run.
    """
    CREATE TABLE dbrollback.revision_sources (
        revision         text NOT NULL,
        sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
        path             text NOT NULL,
        source           text NOT NULL,
        first_run_id     bigint REFERENCES dbrollback.runs (id),
        first_applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        last_run_id      bigint REFERENCES dbrollback.runs (id),
        last_applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (revision, sha256)
    );
    CREATE TABLE dbrollback.fingerprints (
        id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id         bigint NOT NULL REFERENCES dbrollback.runs (id),
        revision       text NOT NULL,
        snapshot_id    text NOT NULL REFERENCES dbrollback.snapshots (id),
        schema_name    text NOT NULL,
        table_name     text NOT NULL,
        status         text NOT NULL CHECK (status IN ('taken', 'no_key', 'table_gone')),
        fp_table       text UNIQUE,
        key_columns    text[] NOT NULL DEFAULT '{}',
        hashed_columns jsonb NOT NULL DEFAULT '{}',
        column_types   jsonb NOT NULL DEFAULT '{}',
        algorithm      text NOT NULL,
        row_count      bigint,
        bytes          bigint,
        created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
        note           text,
        CONSTRAINT fingerprints_table_iff_taken CHECK ((status = 'taken') = (fp_table IS NOT NULL)),
        UNIQUE (snapshot_id, schema_name, table_name)
    );
    CREATE TABLE dbrollback.run_schemas (
        run_id      bigint PRIMARY KEY REFERENCES dbrollback.runs (id),
        captured_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        format      text NOT NULL,
        tables      jsonb NOT NULL,
        schema      jsonb NOT NULL
    );
    """,
    # 5: rollback runs, and which upgrade run each one reverted (a run is reverted at most once;
    #    the column is set in the rollback's own transaction, so it is set iff the rollback committed).
    """
    ALTER TABLE dbrollback.runs DROP CONSTRAINT runs_direction_check;
    ALTER TABLE dbrollback.runs ADD CONSTRAINT runs_direction_check
        CHECK (direction IN ('upgrade', 'downgrade', 'rollback'));
    ALTER TABLE dbrollback.runs ADD COLUMN reverts_run_id bigint REFERENCES dbrollback.runs (id);
    CREATE UNIQUE INDEX runs_reverted_once ON dbrollback.runs (reverts_run_id)
        WHERE reverts_run_id IS NOT NULL;
    """,
    # 6: values a rollback saved before its downgrade dropped their columns, per revision (the one
    #    whose downgrade dropped them), so a later `upgrade` of that revision puts them back. A row
    #    is inserted in the rollback's transaction and consumed (restored or skipped) in the
    #    re-applied revision's transaction, so it is consumed at most once.
    """
    CREATE TABLE dbrollback.saved_values (
        id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        snapshot_id        text NOT NULL REFERENCES dbrollback.snapshots (id),
        rollback_run_id    bigint NOT NULL REFERENCES dbrollback.runs (id),
        revision           text NOT NULL,
        schema_name        text NOT NULL,
        table_name         text NOT NULL,
        columns            text[] NOT NULL CHECK (cardinality(columns) > 0),
        key_columns        text[] NOT NULL CHECK (cardinality(key_columns) > 0),
        created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
        outcome            text CHECK (outcome IN ('restored', 'skipped')),
        restored_by_run_id bigint REFERENCES dbrollback.runs (id),
        restored_at        timestamptz,
        restored_rows      bigint,
        missing_rows       bigint,
        CONSTRAINT saved_values_consumed_once
            CHECK ((outcome IS NULL) = (restored_by_run_id IS NULL)
                   AND (outcome IS NULL) = (restored_at IS NULL))
    );
    CREATE INDEX saved_values_pending ON dbrollback.saved_values (revision) WHERE outcome IS NULL;
    """,
    # 7: fingerprints also hash the columns a revision added (column -> hash column in fp_table), so
    #    a rollback whose downgrade drops them counts as lost only the values written since; rows
    #    fingerprinted before have '{}' here, and a rollback counts every value in them (upper bound).
    """
    ALTER TABLE dbrollback.fingerprints ADD COLUMN added_columns jsonb NOT NULL DEFAULT '{}';
    """,
    # 8: `rollback --batched`: per table, the rows whose values are put back after the rollback's
    #    transaction committed, in batches of their own (work_table holds key, pre-image values and
    #    the hash each value had right after the downgrade); done_n is the resume point;
    #    rollback_report is the rollback's report as its transaction committed (before the batches).
    """
    CREATE TABLE dbrollback.rollback_fills (
        rollback_run_id bigint NOT NULL REFERENCES dbrollback.runs (id),
        position        int NOT NULL,
        table_schema    text NOT NULL,
        table_name      text NOT NULL,
        work_table      text NOT NULL,
        key_columns     text[] NOT NULL,
        columns         text[] NOT NULL,
        column_types    text[] NOT NULL,
        total_rows      bigint NOT NULL,
        done_n          bigint NOT NULL DEFAULT 0,
        restored_rows   bigint NOT NULL DEFAULT 0,
        kept_rows       bigint NOT NULL DEFAULT 0,
        conflict_examples jsonb NOT NULL DEFAULT '[]',
        rollback_report jsonb NOT NULL DEFAULT '{}',
        verified        boolean NOT NULL DEFAULT true,
        batches         bigint NOT NULL DEFAULT 0,
        batch_rows      int NOT NULL DEFAULT 10000,
        finished_at     timestamptz,
        PRIMARY KEY (rollback_run_id, position)
    );
    """,
    # 9: expand/contract. A backfill walks a table in primary-key order, one short transaction per
    #    batch; last_key (the key's values as text, cast back with key_types) commits with each
    #    batch, so a killed backfill resumes after it and never redoes a committed batch.
    #    An expansion is one helper call in a revision (dbrollback.expand) that is open until
    #    contracted or aborted; spec holds everything contract and abort need.
    """
    CREATE TABLE dbrollback.backfills (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        table_schema  text NOT NULL,
        table_name    text NOT NULL,
        set_sql       text NOT NULL,
        where_sql     text,
        key_columns   text[] NOT NULL,
        key_types     text[] NOT NULL,
        last_key      text[],
        rows_updated  bigint NOT NULL DEFAULT 0,
        rows_scanned  bigint NOT NULL DEFAULT 0,
        batches       bigint NOT NULL DEFAULT 0,
        batch_rows    integer,
        status        text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'done', 'failed', 'cancelled')),
        error         text,
        actor         text,
        created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at   timestamptz
    );
    CREATE TABLE dbrollback.expansions (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        revision      text,
        run_id        bigint,
        kind          text NOT NULL,
        table_schema  text NOT NULL,
        table_name    text NOT NULL,
        spec          jsonb NOT NULL,
        status        text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'contracted', 'aborted')),
        backfill_id   bigint REFERENCES dbrollback.backfills (id),
        created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        closed_at     timestamptz,
        closed_by     text
    );
    CREATE INDEX expansions_open ON dbrollback.expansions (revision) WHERE status = 'open';
    """,
]


def database_identity(conn: psycopg.Connection) -> str | None:
    """This database's dbrollback identity, or None when it has no (or an older) catalog."""
    row = conn.execute("SELECT to_regclass('dbrollback.identity') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return None
    found = conn.execute("SELECT id::text FROM dbrollback.identity").fetchone()
    return str(found[0]) if found else None


LATEST_VERSION = len(CATALOG_MIGRATIONS)


def catalog_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('dbrollback.catalog_version') IS NOT NULL").fetchone()
    return bool(row and row[0])


def installed_version(conn: psycopg.Connection) -> int:
    if not catalog_exists(conn):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM dbrollback.catalog_version").fetchone()
    return int(row[0]) if row else 0


def ensure_catalog(conn: psycopg.Connection) -> int:
    """Create or upgrade the catalog to LATEST_VERSION; returns the version now installed."""
    if installed_version(conn) == LATEST_VERSION:
        return LATEST_VERSION
    try:
        return _migrate_catalog(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        from dbrollback.errors import ConfigError

        raise ConfigError(
            f"Cannot create the {SCHEMA} catalog schema: {str(exc).strip()}. Grant this role CREATE "
            f"on the database once, or have an owner run `CREATE SCHEMA {SCHEMA} AUTHORIZATION <role>`."
        ) from None


def _migrate_catalog(conn: psycopg.Connection) -> int:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", CATALOG_LOCK)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        current = installed_version(conn)
        if current > LATEST_VERSION:
            from dbrollback.errors import RefusedForSafety

            raise RefusedForSafety(
                f"The dbrollback catalog in this database is version {current}, newer than this "
                f"dbrollback ({__version__}) understands ({LATEST_VERSION}); upgrade dbrollback."
            )
        for version in range(current + 1, LATEST_VERSION + 1):
            conn.execute(CATALOG_MIGRATIONS[version - 1].encode())
            conn.execute(
                "INSERT INTO dbrollback.catalog_version (version, tool_version) VALUES (%s, %s)",
                (version, __version__),
            )
    return LATEST_VERSION
