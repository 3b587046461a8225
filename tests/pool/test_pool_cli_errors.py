"""``matmine-pool serve`` as an operator meets it: a busy port or an unwritable data dir is one
line naming the port or path, exit 2, nothing created; SIGTERM stops a pool that is still
waiting for its node; every program answers ``--version``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.version import package_version


def serve(*args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pool.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("listener", ["stratum", "http"])
def test_a_busy_port_is_one_line_and_nothing_is_created(tmp_path: Path, listener: str):
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = free_port()
        stratum, http = (port, other) if listener == "stratum" else (other, port)
        proc = serve(
            "--data-dir", str(data), "--stratum-port", str(stratum), "--http-port", str(http)
        )
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    name = "stratum" if listener == "stratum" else "HTTP"
    assert f"{name} port {port}" in lines[0] and "in use" in lines[0]
    assert not data.exists() or not any(data.iterdir()), "created files before failing"


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A directory this process cannot write into: a read-only mount under root (root
    ignores file modes), mode 0555 otherwise."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "matmine-ro", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_an_unwritable_data_dir_is_one_line(readonly_dir: Path):
    proc = serve("--data-dir", str(readonly_dir), "--stratum-port", "0", "--no-http")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and str(readonly_dir) in lines[0] and "not writable" in lines[0], stderr


@pytest.mark.slow
def test_sigterm_stops_a_pool_waiting_for_an_unreachable_node(tmp_path: Path):
    proc = serve(
        "--data-dir",
        str(tmp_path / "data"),
        "--stratum-port",
        "0",
        "--no-http",
        "--chain",
        f"rpc://127.0.0.1:{free_port()}",
    )
    try:
        deadline = time.monotonic() + 60
        seen = ""
        assert proc.stderr is not None
        while "waiting for the chain" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert "waiting for the chain" in seen, seen
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize("program", ["pool.cli", "node.cli", "worker.cli"])
def test_every_program_has_version(program: str):
    done = subprocess.run(
        [sys.executable, "-m", program, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().endswith(package_version())
    assert package_version() != "unknown" or shutil.which("matmine-pool") is None
