"""Payout test data: a node config, found blocks, and the node's balances."""

from __future__ import annotations

import time

from node.config import NodeConfig
from pool.chain.base import ChainAdapter
from pool.chain.embedded import EmbeddedChain
from pool.ledger import (
    Ledger,
    ShareRecord,
)
from pool.pplns import PplnsPolicy
from protocol.address import make_address
from protocol.chain import BlockSubmission
from protocol.hashing import H
from protocol.header import Header, assemble_coinbase, coinbase_hash, coinbase_parts
from protocol.target import difficulty_from_bits, target_from_bits
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload

POOL = make_address(H(b"test/pool-wallet")[:20])


FEE = make_address(H(b"test/fee")[:20])


ALICE = make_address(H(b"test/alice")[:20])


BOB = make_address(H(b"test/bob")[:20])


CAROL = make_address(H(b"test/carol")[:20])


MINERS = (ALICE, BOB, CAROL)


REWARD = 50 * 10**8


MATURITY = 3


SHAPE = Shape(64, 64, 128, 32)


POLICY = PplnsPolicy(factor=2.0, fee_bps=100, fee_address=FEE)


def node_config(**overrides) -> NodeConfig:
    settings = {
        "start_difficulty": 1e-5,
        "min_difficulty": 1e-6,
        "maturity": MATURITY,
        "block_reward": REWARD,
    }
    settings.update(overrides)
    return NodeConfig(**settings)


async def mine_block(chain: EmbeddedChain) -> tuple[int, bytes, float]:
    """Mine and submit one real block paying POOL; returns (height, hash, network diff)."""
    template = await chain.template()
    seed = H(b"test/workload", template.height.to_bytes(4, "little"))
    workload = Workload.synthetic(seed, SHAPE)
    c1, c2 = coinbase_parts(template.height, template.reward, POOL, "test", 4)
    target = target_from_bits(template.bits)
    for en2 in range(200):
        coinbase = assemble_coinbase(c1, b"\x00\x00\x00\x01", en2.to_bytes(8, "little"), c2)
        header = Header(
            1,
            template.height,
            template.prev_hash,
            coinbase_hash(coinbase),
            workload.work_root,
            template.time,
            template.bits,
        ).encode()
        winners = mine_header(header, workload).winners(target, SHAPE.k)
        if winners:
            ti, tj, _ = winners[0]
            result = await chain.submit_block(
                BlockSubmission(header, coinbase, SHAPE, (ti, tj), seed)
            )
            assert result.accepted, result.reason
            assert result.block_hash is not None
            return template.height, result.block_hash, difficulty_from_bits(template.bits)
    raise AssertionError("no winning ticket in 200 headers")


def add_shares(ledger: Ledger, network_difficulty: float, start: int, t0: float) -> None:
    """Thirty shares from three miners, scoring 0.1 each: a full N = 2 window needs 20."""
    ledger.insert_shares(
        [
            ShareRecord(
                digest=H(b"test/share", (start + i).to_bytes(8, "little")),
                time=t0 + i,
                address=MINERS[i % 3],
                worker="rig",
                job_id="j",
                height=1,
                difficulty=network_difficulty * (0.05 + 0.05 * (i % 2)),
                network_difficulty=network_difficulty,
                session_id=b"s",
            )
            for i in range(30)
        ]
    )


async def found_block(ledger: Ledger, chain: EmbeddedChain, start: int = 0) -> int:
    """Shares, then a real block; recorded and credited like the pool does."""
    template = await chain.template()
    t0 = time.time() - 100
    add_shares(ledger, difficulty_from_bits(template.bits), start, t0)
    height, block_hash, net = await mine_block(chain)
    block_id = ledger.record_block(height, block_hash, REWARD, t0 + 50, ALICE, "rig", net)
    ledger.credit_block(block_id, POLICY.factor, POLICY.fee_bps, POLICY.fee_address)
    return block_id


async def node_balances(chain: ChainAdapter) -> dict[str, int]:
    return {a: await chain.balance(a) for a in (*MINERS, FEE)}
