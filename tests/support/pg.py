"""A throw-away PostgreSQL server for tests: one per pytest session, a database per test.

The server is the machine's own PostgreSQL (``initdb``/``pg_ctl`` from ``$MATMINE_PG_BIN``,
PATH or ``/usr/lib/postgresql/*/bin``), its data directory in a fresh temporary folder,
listening on 127.0.0.1 on a free port with trust authentication. PostgreSQL refuses to run
as root, so under euid 0 it runs as the ``postgres`` user through ``runuser``.

When the server cannot be started the tests that need it are skipped with the reason,
unless ``MATMINE_REQUIRE_POSTGRES`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

REQUIRE_ENV = "MATMINE_REQUIRE_POSTGRES"
BIN_ENV = "MATMINE_PG_BIN"  # a folder with initdb and pg_ctl, to pick one install
START_TIMEOUT_S = 60

# Settings for a fast, disposable test server. fsync off loses data only on power loss
# or a kernel crash, never on a killed server or client process, which is what the
# tests do; COMMIT still waits for the WAL write (synchronous_commit stays on).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


class PostgresUnavailable(RuntimeError):
    """The machine cannot run a PostgreSQL server for the tests (the message says why)."""


def find_bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: ``$MATMINE_PG_BIN`` if set, else PATH,
    else the newest Debian install."""
    chosen = os.environ.get(BIN_ENV)
    if chosen:
        if not (Path(chosen) / "initdb").exists():
            raise PostgresUnavailable(f"{BIN_ENV}={chosen} holds no initdb")
        return Path(chosen)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (no initdb on PATH nor in"
            " /usr/lib/postgresql/*/bin); install them with `apt-get install -y postgresql`"
        )
    newest = max(candidates, key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    return Path(newest).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; ``start``/``stop`` may be repeated."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no `postgres` user to run the server as"
                ) from None
            self.as_user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="matmine-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{log}"
            )

    def start(self) -> None:
        """Start the server (waits until it accepts connections)."""
        options = " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())
        options += f" -c port={self.port} -c unix_socket_directories={self.root}"
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            options,
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` ends sessions, ``immediate`` is a crash."""
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")
            self.running = False

    def destroy(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?connect_timeout=5"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


_SERVER_KEY = pytest.StashKey["PostgresServer | PostgresUnavailable"]()


def _start_server() -> PostgresServer:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(f"psycopg is not installed ({exc})") from None
    server = PostgresServer()
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


def postgres_server(config: pytest.Config) -> PostgresServer:
    """The session's server, started on first use and destroyed when the session ends.

    Skips the calling test if it cannot run, or fails it when ``MATMINE_REQUIRE_POSTGRES``
    is set. A failed start is remembered, so it is tried once per session.
    """
    found = config.stash.get(_SERVER_KEY, None)
    if found is None:
        try:
            found = _start_server()
            config.add_cleanup(found.destroy)
        except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
            found = PostgresUnavailable(str(exc))
        config.stash[_SERVER_KEY] = found
    if isinstance(found, PostgresUnavailable):
        reason = f"PostgreSQL unavailable: {found}"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason} ({REQUIRE_ENV} is set)", pytrace=False)
        pytest.skip(reason)
    if not found.running:  # a test stopped it and could not restart it
        found.start()
    return found


def postgres_database(config: pytest.Config) -> str:
    """URL of a fresh database on the session's server."""
    return postgres_server(config).create_database()


BACKENDS = ("sqlite", "postgres")


def ledger_target(backend: str, config: pytest.Config, tmp_path: Path) -> str:
    """Where a test's ledger lives: a SQLite file path, or the URL of a fresh database."""
    if backend == "sqlite":
        return str(tmp_path / "pool.sqlite")
    if backend == "postgres":
        return postgres_database(config)
    raise ValueError(f"unknown ledger backend {backend!r}")
