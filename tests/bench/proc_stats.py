"""What the pool benchmarks read of processes and pools: free ports, RSS and CPU time from
``/proc``, a histogram's mean from ``/metrics``, a pool listening."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) of process ``pid``, or of its thread ``tid``, so far."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a pool's check processes)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def children_cpu_seconds(pid: int) -> float:
    total = 0.0
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def histogram_mean(metrics: str, name: str) -> tuple[float, float]:
    def value(suffix: str) -> float:
        m = re.search(rf"^{name}_{suffix} (\S+)$", metrics, re.M)
        return float(m.group(1)) if m else float("nan")

    total, count = value("sum"), value("count")
    return (total / count if count else float("nan")), count


def wait_listening(pool: subprocess.Popen, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool.poll() is not None:
            err = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"pool exited with {pool.returncode} during startup:\n{err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise SystemExit(f"pool did not listen on {port} within {timeout} s")
