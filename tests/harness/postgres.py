"""PostgreSQL for the tests: a private server started once per session, and throwaway databases on it.

Without MCUFLEET_TEST_POSTGRES_DSN the harness never touches a server that happens to run on the
machine: on first use it runs `initdb` into a fresh temporary directory, starts `postgres` on a free
loopback port with its unix socket in that directory (fsync off: the data is thrown away), and
`stop_private_server` (called by tests/conftest.py at the end of the session) stops it and removes
the directory. With the variable set, databases are created on that external server instead.

initdb and postgres refuse to run as root. Under root the cluster is created and run as `nobody`:
that account exists on every Debian system (base-passwd), so nothing is created or changed on the
machine, and it owns nothing else, so the throwaway cluster can read or damage nothing else.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import psycopg
from psycopg import conninfo, sql

from tests.harness.ports import free_tcp_port

DSN_VARIABLE: Final = "MCUFLEET_TEST_POSTGRES_DSN"
SUPERUSER: Final = "postgres"
UNPRIVILEGED_USER: Final = "nobody"
START_TIMEOUT_S: Final = 60
STOP_TIMEOUT_S: Final = 30
# Debian installs the server binaries off PATH, one directory per major version.
DEBIAN_BIN_GLOB: Final = "/usr/lib/postgresql/*/bin"
# Durability buys nothing for a cluster deleted at the end of the session; these make it quick.
SERVER_OPTIONS: Final = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=32MB",
    "max_connections=200",
)


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL is not installed, did not start or cannot be reached; the message says what to do."""


def find_server_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres: on PATH, else Debian's newest version."""
    on_path = [shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")]
    if all(on_path) and len({Path(str(found)).parent for found in on_path}) == 1:
        return Path(str(on_path[0])).parent
    candidates = [
        Path(directory)
        for directory in glob.glob(DEBIAN_BIN_GLOB)
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))
    ]
    if not candidates:
        raise DatabaseUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            f"{DEBIAN_BIN_GLOB}: run `make test` (it installs them) or apt-get install postgresql"
        )
    # The newest major version; a directory not named by a number sorts first.
    return max(
        candidates, key=lambda directory: (directory.parent.name.isdigit(), directory.parent.name.zfill(8))
    )


class PostgresServer:
    """One throwaway PostgreSQL cluster in its own temporary directory, on a free loopback port."""

    def __init__(self) -> None:
        """Prepare (not start) a cluster; under root it will belong to and run as `nobody`."""
        self.bin_dir = find_server_binaries()
        self.host = "127.0.0.1"
        self.port = free_tcp_port(self.host)
        # Not pytest's tmp_path: /tmp/pytest-of-root is private to root, and `nobody` must reach it.
        self.workdir = Path(tempfile.mkdtemp(prefix="mcufleet-postgres-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._account = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
        self.started = False

    @property
    def dsn(self) -> str:
        """The superuser DSN of this cluster's maintenance database."""
        return conninfo.make_conninfo(
            host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", connect_timeout=5
        )

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections (pg_ctl -w)."""
        if self._account is not None:
            os.chown(self.workdir, self._account.pw_uid, self._account.pw_gid)
        self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # pg_ctl hands these to a shell, hence the quoting.
        options = " ".join(
            [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-k {shlex.quote(str(self.workdir))}"]
            + [f"-c {option}" for option in SERVER_OPTIONS]
        )
        self._run(
            "pg_ctl",
            "start",
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            f"--pgdata={self.data_dir}",
            f"--log={self.log_path}",
            f"--options={options}",
        )
        self.started = True

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) and delete its directory."""
        try:
            if self.started:
                self._run(
                    "pg_ctl",
                    "stop",
                    "--wait",
                    f"--timeout={STOP_TIMEOUT_S}",
                    "--mode=fast",
                    f"--pgdata={self.data_dir}",
                )
                self.started = False
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far (shown when it does not start)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, program: str, *arguments: str) -> None:
        account = self._account
        result = subprocess.run(
            [str(self.bin_dir / program), *arguments],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.workdir,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            timeout=START_TIMEOUT_S + 30,
        )
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"{program} {' '.join(arguments)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log()}"
            )


class SessionServer:
    """The one private server of a test session: started on first use, stopped at the session's end."""

    def __init__(self) -> None:
        """No server yet: tests that need none never pay for one."""
        self._server: PostgresServer | None = None
        self._lock = threading.Lock()

    def get(self) -> PostgresServer:
        """The running server, started now if this is the first use."""
        with self._lock:
            if self._server is None:
                server = PostgresServer()
                try:
                    server.start()
                except BaseException:
                    server.stop()
                    raise
                self._server = server
            return self._server

    def stop(self) -> None:
        """Stop the server if one was started."""
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                server.stop()


SESSION_SERVER: Final = SessionServer()


def stop_private_server() -> None:
    """Stop this session's own server if one was started (tests/conftest.py calls it at the end)."""
    SESSION_SERVER.stop()


def server_dsn() -> str:
    """The DSN of the server the tests may create databases on: external if configured, else ours."""
    external = os.environ.get(DSN_VARIABLE)
    return external if external else SESSION_SERVER.get().dsn


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a uniquely named database, yield its DSN, and drop it afterwards."""
    admin_dsn = server_dsn()
    name = f"mcufleet_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {admin_dsn} ({error}); unset {DSN_VARIABLE} to let the tests "
            "start their own server, or point it at a server where they may create databases"
        ) from error
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield conninfo.make_conninfo(admin_dsn, dbname=name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
