"""Typed errors. Each class carries its exit code; the CLI maps them in one place.

Exit-code contract (all commands):
0 success · 1 a check found problems · 2 usage, configuration or connection error ·
3 refused for safety · 4 a migration or restore failed and was rolled back.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_FAILED = 4


class DbrollbackError(Exception):
    """Base class: a message for people plus structured fields for --json."""

    exit_code = EXIT_USAGE
    kind = "error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, **self.fields}


class ConfigError(DbrollbackError):
    kind = "config"


class ConnectionFailed(DbrollbackError):
    kind = "connection"


class UnknownRevision(DbrollbackError):
    kind = "unknown_revision"


class AlembicConfigMissing(ConfigError):
    kind = "alembic_config_missing"


class EmbeddedServerError(DbrollbackError):
    kind = "embedded_server"


class LockHeld(DbrollbackError):
    exit_code = EXIT_REFUSED
    kind = "lock_held"


class RefusedForSafety(DbrollbackError):
    exit_code = EXIT_REFUSED
    kind = "refused"


class MigrationFailed(DbrollbackError):
    exit_code = EXIT_FAILED
    kind = "migration_failed"


class CheckFailed(DbrollbackError):
    exit_code = EXIT_CHECK_FAILED
    kind = "check_failed"


class SnapshotError(DbrollbackError):
    """A snapshot cannot be captured, stored or read (missing table, unknown id, bad file)."""

    kind = "snapshot"


class SnapshotCorrupt(SnapshotError):
    """A snapshot file is missing, truncated or does not match its manifest's sha256.

    Commands that would act on the data (restore, rollback) refuse with exit 3; commands whose job
    is to report (verify, snapshot verify) turn it into exit 1.
    """

    exit_code = EXIT_REFUSED
    kind = "snapshot_corrupt"


class StoreUnavailable(SnapshotError):
    """The snapshot store cannot be reached or written; nothing that needs a snapshot may proceed."""

    exit_code = EXIT_REFUSED
    kind = "store_unavailable"


class RestoreFailed(DbrollbackError):
    """A restore failed and its transaction was rolled back: the live table is unchanged."""

    exit_code = EXIT_FAILED
    kind = "restore_failed"
