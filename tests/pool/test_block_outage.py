"""Found blocks are never lost to a node hiccup (issue 11, SPEC §12.11).

A real ``matmine-node`` over RPC is stopped (SIGSTOP) or killed while a miner finds blocks:
each block is kept "submitting" in the ledger with its submission and resubmitted; it
reaches the chain once the node is back and is credited by PPLNS; one the chain has moved
past ends "rejected" (stale), never pending for ever; a pool restarted with a pending
block resubmits it. Share difficulty 1e-5 makes every ticket a share and network
difficulty 1e-4 about 15% of tickets blocks (as in test_pool_blocks): each share scores
0.1 of the PPLNS window, so a block credits its finders in proportion to their shares.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pool.app import PoolHandle, run_pool
from pool.chain.rpc import RpcChain
from pool.ledger.base import CREDITED, REJECTED, SUBMITTING, BlockRecord
from protocol.address import new_address
from tests.support.miner import Candidate, TestMiner
from tests.support.node_process import start_node
from tests.support.pg import free_port
from tests.support.pools import make_config

FEE_BPS = 250
SETTINGS = {
    "pool.start_difficulty": 1e-5,
    "pool.fee_bps": FEE_BPS,
    "chain.kind": "rpc",
    "chain.rpc_timeout": 1.0,
    "chain.submit_timeout": 3.0,
    "chain.resubmit_interval": 0.2,
    "http.enabled": True,
}
NODE_FLAGS = ("--start-difficulty", "1e-4", "--min-difficulty", "1e-6", "--maturity", "2")


async def ledger(pool: PoolHandle, fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args, limiter=pool.ledger_limiter)


def blocks_metric(pool: PoolHandle, status: str) -> float | None:
    return pool.registry.get_sample_value("matmine_pool_blocks_total", {"status": status})


def gauge(pool: PoolHandle, name: str) -> float | None:
    return pool.registry.get_sample_value(name)


async def pick(miner: TestMiner, count: int, block: bool) -> list[Candidate]:
    """``count`` candidates of the newest job that are (or are not) blocks."""
    found: list[Candidate] = []
    with trio.fail_after(30):
        while len(found) < count:
            found += [c for c in await miner.find(miner.job) if c.is_block == block]
    return found[:count]


async def plain_shares(a: TestMiner, b: TestMiner) -> None:
    """A submits 3 shares that are not blocks, B 1."""
    for miner, count in ((a, 3), (b, 1)):
        for c in await pick(miner, count, block=False):
            r = await miner.submit(c)
            assert r.error is None and r.result.block is None


async def submit_block(b: TestMiner) -> float:
    """B submits a block while the node does not answer: a good share, no block yet.
    Returns the seconds the pool took to answer."""
    (winner,) = await pick(b, 1, block=True)
    started = time.monotonic()
    r = await b.submit(winner)
    assert r.error is None, r.error  # the share is stored and acknowledged ...
    assert r.result.block is None  # ... but the block is not on chain yet
    return time.monotonic() - started


async def settled(pool: PoolHandle, block_id: int, timeout: float = 60) -> BlockRecord:
    """The block once it is no longer "submitting"."""
    with trio.fail_after(timeout):
        while (block := await ledger(pool, pool.ledger.block, block_id)).status == SUBMITTING:
            await trio.sleep(0.05)
    return block


def expected_credits(reward: int, shares: dict[str, int]) -> dict[str, int]:
    """PPLNS with the whole window short of N: everything after the fee, by share count."""
    distributable = reward - reward * FEE_BPS // 10_000
    total = sum(shares.values())
    return {address: distributable * n // total for address, n in shares.items()}


async def api_blocks(pool: PoolHandle) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.http_port}") as client:
        return (await client.get("/api/blocks")).json()


async def assert_api_agrees_with_metrics(pool: PoolHandle) -> None:
    """Every block the API calls rejected is counted rejected, and so on."""
    statuses = [b["status"] for b in await api_blocks(pool)]
    assert statuses.count("rejected") == blocks_metric(pool, "rejected")
    on_chain = sum(s in ("found", "credited", "confirmed") for s in statuses)
    assert on_chain == blocks_metric(pool, "found")
    assert statuses.count("orphaned") == blocks_metric(pool, "orphaned") == 0
    assert statuses.count("submitting") == gauge(pool, "matmine_pool_block_submissions_pending")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_block_found_while_the_node_is_stopped_reaches_the_chain(start_pool, tmp_path: Path):
    port = free_port()
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, port, tmp_path / "node", *NODE_FLAGS)
        pool = await start_pool({**SETTINGS, "chain.rpc_port": port})
        addr_a, addr_b = new_address(), new_address()
        async with (
            await TestMiner.connect(pool.stratum_port, timeout=60) as a,
            await TestMiner.connect(pool.stratum_port, timeout=60) as b,
        ):
            await a.login(addr_a + ".a1")
            await b.login(addr_b + ".b1")
            await plain_shares(a, b)
            node.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                answered = await submit_block(b)
                (block,) = await ledger(pool, pool.ledger.blocks, 10)
                assert block.status == SUBMITTING and block.address == addr_b
                (pending,) = await ledger(pool, pool.ledger.pending_submissions)
                assert pending.block.id == block.id and pending.attempts >= 1
                assert blocks_metric(pool, "submit_failed") == 1
                assert blocks_metric(pool, "rejected") == blocks_metric(pool, "found") == 0
                with trio.fail_after(30):
                    while gauge(pool, "matmine_pool_block_submissions_pending") != 1:
                        await trio.sleep(0.05)
                await assert_api_agrees_with_metrics(pool)
                await trio.sleep(3)  # a longer outage: still kept, never given up
                assert (await ledger(pool, pool.ledger.block, block.id)).status == SUBMITTING
                age = gauge(pool, "matmine_pool_template_age_seconds")
                assert age is not None and age >= time.monotonic() - stopped - 0.5
            finally:
                node.send_signal(signal.SIGCONT)
            back = time.monotonic()
            block = await settled(pool, block.id)
            took = time.monotonic() - back
            assert block.status == CREDITED
            assert (await pool.chain.block_status(block.hash)).state == "pending"
            credits = await ledger(pool, pool.ledger.block_credits, block.id)
            assert credits == expected_credits(block.reward, {addr_a: 3, addr_b: 2})
            assert blocks_metric(pool, "found") == 1 and blocks_metric(pool, "rejected") == 0
            with trio.fail_after(30):
                while gauge(pool, "matmine_pool_block_submissions_pending") != 0:
                    await trio.sleep(0.05)
            await assert_api_agrees_with_metrics(pool)
            await pool.chain.devnet_advance(3)  # maturity 2: the reward is paid out
            with trio.fail_after(30):
                while [await pool.chain.balance(x) for x in (addr_a, addr_b)] != [
                    credits[addr_a],
                    credits[addr_b],
                ]:
                    await trio.sleep(0.1)
            age = gauge(pool, "matmine_pool_template_age_seconds")
            assert age is not None and age < 5
            print(
                f"\n[node SIGSTOP] blocks found during the outage: 1, reached the chain: 1; "
                f"share answered after {answered:.1f} s; block accepted and credited "
                f"{took:.2f} s after SIGCONT; paid {credits[addr_a]} + {credits[addr_b]}"
            )
        node.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await node.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_blocks_found_while_the_node_is_dead_one_reaches_the_chain_one_is_stale(
    start_pool, tmp_path: Path
):
    port = free_port()
    data = tmp_path / "node"
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, port, data, *NODE_FLAGS)
        pool = await start_pool({**SETTINGS, "chain.rpc_port": port})
        addr_a, addr_b = new_address(), new_address()
        async with (
            await TestMiner.connect(pool.stratum_port, timeout=60) as a,
            await TestMiner.connect(pool.stratum_port, timeout=60) as b,
        ):
            await a.login(addr_a + ".a1")
            await b.login(addr_b + ".b1")
            await plain_shares(a, b)
            node.send_signal(signal.SIGKILL)
            await node.wait()
            for _ in range(2):  # two blocks on the same parent: only one can make it
                await submit_block(b)
            first, second = sorted(await ledger(pool, pool.ledger.blocks, 10), key=lambda x: x.id)
            assert first.status == second.status == SUBMITTING
            assert first.height == second.height
            assert blocks_metric(pool, "submit_failed") == 2
            node = await start_node(nursery, port, data, *NODE_FLAGS)
            back = time.monotonic()
            first = await settled(pool, first.id)
            took = time.monotonic() - back
            second = await settled(pool, second.id)
            assert first.status == CREDITED
            assert second.status == REJECTED and second.reason is not None
            assert second.reason.startswith("stale")
            assert (await pool.chain.block_status(first.hash)).state == "pending"
            assert (await pool.chain.block_status(second.hash)).state == "unknown"
            credits = await ledger(pool, pool.ledger.block_credits, first.id)
            assert credits == expected_credits(first.reward, {addr_a: 3, addr_b: 2})
            assert await ledger(pool, pool.ledger.block_credits, second.id) == {}
            assert await ledger(pool, pool.ledger.pending_submissions) == []
            assert blocks_metric(pool, "found") == 1 and blocks_metric(pool, "rejected") == 1
            with trio.fail_after(30):
                while gauge(pool, "matmine_pool_block_submissions_pending") != 0:
                    await trio.sleep(0.05)
            await assert_api_agrees_with_metrics(pool)
            statuses = {b["hash"]: b for b in await api_blocks(pool)}
            assert statuses[second.hash.hex()]["reason"] == second.reason
            print(
                f"\n[node SIGKILL] blocks found during the outage: 2, reached the chain: 1, "
                f"rejected stale: 1; first accepted and credited {took:.2f} s after the "
                f"node was back"
            )
        node.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await node.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("chain_moved_on", [False, True], ids=["resubmitted", "stale"])
async def test_a_restarted_pool_resubmits_its_pending_block(tmp_path: Path, chain_moved_on: bool):
    port = free_port()
    data = tmp_path / "node"
    config = make_config(tmp_path / "pool", {**SETTINGS, "chain.rpc_port": port})
    addr_a, addr_b = new_address(), new_address()
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, port, data, *NODE_FLAGS)
        async with trio.open_nursery() as first_run:
            pool = await first_run.start(run_pool, config)
            async with (
                await TestMiner.connect(pool.stratum_port, timeout=60) as a,
                await TestMiner.connect(pool.stratum_port, timeout=60) as b,
            ):
                await a.login(addr_a + ".a1")
                await b.login(addr_b + ".b1")
                await plain_shares(a, b)
                node.send_signal(signal.SIGKILL)
                await node.wait()
                await submit_block(b)
            (block,) = await ledger(pool, pool.ledger.pending_submissions)
            first_run.cancel_scope.cancel()  # the pool stops with the block pending
        node = await start_node(nursery, port, data, *NODE_FLAGS)
        if chain_moved_on:  # while the pool was away, the chain moved past the block
            async with RpcChain("127.0.0.1", port) as chain:
                await chain.devnet_advance(1)
        async with trio.open_nursery() as second_run:
            started = time.monotonic()
            pool = await second_run.start(
                run_pool, make_config(tmp_path / "pool", {**SETTINGS, "chain.rpc_port": port})
            )
            settled_block = await settled(pool, block.block.id)
            took = time.monotonic() - started
            credits = await ledger(pool, pool.ledger.block_credits, settled_block.id)
            state = (await pool.chain.block_status(settled_block.hash)).state
            if chain_moved_on:
                assert settled_block.status == REJECTED
                assert settled_block.reason is not None
                assert settled_block.reason.startswith("stale")
                assert state == "unknown" and credits == {}
                assert blocks_metric(pool, "rejected") == 1
            else:
                assert settled_block.status == CREDITED and state == "pending"
                assert credits == expected_credits(settled_block.reward, {addr_a: 3, addr_b: 2})
                assert blocks_metric(pool, "found") == 1
            assert await ledger(pool, pool.ledger.pending_submissions) == []
            print(
                f"\n[pool restart, chain moved on: {chain_moved_on}] pending blocks after "
                f"the restart: 1, reached the chain: {0 if chain_moved_on else 1}; "
                f"settled ({settled_block.status}) {took:.2f} s after the pool started"
            )
            second_run.cancel_scope.cancel()
        node.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await node.wait()
        nursery.cancel_scope.cancel()
