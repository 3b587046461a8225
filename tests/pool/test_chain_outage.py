"""A real ``matmine-node`` (RPC chain) killed and restarted under a running pool: the chain
gauge goes to 0 and /healthz answers degraded while it is down, miners are told once, and
both come back by themselves when the node is back."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import trio

from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.node_process import start_node
from tests.support.pg import free_port


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
