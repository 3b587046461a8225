"""A real ``matmine-node`` (RPC chain) killed and restarted under a running pool: the chain
gauge goes to 0 and /healthz answers degraded while it is down, miners are told once, and
both come back by themselves when the node is back."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pg import free_port

NODE = [sys.executable, "-m", "node.cli"]


async def start_node(nursery: trio.Nursery, port: int, data: Path) -> trio.Process:
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*NODE, "serve", "--port", str(port), "--data-dir", str(data)],
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
    assert proc.stderr is not None
    with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        while await proc.stderr.receive_some(4096):
            pass


async def chain_state(client: httpx.AsyncClient) -> tuple[float, int]:
    text = (await client.get("/metrics")).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('matmine_pool_dependency_up{dependency="chain"}')
    )
    return float(line.split()[-1]), (await client.get("/healthz")).status_code


async def wait_for(client: httpx.AsyncClient, want: tuple[float, int]) -> float:
    started = time.monotonic()
    with trio.fail_after(60):
        while await chain_state(client) != want:
            await trio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_killed_node_marks_the_chain_down_then_up(start_pool, tmp_path: Path):
    port = free_port()
    data = tmp_path / "node"
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, port, data)
        pool = await start_pool({"chain.kind": "rpc", "chain.rpc_port": port, "http.enabled": True})
        async with (
            await TestMiner.connect(pool.stratum_port, timeout=60) as miner,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.http_port}") as client,
        ):
            await miner.login(new_address() + ".chain")
            assert await chain_state(client) == (1, 200)
            node.send_signal(signal.SIGKILL)
            await node.wait()
            noticed = await wait_for(client, (0, 503))
            assert "chain" in (await client.get("/healthz")).json()["down"]
            node = await start_node(nursery, port, data)
            recovered = await wait_for(client, (1, 200))
            with trio.fail_after(30):
                while sum("chain" in getattr(m, "text", "") for m in miner.messages) < 2:
                    await miner._read()
            notices = [m.text for m in miner.messages if "chain" in getattr(m, "text", "")]
            assert len(notices) == 2 and "cannot reach" in notices[0] and "back" in notices[1]
            assert not miner.closed
            print(
                f"\n[node SIGKILL] chain marked down {noticed:.2f} s after the kill, up "
                f"{recovered:.2f} s after the restart"
            )
        node.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await node.wait()
        nursery.cancel_scope.cancel()
