"""A network namespace whose loopback is a rate-limited link, for benchmarks.

:class:`ShapedNamespace` creates ``ip netns add NAME``, brings its ``lo`` up and shapes
it with ``tc``: an HTB root whose class ``1:10`` (rate = ceil = the link rate) holds a
``tbf`` (same rate, ``burst``, ``latency``); a ``u32`` filter sends every packet from
127.0.0.1 to 127.0.0.1 there. Everything else (e.g. a client bound to 127.0.0.2) goes
through the unshaped class ``1:20``, so a bench can keep its own traffic (a customer's
upload, metric scrapes) off the measured link. :func:`shaped_bytes` reads what crossed
the link (``tc -s class show``), from inside the namespace.

The namespace is deleted on every exit of the ``with`` block, on SIGTERM/SIGHUP (turned
into ``SystemExit``) and at interpreter exit; :func:`remove_stale` deletes the empty ones
of benches that were SIGKILLed. Needs root and ``ip``/``tc`` (iproute2):
:func:`require_root_and_tc` exits with one line otherwise.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

SHAPED_CLASS = "1:10"
LOOP_HOST = "127.0.0.1"
"""Both ends of the shaped link."""
SIDE_HOST = "127.0.0.2"
"""Bind a client here to stay off the shaped link (its packets are not 127.0.0.1 → 127.0.0.1)."""


def require_root_and_tc() -> None:
    """Exit (status 2) with one line unless we are root with ``ip`` and ``tc`` on PATH."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} not found (apt-get install -y iproute2)")
    if os.geteuid() != 0:
        sys.exit("error: the shaped-link bench needs root (ip netns, tc); run it as root")


def _run(args: Sequence[str]) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def parse_rate(text: str) -> float:
    """``"100mbit"``, ``"1gbit"``, ``"500kbit"`` → bits per second."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", text.strip().lower())
    if match is None:
        raise ValueError(f"bad rate {text!r}: use e.g. 100mbit or 1gbit")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def shaped_bytes() -> int:
    """Bytes sent through the shaped class so far (call inside the namespace)."""
    text = _run(["tc", "-s", "class", "show", "dev", "lo", "classid", SHAPED_CLASS])
    match = re.search(r"Sent (\d+) bytes", text)
    if match is None:
        raise RuntimeError(f"no shaped class {SHAPED_CLASS} on lo: {text.strip()!r}")
    return int(match.group(1))


def in_shaped_namespace() -> bool:
    """Is there a shaped class on this namespace's ``lo`` (i.e. are we inside one)?"""
    if shutil.which("tc") is None:
        return False
    try:
        shaped_bytes()
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return False
    return True


def remove_stale(prefix: str = "mmbench-") -> list[str]:
    """Delete namespaces ``PREFIX<pid>`` left by a bench that was SIGKILLed: its pid is gone
    and no process runs in it any more. Returns the names deleted."""
    removed = []
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split(" ")[0]
        pid = name.removeprefix(prefix)
        if name == pid or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        if _run(["ip", "netns", "pids", name]).strip():
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        removed.append(name)
    return removed


class ShapedNamespace:
    """``with ShapedNamespace("100mbit") as ns: subprocess.run(ns.exec(cmd))``."""

    def __init__(self, rate: str, *, name: str | None = None, latency: str = "50ms") -> None:
        self.rate = rate
        self.bits = parse_rate(rate)
        self.name = name or f"mmbench-{os.getpid()}"
        self.latency = latency
        # tbf needs a bucket of at least one (GSO-sized, up to 64 KiB) packet; 10 ms of rate
        self.burst = max(256 * 1024, int(self.bits / 8 * 0.01))
        self._previous: dict[int, object] = {}
        self._created = False

    def exec(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def __enter__(self) -> ShapedNamespace:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        atexit.register(self.delete)
        try:
            self._create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        self._created = True
        inside = ["ip", "netns", "exec", self.name]
        lo = ["dev", "lo"]
        rate = ["rate", self.rate, "ceil", self.rate]
        side = ["rate", "100gbit", "ceil", "100gbit"]
        tbf = ["tbf", "rate", self.rate, "burst", str(self.burst), "latency", self.latency]
        match = ["match", "ip", "src", f"{LOOP_HOST}/32", "match", "ip", "dst", f"{LOOP_HOST}/32"]
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["tc", "qdisc", "add", *lo, "root", "handle", "1:", "htb", "default", "20"],
            ["tc", "class", "add", *lo, "parent", "1:", "classid", SHAPED_CLASS, "htb", *rate],
            ["tc", "class", "add", *lo, "parent", "1:", "classid", "1:20", "htb", *side],
            ["tc", "qdisc", "add", *lo, "parent", SHAPED_CLASS, "handle", "10:", *tbf],
            ["tc", "filter", "add", *lo, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             *match, "flowid", SHAPED_CLASS],
        ):  # fmt: skip
            _run([*inside, *command])

    def delete(self) -> None:
        """Remove the namespace (idempotent; processes still in it keep running)."""
        if self._created:
            self._created = False
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        atexit.unregister(self.delete)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")
