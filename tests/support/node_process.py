"""A real ``matmine-node serve`` process for tests: started, read until it listens, drained."""

from __future__ import annotations

import re
import subprocess
import sys
from contextlib import suppress
from functools import partial
from pathlib import Path

import trio

NODE = [sys.executable, "-m", "node.cli"]


async def start_node(nursery: trio.Nursery, port: int, data: Path, *flags: str) -> trio.Process:
    """``matmine-node serve`` on 127.0.0.1:``port`` with its chain in ``data``, once it
    listens; ``flags`` are more ``serve`` flags (``--start-difficulty``, ...)."""
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*NODE, "serve", "--port", str(port), "--data-dir", str(data), *flags],
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    assert proc.stderr is not None
    seen = b""
    with trio.fail_after(60):
        while re.search(rb"listening on 127\.0\.0\.1:\d+", seen) is None:
            chunk = await proc.stderr.receive_some(4096)
            assert chunk, f"matmine-node exited early: {seen.decode()}"
            seen += chunk
    nursery.start_soon(drain, proc)
    return proc


async def drain(proc: trio.Process) -> None:
    """Read the node's stderr until it closes (so the node never blocks on a full pipe)."""
    assert proc.stderr is not None
    with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        while await proc.stderr.receive_some(4096):
            pass
