"""Blocks end to end: found by a miner, submitted to the real embedded devnet node,
credited by PPLNS, unlocked at maturity and paid — or orphaned and paying nothing.

Share difficulty 1e-5 makes every ticket a share; network difficulty 1e-4 makes about
15% of tickets blocks, so the miners below can pick shares that are not blocks and then
one that is. Each share scores 1e-5 / 1e-4 = 0.1 of the PPLNS window (N = 2).
"""

from __future__ import annotations

import math

import trio

from pool.ledger.base import CONFIRMED, CREDITED, ORPHANED
from protocol.address import new_address
from tests.support.miner import Candidate, TestMiner

SETTINGS = {"pool.start_difficulty": 1e-5, "pool.fee_bps": 250}
NODE = {"start_difficulty": 1e-4, "maturity": 2}


async def pick(miner: TestMiner, count: int, block: bool) -> list[Candidate]:
    """``count`` candidates of the newest job that are (or are not) blocks."""
    found: list[Candidate] = []
    with trio.fail_after(20):
        while len(found) < count:
            found += [c for c in await miner.find(miner.job) if c.is_block == block]
    return found[:count]


async def find_block(pool, a: TestMiner, b: TestMiner) -> tuple[bytes, int]:
    """A submits 3 plain shares, B 1 plain share and then a block; returns (hash, height)."""
    for c in await pick(a, 3, block=False):
        r = await a.submit(c)
        assert r.error is None and r.result.block is None
    for c in await pick(b, 1, block=False):
        assert (await b.submit(c)).error is None
    height = b.job.height
    (winner,) = await pick(b, 1, block=True)
    r = await b.submit(winner)
    assert r.error is None, r.error
    assert r.result.block is not None and len(r.result.block) == 32
    return r.result.block, height


async def wait_for(predicate, timeout: float = 15.0, step: float = 0.1):
    with trio.fail_after(timeout):
        while not (result := await predicate()):
            await trio.sleep(step)
    return result


async def test_found_block_is_credited_by_pplns_and_paid_after_maturity(start_pool, ledger_call):
    pool = await start_pool(SETTINGS, NODE)
    addr_a, addr_b = new_address(), new_address()
    async with (
        await TestMiner.connect(pool.stratum_port) as a,
        await TestMiner.connect(pool.stratum_port) as b,
    ):
        await a.login(addr_a + ".a1")
        await b.login(addr_b + ".b1")
        block_hash, height = await find_block(pool, a, b)
        # Every miner gets a clean job on the new tip.
        new = await a.next_job()
        assert new.clean and new.height == height + 1

    (block,) = await ledger_call(pool, pool.ledger.blocks, 10)
    assert block.hash == block_hash and block.height == height
    assert block.status == CREDITED and block.address == addr_b and block.worker == "b1"
    reward = block.reward
    fee = reward * 250 // 10_000
    distributable = reward - fee
    credits = await ledger_call(pool, pool.ledger.block_credits, block.id)
    assert credits == {
        addr_a: math.floor(distributable * 3 / 5),
        addr_b: math.floor(distributable * 2 / 5),
    }
    assert block.fee == fee
    assert sum(credits.values()) + block.fee + block.remainder == reward
    # Immature: nothing payable, nothing on chain yet.
    assert await ledger_call(pool, pool.ledger.payable, 1) == {}
    assert await pool.chain.balance(addr_a) == 0

    await pool.chain.devnet_advance(3)  # maturity 2: the pool's coinbase matures

    async def paid() -> bool:
        return (
            await pool.chain.balance(addr_a) == credits[addr_a]
            and await pool.chain.balance(addr_b) == credits[addr_b]
        )

    await wait_for(paid)
    (block,) = await ledger_call(pool, pool.ledger.blocks, 10)
    assert block.status == CONFIRMED
    summary = await ledger_call(pool, pool.ledger.miner, addr_a)
    assert summary.paid == credits[addr_a] and summary.balance == 0
    # Later payout rounds pay nothing more.
    await trio.sleep(0.6)
    assert await pool.chain.balance(addr_a) == credits[addr_a]
    batches = await ledger_call(pool, pool.ledger.payments, 10)
    assert len(batches) == 1 and batches[0].status == "completed"
    assert batches[0].outputs == credits
    assert pool.registry.get_sample_value("matmine_pool_blocks_total", {"status": "found"}) == 1


async def test_orphaned_block_pays_nothing(start_pool, ledger_call):
    pool = await start_pool(SETTINGS, {**NODE, "orphan_probability": 1.0})
    addr_a, addr_b = new_address(), new_address()
    async with (
        await TestMiner.connect(pool.stratum_port) as a,
        await TestMiner.connect(pool.stratum_port) as b,
    ):
        await a.login(addr_a + ".a1")
        await b.login(addr_b + ".b1")
        block_hash, _ = await find_block(pool, a, b)

    status = await pool.chain.block_status(block_hash)
    assert status.state == "orphaned"
    await pool.chain.devnet_advance(3)

    async def orphaned() -> bool:
        (block,) = await ledger_call(pool, pool.ledger.blocks, 10)
        return block.status == ORPHANED

    await wait_for(orphaned)
    await trio.sleep(0.6)  # a few unlock and payout rounds
    assert await ledger_call(pool, pool.ledger.balances) == {}
    assert await ledger_call(pool, pool.ledger.payments, 10) == []
    assert await pool.chain.balance(addr_a) == 0
    assert await pool.chain.balance(addr_b) == 0
    summary = await ledger_call(pool, pool.ledger.miner, addr_a)
    assert summary.immature == 0 and summary.balance == 0


async def test_block_rejected_by_the_chain_is_recorded_orphaned_and_credits_nothing(
    start_pool, ledger_call
):
    # The pool looks at the tip only every 30 s here, so it does not notice that the
    # devnet moved on: its block candidate is stale at the node.
    pool = await start_pool({**SETTINGS, "chain.poll_interval": 30.0}, NODE)
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.login(address + ".late")
        (winner,) = await pick(miner, 1, block=True)
        await pool.chain.devnet_advance(1)
        r = await miner.submit(winner)
        assert r.error is None  # still a good share ...
        assert r.result.block is None  # ... but no block
        newer = await miner.next_job(1)  # the rejection made the pool look at the tip
        assert newer.clean and newer.height == miner.jobs[0].height + 1
    (block,) = await ledger_call(pool, pool.ledger.blocks, 10)
    assert block.status == ORPHANED and block.address == address
    summary = await ledger_call(pool, pool.ledger.miner, address)
    assert summary.immature == 0 and summary.balance == 0
    assert await ledger_call(pool, pool.ledger.share_count) == 1
    assert pool.registry.get_sample_value("matmine_pool_blocks_total", {"status": "rejected"}) == 1
