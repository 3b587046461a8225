"""A block found on a model layer's header (SPEC §12.12.8): the node checks it like any blob
block, from the A and Bᵀ openings alone, with no change of its rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.chain import Chain
from protocol.chain import BlockSubmission
from protocol.hashing import H
from protocol.model_share import check_layer_share, layer_block
from protocol.target import target_from_bits
from tests.support.model_jobs import EN1, Unit, batch, layer_submit, make_model, mine_layer
from tests.support.node_data import POOL, config

T0 = 1_700_000_000


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    now = [T0 + 20.0]
    c = Chain.open(tmp_path / "node", config(), lambda: now[0])
    yield c
    c.close()


def layer_block_of(chain: Chain, unit: Unit, layer: int) -> BlockSubmission:
    """A block from a header of ``layer`` mined at the chain's (very low) difficulty, built
    the way a pool builds it: the share checked first, then its openings."""
    t = chain.template()
    job = unit.job(
        1e-6,  # the share difficulty, below the network's
        bits=t.bits,
        height=t.height,
        prev_hash=t.prev_hash,
        time=t.time,
        reward=t.reward,
        address=POOL,
    )
    mined = mine_layer(unit, job, layer, target_from_bits(t.bits), need_loser=False)
    tile = mined.winners[0]
    submit = layer_submit(unit, job, layer, mined, tile)
    w = unit.workloads[layer]
    share = check_layer_share(job, EN1, submit, w.bt[16 * tile[1] : 16 * tile[1] + 16])
    assert share.meets_network
    return layer_block(share, unit.opening(layer, tile[1], "B"))


def test_a_block_on_a_layer_header_is_accepted(chain: Chain) -> None:
    unit = Unit(make_model(), batch(20, 40))
    sub = layer_block_of(chain, unit, 1)  # a_root_1: the worker's own activation
    result = chain.submit_block(sub)
    assert result.accepted, result.reason
    assert chain.tip() == (1, H(sub.header))
    # The next block, on the last layer of another unit (a 48-row unit: 64-leaf A tree).
    other = Unit(make_model(seed=3), batch(40, 40, seed=5))
    assert chain.submit_block(layer_block_of(chain, other, 2)).accepted


def test_a_tampered_opening_of_a_layer_block_is_refused(chain: Chain) -> None:
    unit = Unit(make_model(), batch(20, 40))
    sub = layer_block_of(chain, unit, 1)
    rows = bytearray(sub.a_rows or b"")
    rows[7] = (rows[7] + 1) % 64
    tampered = dataclasses.replace(sub, a_rows=bytes(rows))
    assert chain.submit_block(tampered).reason == "bad-merkle-proof"
    proofs = [list(p) for p in sub.b_proofs or []]
    proofs[2][-1] = H(b"forged sibling")
    assert (
        chain.submit_block(dataclasses.replace(sub, b_proofs=proofs)).reason == "bad-merkle-proof"
    )
    other_layer = unit.source().layers[2].b_root  # the weights of another layer
    assert (
        chain.submit_block(dataclasses.replace(sub, b_root=other_layer)).reason == "bad-work-root"
    )
    activation = unit.workloads[2].a_root  # another activation than the header's
    assert chain.submit_block(dataclasses.replace(sub, a_root=activation)).reason == "bad-work-root"
    assert chain.submit_block(sub).accepted
