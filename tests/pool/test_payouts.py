"""Unlocker and payouts against the real embedded devnet node and a real ledger.

Blocks are mined for real (reference miner, tiny shape, tiny network difficulty) and
submitted to the node, which verifies the winning ticket; maturity is reached with the
node's devnet facility ``devnet_advance``. Crashes are simulated by dropping and
reopening both stores, and by SIGKILL of a subprocess in mid-round. Every test runs on
both ledgers: a SQLite file and a fresh PostgreSQL database (``tests/pg.py``).
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from pool.chain.embedded import EmbeddedChain
from pool.ledger import (
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    Ledger,
    open_ledger,
)
from pool.metrics import PoolMetrics
from pool.payouts import payout_round, run_payouts
from pool.unlocker import unlock_round
from protocol.target import difficulty_from_bits
from tests.support import REPO, pg
from tests.support.payouts_data import (
    ALICE,
    BOB,
    FEE,
    MATURITY,
    MINERS,
    POLICY,
    POOL,
    REWARD,
    add_shares,
    found_block,
    mine_block,
    node_balances,
    node_config,
)


def open_chain(tmp_path: Path, **overrides) -> EmbeddedChain:
    return EmbeddedChain(tmp_path / "node", node_config(**overrides), wallet_address=POOL)


@pytest.fixture(params=pg.BACKENDS)
def where(request, tmp_path) -> str:
    """Where the test's ledger lives: a SQLite path or a PostgreSQL URL."""
    return pg.ledger_target(request.param, request.config, tmp_path)


async def matured_ledger(
    tmp_path: Path, where: str
) -> tuple[Ledger, EmbeddedChain, dict[str, int]]:
    """A ledger whose one block is confirmed (balances set) and a node holding the reward."""
    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    limiter = trio.CapacityLimiter(1)
    block_id = await found_block(ledger, chain)
    await chain.devnet_advance(MATURITY)
    report = await unlock_round(ledger, chain, limiter)
    assert report.confirmed == [block_id]
    return ledger, chain, ledger.balances()


async def test_block_found_matured_credited_and_paid_once(tmp_path, where):
    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    limiter = trio.CapacityLimiter(1)
    try:
        block_id = await found_block(ledger, chain)
        credits = ledger.block_credits(block_id)
        assert sum(credits.values()) == REWARD
        assert set(credits) == {*MINERS, FEE}

        # Not mature yet: the unlocker waits, nothing is payable.
        report = await unlock_round(ledger, chain, limiter)
        assert report.pending == [block_id]
        assert ledger.block(block_id).status == CREDITED
        report = await payout_round(ledger, chain, 1, limiter)
        assert report.batch is None and report.paid == 0
        assert await node_balances(chain) == dict.fromkeys((*MINERS, FEE), 0)

        await chain.devnet_advance(MATURITY - 1)
        assert (await unlock_round(ledger, chain, limiter)).pending == [block_id]
        assert ledger.block(block_id).confirmations == MATURITY - 1
        await chain.devnet_advance(1)
        assert (await unlock_round(ledger, chain, limiter)).confirmed == [block_id]
        assert ledger.block(block_id).status == CONFIRMED
        assert ledger.balances() == credits
        assert await chain.balance(POOL) == REWARD

        # A min_payout above the fee's balance leaves the fee account for later.
        min_payout = credits[FEE] + 1
        report = await payout_round(ledger, chain, min_payout, limiter)
        assert report.batch is not None and report.batch.status == COMPLETED
        paid = {a: v for a, v in credits.items() if v >= min_payout}
        assert report.batch.outputs == paid
        assert report.paid == sum(paid.values())
        assert await chain.payment(report.batch.key) == report.batch.txid
        assert await node_balances(chain) == {a: paid.get(a, 0) for a in (*MINERS, FEE)}
        assert ledger.balances() == {FEE: credits[FEE]}

        # Again: nothing new to pay, nobody paid twice.
        again = await payout_round(ledger, chain, min_payout, limiter)
        assert again.batch is None and again.paid == 0
        assert await node_balances(chain) == {a: paid.get(a, 0) for a in (*MINERS, FEE)}
        assert await chain.balance(POOL) == REWARD - sum(paid.values())
        assert ledger.miner(ALICE).paid == credits[ALICE]
        assert ledger.pending_payout_total() == credits[FEE]
    finally:
        ledger.close()
        await chain.aclose()


async def test_crash_after_send_reconciles_without_paying_twice(tmp_path, where):
    ledger, chain, balances = await matured_ledger(tmp_path, where)
    key = "crash-after-send"
    batch = ledger.create_payment_batch(key, balances)
    txid = await chain.send_many(key, dict(batch.outputs))
    # Crash before complete_payment_batch: drop everything, reopen from disk.
    ledger.close()
    await chain.aclose()
    del ledger, chain

    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    try:
        assert [b.key for b in ledger.pending_payment_batches()] == [key]
        report = await payout_round(ledger, chain, 1, trio.CapacityLimiter(1))
        assert report.reconciled == [key] and report.resent == [] and report.batch is None
        assert ledger.payment_batch(key).txid == txid
        assert ledger.pending_payment_batches() == []
        assert await node_balances(chain) == balances  # exactly the credit, not twice
        assert await chain.balance(POOL) == REWARD - sum(balances.values())
    finally:
        ledger.close()
        await chain.aclose()


async def test_batch_written_but_never_sent_is_sent_exactly_once(tmp_path, where):
    ledger, chain, balances = await matured_ledger(tmp_path, where)
    key = "crash-before-send"
    ledger.create_payment_batch(key, balances)
    ledger.close()
    await chain.aclose()
    del ledger, chain

    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    limiter = trio.CapacityLimiter(1)
    try:
        assert await chain.payment(key) is None
        report = await payout_round(ledger, chain, 1, limiter)
        assert report.resent == [key] and report.reconciled == []
        assert report.paid == sum(balances.values())
        assert await node_balances(chain) == balances
        # Later rounds change nothing.
        for _ in range(2):
            again = await payout_round(ledger, chain, 1, limiter)
            assert (again.resent, again.reconciled, again.batch) == ([], [], None)
        assert await node_balances(chain) == balances
        assert ledger.payment_batch(key).status == COMPLETED
    finally:
        ledger.close()
        await chain.aclose()


async def test_failed_send_stays_pending_and_is_retried(tmp_path, where):
    ledger, chain, balances = await matured_ledger(tmp_path, where)
    limiter = trio.CapacityLimiter(1)
    try:
        # Someone else spends the pool wallet: the node refuses the payout for lack of funds.
        await chain.send_many("drain", {BOB: REWARD})
        report = await payout_round(ledger, chain, 1, limiter)
        assert report.batch is not None
        key = report.batch.key
        assert list(report.failed) == [key]
        assert [b.key for b in ledger.pending_payment_batches()] == [key]
        assert ledger.balances() == {}  # debited once, held by the pending batch
        # The next round retries that batch and writes no new one while it is unresolved.
        report = await payout_round(ledger, chain, 1, limiter)
        assert list(report.failed) == [key] and report.batch is None
        # Funds arrive (another block matures): the same batch is sent, once.
        await found_block(ledger, chain, start=1000)
        await chain.devnet_advance(MATURITY)
        await unlock_round(ledger, chain, limiter)
        second = ledger.balances()
        report = await payout_round(ledger, chain, 1, limiter)
        assert report.resent == [key] and report.paid == sum(balances.values())
        # The wallet held one reward after the drain, and the old batch took it: the new
        # batch (the second block's credits) now waits for funds in its turn.
        assert report.batch is not None and report.batch.outputs == second
        assert list(report.failed) == [report.batch.key]
        assert [b.key for b in ledger.pending_payment_batches()] == [report.batch.key]
        expected = {a: balances.get(a, 0) for a in (*MINERS, FEE)}
        expected[BOB] += REWARD  # the drain
        assert await node_balances(chain) == expected
    finally:
        ledger.close()
        await chain.aclose()


async def test_orphaned_block_pays_nothing(tmp_path, where):
    ledger = open_ledger(where)
    chain = open_chain(tmp_path, orphan_probability=1.0)  # every mined block is reorged out
    limiter = trio.CapacityLimiter(1)
    try:
        block_id = await found_block(ledger, chain)
        await chain.devnet_advance(MATURITY)
        report = await unlock_round(ledger, chain, limiter)
        assert report.orphaned == [block_id]
        assert ledger.block(block_id).status == ORPHANED
        assert ledger.balances() == {}
        assert (await payout_round(ledger, chain, 1, limiter)).batch is None
        assert await unlock_round(ledger, chain, limiter) == type(report)()
    finally:
        ledger.close()
        await chain.aclose()


async def test_uncredited_block_is_credited_by_the_unlocker(tmp_path, where):
    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    limiter = trio.CapacityLimiter(1)
    try:
        template = await chain.template()
        add_shares(ledger, difficulty_from_bits(template.bits), 0, 1000.0)
        height, block_hash, net = await mine_block(chain)
        block_id = ledger.record_block(height, block_hash, REWARD, 1050.0, ALICE, "rig", net)
        await chain.devnet_advance(MATURITY)
        # Without a policy the unlocker cannot credit it, so it must not confirm it either.
        report = await unlock_round(ledger, chain, limiter)
        assert report.pending == [block_id] and ledger.block(block_id).status == FOUND
        report = await unlock_round(ledger, chain, limiter, policy=POLICY)
        assert report.credited == [block_id] and report.confirmed == [block_id]
        assert sum(ledger.balances().values()) == REWARD
    finally:
        ledger.close()
        await chain.aclose()


async def test_block_unknown_to_the_node(tmp_path, where):
    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    limiter = trio.CapacityLimiter(1)
    try:
        block_id = ledger.record_block(5, b"\xee" * 32, REWARD, time.time() - 10, ALICE, "w", 1.0)
        report = await unlock_round(ledger, chain, limiter, unknown_grace=3600)
        assert report.pending == [block_id]
        report = await unlock_round(ledger, chain, limiter, unknown_grace=1)
        assert report.orphaned == [block_id]
    finally:
        ledger.close()
        await chain.aclose()


async def test_run_payouts_loop_pays_and_sets_metrics(tmp_path, where):
    ledger, chain, balances = await matured_ledger(tmp_path, where)
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    # The fee account's balance stays below min_payout: owed, and lagging.
    min_payout = balances[FEE] + 1
    paid = {a: v for a, v in balances.items() if v >= min_payout}
    assert set(paid) == set(MINERS)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    run_payouts, ledger, chain, 0.05, min_payout, trio.CapacityLimiter(1), metrics
                )
                while not sample("matmine_pool_paid_base_units_total"):
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        assert sample("matmine_pool_paid_base_units_total") == sum(paid.values())
        assert sample("matmine_pool_pending_payout_base_units") == balances[FEE]
        # Lag counts payable balances only: the fee account's is not payable yet.
        assert sample("matmine_pool_payout_lag_seconds") == 0
        assert await node_balances(chain) == {**paid, FEE: 0}
    finally:
        ledger.close()
        await chain.aclose()


KILLED_ROUND = textwrap.dedent(
    """
    import os, signal, sys
    import trio
    from pool.chain.embedded import EmbeddedChain
    from pool.ledger import open_ledger
    from pool.payouts import payout_round
    from tests.support.payouts_data import POOL, node_config

    tmp, when, where = sys.argv[1], sys.argv[2], sys.argv[3]

    class DyingChain(EmbeddedChain):
        # The real node; the process dies just before or just after it pays.
        async def send_many(self, key, outputs):
            if when == "before-send":
                os.kill(os.getpid(), signal.SIGKILL)
            txid = await super().send_many(key, outputs)
            if when == "after-send":
                os.kill(os.getpid(), signal.SIGKILL)
            return txid

    async def main():
        ledger = open_ledger(where)
        chain = DyingChain(tmp + "/node", node_config(), wallet_address=POOL)
        await payout_round(ledger, chain, 1, trio.CapacityLimiter(1))

    trio.run(main)
    """
)


@pytest.mark.parametrize("when", ["before-send", "after-send"])
async def test_sigkill_in_mid_payout_round(tmp_path, where, when):
    ledger, chain, balances = await matured_ledger(tmp_path, where)
    ledger.close()
    await chain.aclose()
    root = REPO
    proc = await trio.run_process(
        [sys.executable, "-c", KILLED_ROUND, str(tmp_path), when, where],
        cwd=root,
        check=False,
        capture_stderr=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    ledger = open_ledger(where)
    chain = open_chain(tmp_path)
    try:
        pending = ledger.pending_payment_batches()
        assert len(pending) == 1 and pending[0].outputs == balances
        paid_before = await chain.payment(pending[0].key)
        assert (paid_before is None) == (when == "before-send")
        report = await payout_round(ledger, chain, 1, trio.CapacityLimiter(1))
        assert (report.resent if when == "before-send" else report.reconciled) == [pending[0].key]
        assert report.batch is None
        assert await node_balances(chain) == balances
        assert await chain.balance(POOL) == REWARD - sum(balances.values())
    finally:
        ledger.close()
        await chain.aclose()
