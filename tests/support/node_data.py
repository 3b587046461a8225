"""A node's test data: addresses, configs, and blocks mined for a chain (synthetic, blob)."""

from __future__ import annotations

import dataclasses

import numpy as np

from node.config import NodeConfig
from protocol.address import make_address
from protocol.chain import (
    BlockSubmission,
    BlockTemplate,
)
from protocol.hashing import H
from protocol.header import Header, assemble_coinbase, coinbase_hash, coinbase_parts
from protocol.merkle import RowTree
from protocol.target import target_from_bits
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload

SHAPE = Shape(32, 32, 128, 32)


SEED = H(b"test workload seed")


POOL = make_address(b"\x01" * 20)


ALICE = make_address(b"\x02" * 20)


EN1 = b"\xaa\xbb\xcc\xdd"


REWARD = 50 * 10**8


_WORKLOADS: dict[tuple[bytes, Shape], Workload] = {}


def synthetic(seed: bytes = SEED, shape: Shape = SHAPE) -> Workload:
    if (seed, shape) not in _WORKLOADS:
        _WORKLOADS[seed, shape] = Workload.synthetic(seed, shape)
    return _WORKLOADS[seed, shape]


def config(**changes: object) -> NodeConfig:
    base = dict(start_difficulty=0.001, min_difficulty=1e-6, maturity=3)
    base.update(changes)
    return NodeConfig(**base)  # type: ignore[arg-type]


@dataclasses.dataclass
class Found:
    """A mined header with a winning tile and (for the tests) a losing one."""

    header: bytes
    coinbase: bytes
    winner: tuple[int, int]
    loser: tuple[int, int] | None
    winners: set[tuple[int, int]]


def mine(
    template: BlockTemplate,
    workload: Workload,
    *,
    address: str = POOL,
    time: int | None = None,
    bits: int | None = None,
    reward: int | None = None,
    height: int | None = None,
    cb_height: int | None = None,
    prev_hash: bytes | None = None,
    work_root: bytes | None = None,
    tag: str = "test",
    attempts: int = 20_000,
) -> Found:
    """Roll extranonce2 until a header has a ticket that meets its own bits."""
    h = template.height if height is None else height
    bits = template.bits if bits is None else bits
    c1, c2 = coinbase_parts(
        h if cb_height is None else cb_height,
        template.reward if reward is None else reward,
        address,
        tag,
        len(EN1),
    )
    target = target_from_bits(bits)
    for n in range(attempts):
        cb = assemble_coinbase(c1, EN1, n.to_bytes(8, "little"), c2)
        header = Header(
            1,
            h,
            template.prev_hash if prev_hash is None else prev_hash,
            coinbase_hash(cb),
            workload.work_root if work_root is None else work_root,
            template.time if time is None else time,
            bits,
        ).encode()
        work = mine_header(header, workload)
        winners = work.winners(target, workload.shape.k)
        if winners:
            won = {(ti, tj) for ti, tj, _ in winners}
            losers = [
                (ti, tj)
                for ti in range(workload.shape.tiles_m)
                for tj in range(workload.shape.tiles_n)
                if (ti, tj) not in won
            ]
            return Found(header, cb, winners[0][:2], losers[0] if losers else None, won)
    raise AssertionError("no winning ticket found; is the test difficulty too high?")


def synthetic_sub(
    found: Found, seed: bytes = SEED, shape: Shape = SHAPE, tile: tuple[int, int] | None = None
) -> BlockSubmission:
    return BlockSubmission(
        found.header, found.coinbase, shape, found.winner if tile is None else tile, seed
    )


BLOB_SHAPE = Shape(48, 32, 128, 32)  # 48 rows: the A tree is padded to 64 leaves


def blob_workload() -> Workload:
    rng = np.random.default_rng(7)
    a = rng.integers(-64, 65, size=(BLOB_SHAPE.m, BLOB_SHAPE.k), dtype=np.int8)
    bt = rng.integers(-64, 65, size=(BLOB_SHAPE.n, BLOB_SHAPE.k), dtype=np.int8)
    return Workload(BLOB_SHAPE, a, bt)


def blob_sub(found: Found, w: Workload, tile: tuple[int, int] | None = None) -> BlockSubmission:
    ti, tj = found.winner if tile is None else tile
    a_tree, b_tree = RowTree(w.a), RowTree(w.bt)
    return BlockSubmission(
        found.header,
        found.coinbase,
        w.shape,
        (ti, tj),
        None,
        a_rows=w.a[16 * ti : 16 * ti + 16].tobytes(),
        bt_rows=w.bt[16 * tj : 16 * tj + 16].tobytes(),
        a_proofs=[a_tree.proof(16 * ti + i) for i in range(16)],
        b_proofs=[b_tree.proof(16 * tj + i) for i in range(16)],
        a_root=w.a_root,
        b_root=w.b_root,
    )
