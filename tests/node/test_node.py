"""The devnet node: block verification, retarget, maturity, orphans, wallet, persistence.

Blocks are mined for real with the reference miner (``protocol.ticket.mine_header``) on
small shapes at tiny difficulties; every rejection test submits a block that is valid
except for the one rule it breaks.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from node.chain import Chain, NodeConfig
from pool.chain.base import ChainAdapter
from pool.chain.embedded import EmbeddedChain
from protocol.address import make_address
from protocol.chain import (
    ERR_MALFORMED,
    BlockSubmission,
    ChainError,
    InsufficientFunds,
    PaymentKeyConflict,
)
from protocol.hashing import H
from protocol.header import Header, coinbase_hash, coins
from protocol.target import difficulty_from_bits, target_from_bits
from protocol.ticket import mine_header
from protocol.workload import Shape
from tests.support.node_data import (
    ALICE,
    BLOB_SHAPE,
    POOL,
    REWARD,
    SEED,
    SHAPE,
    blob_sub,
    blob_workload,
    config,
    mine,
    synthetic,
    synthetic_sub,
)

BOB = make_address(b"\x03" * 20)
T0 = 1_700_000_000


class Clock:
    """A settable clock for the node (seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mine_valid(chain: Chain, **kw: object) -> BlockSubmission:
    return synthetic_sub(mine(chain.template(), synthetic(), **kw))  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chain(tmp_path: Path, clock: Clock) -> Iterator[Chain]:
    c = Chain.open(tmp_path / "node", config(), clock)
    yield c
    c.close()


# --- accepting blocks ------------------------------------------------------------------


def test_genesis_and_first_template(chain: Chain, clock: Clock) -> None:
    height, tip = chain.tip()
    assert height == 0
    t = chain.template()
    assert (t.height, t.prev_hash, t.reward) == (1, tip, REWARD)
    assert difficulty_from_bits(t.bits) == pytest.approx(0.001, rel=1e-4)
    assert t.time == T0 + 1  # after the genesis block's time, even with the clock at it
    clock.now += 100
    assert chain.template().time == T0 + 100
    assert chain.block_status(tip).height == 0


def test_valid_block_is_accepted_and_tip_advances(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain)
    result = chain.submit_block(sub)
    assert result.accepted and result.reason == "accepted"
    assert result.block_hash == H(sub.header)
    assert chain.tip() == (1, result.block_hash)
    assert chain.template().prev_hash == result.block_hash
    status = chain.block_status(result.block_hash)
    assert (status.state, status.confirmations, status.height) == ("pending", 0, 1)
    assert chain.balances(POOL) == (0, REWARD)


def test_duplicate_block_is_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain)
    assert chain.submit_block(sub).accepted
    again = chain.submit_block(sub)
    assert (again.accepted, again.reason) == (False, "duplicate")
    assert chain.tip()[0] == 1


def test_stale_block_is_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    first = mine_valid(chain, tag="first")
    second = mine_valid(chain, tag="second")  # same parent, different coinbase
    assert chain.submit_block(first).accepted
    result = chain.submit_block(second)
    assert (result.accepted, result.reason) == (False, "stale")
    assert chain.tip() == (1, H(first.header))


def test_unknown_parent_is_stale(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain, prev_hash=H(b"nobody's block"))
    assert chain.submit_block(sub).reason == "stale"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"height": 2}, "bad-height"),
        ({"cb_height": 7}, "bad-coinbase-height"),
        ({"reward": REWARD + 1}, "bad-reward"),
        ({"time": T0 + 7200 + 21}, "time-too-new"),
        ({"time": T0}, "time-too-old"),
    ],
)
def test_rule_breaking_blocks_are_rejected(
    chain: Chain, clock: Clock, change: dict, reason: str
) -> None:
    clock.now += 20
    sub = mine_valid(chain, **change)
    result = chain.submit_block(sub)
    assert (result.accepted, result.reason) == (False, reason)
    assert chain.tip()[0] == 0


def test_time_exactly_at_the_future_limit_is_accepted(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    assert chain.submit_block(mine_valid(chain, time=int(clock.now) + 7200)).accepted


def test_wrong_bits_are_rejected_even_with_a_real_ticket(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    easier = chain.template().bits + 0x010000  # a bigger mantissa: an easier target
    sub = mine_valid(chain, bits=easier)
    assert chain.submit_block(sub).reason == "bad-bits"


def test_coinbase_not_committed_by_the_header(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain)
    other = sub.coinbase[:-1] + b"X"  # change the pool tag: a different coinbase
    result = chain.submit_block(dataclasses.replace(sub, coinbase=other))
    assert result.reason == "bad-coinbase-hash"


def test_garbled_coinbase_is_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    template = chain.template()
    garbage = b"not a coinbase at all"
    workload = synthetic()
    for n in range(20_000):
        header = Header(
            1,
            1,
            template.prev_hash,
            coinbase_hash(garbage + bytes([n % 256])),
            workload.work_root,
            template.time + n // 256,
            template.bits,
        ).encode()
        if mine_header(header, workload).winners(target_from_bits(template.bits), SHAPE.k):
            break
    sub = BlockSubmission(header, garbage + bytes([n % 256]), SHAPE, (0, 0), SEED)
    assert chain.submit_block(sub).reason == "bad-coinbase"


def test_coinbase_to_a_malformed_address_is_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain, address="mmd1" + "00" * 24)  # checksum wrong
    assert chain.submit_block(sub).reason == "bad-coinbase"


def test_work_root_of_another_workload_is_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain)
    other_seed = dataclasses.replace(sub, workload_seed=H(b"another seed"))
    assert chain.submit_block(other_seed).reason == "bad-work-root"
    other_shape = dataclasses.replace(sub, shape=Shape(32, 32, 256, 32))
    assert chain.submit_block(other_shape).reason == "bad-work-root"
    assert chain.submit_block(sub).accepted


def test_losing_ticket_is_rejected_as_high_hash(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    found = mine(chain.template(), synthetic())
    assert found.loser is not None
    result = chain.submit_block(synthetic_sub(found, tile=found.loser))
    assert (result.accepted, result.reason) == (False, "high-hash")
    # A tile that won on one header, claimed on another header (another tag), is forged.
    for n in range(50):
        other = mine(chain.template(), synthetic(), tag=f"other-{n}")
        if found.winner not in other.winners:
            break
    forged = synthetic_sub(dataclasses.replace(other, winner=found.winner))
    assert forged.tile not in other.winners
    assert chain.submit_block(forged).reason == "high-hash"
    assert chain.submit_block(synthetic_sub(found)).accepted


def test_malformed_submissions_are_rejected(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    sub = mine_valid(chain)
    assert (
        chain.submit_block(dataclasses.replace(sub, header=sub.header[:100])).reason == "bad-header"
    )
    assert chain.submit_block(dataclasses.replace(sub, tile=(2, 0))).reason == "bad-tile"
    assert (
        chain.submit_block(dataclasses.replace(sub, workload_seed=b"short")).reason
        == "bad-workload"
    )
    assert chain.submit_block(dataclasses.replace(sub, workload_seed=None)).reason == "bad-workload"
    both = dataclasses.replace(sub, a_rows=bytes(16 * SHAPE.k))
    assert chain.submit_block(both).reason == "bad-workload"
    assert chain.tip()[0] == 0
    assert chain.submit_block(sub).accepted


# --- blob workloads --------------------------------------------------------------------


def test_blob_workload_block_with_merkle_proofs(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    w = blob_workload()
    found = mine(chain.template(), w)
    sub = blob_sub(found, w)

    row = bytearray(sub.a_rows or b"")
    row[5] = (row[5] + 1) % 64  # one entry of one opened row changed
    assert (
        chain.submit_block(dataclasses.replace(sub, a_rows=bytes(row))).reason == "bad-merkle-proof"
    )
    bad_proofs = [list(p) for p in sub.b_proofs or []]
    bad_proofs[3][0] = H(b"forged sibling")
    assert (
        chain.submit_block(dataclasses.replace(sub, b_proofs=bad_proofs)).reason
        == "bad-merkle-proof"
    )
    short_proofs = [p[:-1] for p in sub.a_proofs or []]
    assert (
        chain.submit_block(dataclasses.replace(sub, a_proofs=short_proofs)).reason
        == "bad-merkle-proof"
    )
    assert (
        chain.submit_block(dataclasses.replace(sub, a_rows=(sub.a_rows or b"")[:-1])).reason
        == "bad-rows"
    )
    out_of_range = np.full((16, BLOB_SHAPE.k), 100, dtype=np.int8).tobytes()
    assert chain.submit_block(dataclasses.replace(sub, a_rows=out_of_range)).reason == "bad-rows"
    assert chain.submit_block(dataclasses.replace(sub, a_root=H(b"x"))).reason == "bad-work-root"
    # Genuine rows and proofs, but of another tile than the one claimed.
    other_ti = (found.winner[0] + 1) % BLOB_SHAPE.tiles_m
    other = blob_sub(found, w, (other_ti, found.winner[1]))
    moved = dataclasses.replace(sub, a_rows=other.a_rows, a_proofs=other.a_proofs)
    assert chain.submit_block(moved).reason == "bad-merkle-proof"
    assert found.loser is not None
    assert chain.submit_block(blob_sub(found, w, found.loser)).reason == "high-hash"

    result = chain.submit_block(sub)
    assert result.accepted, result.reason
    assert chain.tip() == (1, result.block_hash)


def test_blob_block_without_roots_derives_them_from_the_proofs(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    w = blob_workload()
    found = mine(chain.template(), w)
    sub = dataclasses.replace(blob_sub(found, w), a_root=None, b_root=None)
    rows = np.frombuffer(sub.bt_rows or b"", dtype=np.int8).reshape(16, -1).copy()
    rows[9, 0] ^= 1  # a row the root is not derived from: its proof fails
    assert (
        chain.submit_block(dataclasses.replace(sub, bt_rows=rows.tobytes())).reason
        == "bad-merkle-proof"
    )
    rows = np.frombuffer(sub.a_rows or b"", dtype=np.int8).reshape(16, -1).copy()
    rows[0, 0] ^= 1  # the row the root is derived from: the root is not the committed one
    assert (
        chain.submit_block(dataclasses.replace(sub, a_rows=rows.tobytes())).reason
        == "bad-work-root"
    )
    assert chain.submit_block(dataclasses.replace(sub, a_proofs=None)).reason == "bad-workload"
    assert chain.submit_block(sub).accepted


# --- difficulty ------------------------------------------------------------------------


def submit_at(chain: Chain, clock: Clock, when: int) -> None:
    clock.now = when
    result = chain.submit_block(mine_valid(chain, time=when))
    assert result.accepted, result.reason


def test_retarget_moves_toward_the_block_time(tmp_path: Path) -> None:
    clock = Clock()
    chain = Chain.open(tmp_path, config(start_difficulty=0.0002, block_time=30), clock)
    start = difficulty_from_bits(chain.template().bits)
    # One block 60 s after genesis (twice the target); the 9 intervals a young chain lacks
    # count as on time, so the span is 60 + 9·30 against 10·30: difficulty × 300/330.
    submit_at(chain, clock, T0 + 60)
    assert difficulty_from_bits(chain.template().bits) == pytest.approx(start * 300 / 330, rel=1e-4)
    # Fast blocks (2 s apart) push it up, every block.
    diffs = []
    for i in range(1, 5):
        submit_at(chain, clock, T0 + 60 + 2 * i)
        diffs.append(difficulty_from_bits(chain.template().bits))
    assert all(b > a for a, b in itertools.pairwise(diffs))
    assert diffs[-1] > start
    # Slow blocks (300 s apart) bring it back down.
    high = diffs[-1]
    submit_at(chain, clock, T0 + 68 + 300)
    submit_at(chain, clock, T0 + 68 + 600)
    assert difficulty_from_bits(chain.template().bits) < high
    chain.close()


def test_retarget_step_is_bounded_and_floored(tmp_path: Path) -> None:
    clock = Clock()
    chain = Chain.open(tmp_path / "a", config(start_difficulty=0.0004, min_difficulty=1e-6), clock)
    submit_at(chain, clock, T0 + 10_000)  # 333× too slow: clamped to ×4 easier
    assert difficulty_from_bits(chain.template().bits) == pytest.approx(0.0001, rel=1e-4)
    chain.close()

    clock = Clock()
    floored = Chain.open(
        tmp_path / "b", config(start_difficulty=0.0004, min_difficulty=0.0003), clock
    )
    submit_at(floored, clock, T0 + 10_000)
    assert difficulty_from_bits(floored.template().bits) == pytest.approx(0.0003, rel=1e-4)
    floored.close()


# --- maturity and orphans --------------------------------------------------------------


def test_coinbase_matures_after_maturity_blocks(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    block = chain.submit_block(mine_valid(chain)).block_hash
    assert block is not None
    for confirmations in range(3):
        status = chain.block_status(block)
        assert (status.state, status.confirmations) == ("pending", confirmations)
        assert chain.balances(POOL) == (0, REWARD)
        chain.devnet_advance(1)
    status = chain.block_status(block)
    assert (status.state, status.confirmations) == ("confirmed", 3)
    assert chain.balances(POOL) == (REWARD, 0)
    assert chain.block_status(H(b"never seen")).state == "unknown"


def test_every_block_orphaned_at_probability_one(tmp_path: Path) -> None:
    clock = Clock(T0 + 20)
    chain = Chain.open(tmp_path, config(orphan_probability=1.0), clock)
    genesis = chain.tip()[1]
    result = chain.submit_block(mine_valid(chain))
    assert result.accepted
    assert chain.block_status(result.block_hash or b"").state == "orphaned"
    height, tip = chain.tip()
    assert height == 2 and tip != result.block_hash
    sibling = chain.store.main_chain(1, 1)[0]
    assert sibling.prev_hash == genesis and sibling.address == chain.config.node_address
    chain.devnet_advance(5)
    assert chain.balances(POOL) == (0, 0)
    assert chain.block_status(result.block_hash or b"").state == "orphaned"
    assert chain.submit_block(mine_valid(chain)).accepted  # the pool mines on, on the new tip
    chain.close()


def orphan_pattern(path: Path, seed: str) -> list[bool]:
    clock = Clock()
    chain = Chain.open(path, config(orphan_probability=0.5, orphan_seed=seed), clock)
    pattern = []
    for i in range(8):
        clock.now = T0 + 40 * (i + 1)
        result = chain.submit_block(mine_valid(chain, time=int(clock.now)))
        assert result.accepted
        pattern.append(chain.block_status(result.block_hash or b"").state == "orphaned")
    chain.close()
    return pattern


def test_orphan_lottery_is_repeatable_under_a_seed(tmp_path: Path) -> None:
    first = orphan_pattern(tmp_path / "a", "seed-1")
    assert orphan_pattern(tmp_path / "b", "seed-1") == first
    assert any(first) and not all(first)


# --- wallet ----------------------------------------------------------------------------


def fund_pool(chain: Chain, clock: Clock, blocks: int = 1) -> None:
    for _ in range(blocks):
        clock.now += 20
        assert chain.submit_block(mine_valid(chain)).accepted
    chain.devnet_advance(chain.config.maturity)


def test_send_many_pays_and_is_idempotent_by_key(chain: Chain, clock: Clock) -> None:
    fund_pool(chain, clock)
    assert chain.balance(POOL) == REWARD
    txid = chain.send_many("batch-1", {ALICE: 1_000, BOB: 2_500}, POOL)
    assert chain.balance(POOL) == REWARD - 3_500
    assert (chain.balance(ALICE), chain.balance(BOB)) == (1_000, 2_500)
    assert chain.payment("batch-1") == txid
    # Replaying the same request (a pool restarting mid-payout) changes nothing.
    assert chain.send_many("batch-1", {BOB: 2_500, ALICE: 1_000}, POOL) == txid
    assert chain.balance(POOL) == REWARD - 3_500
    assert chain.balance(ALICE) == 1_000
    with pytest.raises(PaymentKeyConflict, match="batch-1"):
        chain.send_many("batch-1", {ALICE: 1_001, BOB: 2_500}, POOL)
    assert chain.payment("batch-2") is None
    assert chain.send_many("batch-2", {ALICE: 1}, POOL) != txid
    assert chain.balance(ALICE) == 1_001


def test_send_many_refuses_more_than_the_mature_balance(chain: Chain, clock: Clock) -> None:
    clock.now += 20
    assert chain.submit_block(mine_valid(chain)).accepted  # immature only
    with pytest.raises(InsufficientFunds, match="immature"):
        chain.send_many("early", {ALICE: 1}, POOL)
    chain.devnet_advance(3)
    with pytest.raises(InsufficientFunds, match="needs"):
        chain.send_many("too-much", {ALICE: REWARD, BOB: 1}, POOL)
    assert chain.payment("too-much") is None
    assert chain.balance(POOL) == REWARD and chain.balance(ALICE) == 0
    # Others cannot spend the pool's coins from their own empty address.
    with pytest.raises(InsufficientFunds):
        chain.send_many("theft", {ALICE: 1}, BOB)
    assert chain.send_many("exact", {ALICE: REWARD}, POOL)
    assert chain.balance(POOL) == 0


@pytest.mark.parametrize(
    ("key", "outputs", "sender"),
    [
        ("", {ALICE: 1}, POOL),
        ("k", {}, POOL),
        ("k", {ALICE: 0}, POOL),
        ("k", {ALICE: -5}, POOL),
        ("k", {ALICE: 1.5}, POOL),
        ("k", {"mmd1nothex": 1}, POOL),
        ("k", {ALICE: 1}, "someone"),
    ],
)
def test_send_many_rejects_malformed_requests(
    chain: Chain, clock: Clock, key: str, outputs: dict, sender: str
) -> None:
    fund_pool(chain, clock)
    with pytest.raises(ChainError) as info:
        chain.send_many(key, outputs, sender)
    assert info.value.code == ERR_MALFORMED
    assert chain.balance(POOL) == REWARD and chain.payment("k") is None


# --- persistence -----------------------------------------------------------------------


def test_state_survives_a_reopen(tmp_path: Path) -> None:
    clock = Clock()
    chain = Chain.open(tmp_path, config(), clock)
    fund_pool(chain, clock, blocks=2)
    txid = chain.send_many("paid", {ALICE: 777}, POOL)
    last = mine_valid(chain)  # the template's time follows the forged blocks' times
    assert chain.submit_block(last).accepted
    tip, template, info = chain.tip(), chain.template(), chain.info()
    balances = chain.balances(POOL)
    chain.close()

    reopened = Chain.open(tmp_path, config(start_difficulty=5.0), clock)  # ignored: old chain
    assert reopened.tip() == tip
    assert reopened.template() == template
    assert reopened.info()["genesis"] == info["genesis"]
    assert reopened.balances(POOL) == balances
    assert reopened.balance(ALICE) == 777
    assert reopened.payment("paid") == txid
    assert reopened.send_many("paid", {ALICE: 777}, POOL) == txid
    assert reopened.balance(ALICE) == 777
    assert reopened.submit_block(last).reason == "duplicate"
    assert reopened.block_status(tip[1]).state == "pending"
    reopened.close()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="start_difficulty"):
        NodeConfig(start_difficulty=0.5, min_difficulty=1.0)
    with pytest.raises(ValueError, match="orphan_probability"):
        NodeConfig(orphan_probability=2.0)
    with pytest.raises(ValueError, match="node_address"):
        NodeConfig(node_address="nope")
    with pytest.raises(ValueError, match="block_time"):
        NodeConfig(block_time=0)
    assert coins(REWARD) == "50.0" and coins(12_345) == "0.00012345"


def test_devnet_advance_validates_count(chain: Chain) -> None:
    with pytest.raises(ChainError):
        chain.devnet_advance(-1)
    assert chain.devnet_advance(0) == []
    assert len(chain.devnet_advance(4)) == 4 and chain.tip()[0] == 4


# --- the embedded adapter --------------------------------------------------------------


async def test_embedded_chain_adapter(tmp_path: Path) -> None:
    clock = Clock(T0 + 20)
    async with EmbeddedChain(tmp_path, config(), wallet_address=POOL, clock=clock) as node:
        assert isinstance(node, ChainAdapter)
        template = await node.template()
        sub = synthetic_sub(mine(template, synthetic()))
        # The same block submitted twice at once: exactly one acceptance.
        results = []

        async def submit() -> None:
            results.append(await node.submit_block(sub))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            nursery.start_soon(submit)
        assert sorted(r.reason for r in results) == ["accepted", "duplicate"]
        assert (await node.tip()) == (1, H(sub.header))
        assert (await node.block_status(H(sub.header))).state == "pending"
        await node.devnet_advance(3)
        assert (await node.block_status(H(sub.header))).state == "confirmed"
        assert await node.balance(POOL) == REWARD
        txid = await node.send_many("k1", {ALICE: 10})
        assert await node.send_many("k1", {ALICE: 10}) == txid
        assert await node.payment("k1") == txid
        assert await node.balances(ALICE) == (10, 0)
        with pytest.raises(InsufficientFunds):
            await node.send_many("k2", {ALICE: REWARD})
        assert (await node.info())["height"] == 4

    async with EmbeddedChain(tmp_path, config(), clock=clock) as walletless:
        with pytest.raises(ChainError, match="wallet_address"):
            await walletless.send_many("k3", {ALICE: 1})
        assert await walletless.payment("k1") == txid
