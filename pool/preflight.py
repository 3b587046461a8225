"""Checks before the pool creates anything: every port it will listen on is free and its
data directory is writable. Each failure is one :class:`ConfigError` line naming the port
(and its listener) or the path, so ``matmine-pool serve`` exits 2 with nothing created."""

from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path

from pool.config import ConfigError, PoolConfig


def listeners(config: PoolConfig) -> list[tuple[str, str, int]]:
    """``(name, host, port)`` of each listener the config asks for (port 0 = any: skipped)."""
    wanted = [("stratum", config.stratum.host, config.stratum.port)]
    if config.stratum.tls:
        wanted.append(("stratum TLS", config.stratum.host, config.stratum.tls_port))
    if config.http.enabled:
        wanted.append(("HTTP", config.http.host, config.http.port))
    return [w for w in wanted if w[2] != 0]


def check_port_free(name: str, host: str, port: int) -> None:
    """Bind ``host:port`` for a moment (as the real listener will, with SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{name} listener: cannot resolve host {host!r}: {exc}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = "is in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc.strerror}"
                raise ConfigError(
                    f"{name} port {port} on {host} {reason}"
                    " (another pool running? pick another port)"
                ) from None


def check_writable_dir(path: Path) -> None:
    """``path`` is (or can be made) a directory this process can write a file into."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data dir {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"data dir {path} is not writable: {exc.strerror}") from None


def preflight(config: PoolConfig) -> None:
    """Raise :class:`ConfigError` on the first thing that would stop the pool from starting."""
    check_writable_dir(config.data_path)
    for name, host, port in listeners(config):
        check_port_free(name, host, port)
