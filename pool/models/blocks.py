"""A layer share that met the network target (SPEC §12.12.8, "A block"): its block.

The share itself is held under its lease (credited once the unit's audit passed), but the
block is recorded and submitted at once, like every found block (``pool.share_check``):
recorded first (durable intent; ``pool.block_submitter`` resubmits one the node did not
answer), then submitted with ``protocol.model_share.layer_block`` (the 16 + 16 rows and
their proofs against ``a_root_l`` and ``b_root_l``), then credited by PPLNS when accepted.
"""

from __future__ import annotations

import logging

from pool.jobs import Job
from pool.ledger.base import ShareRecord
from pool.share_check import Miner, ShareChecker
from protocol.model_share import LayerShare, TileOpening, layer_block

log = logging.getLogger("pool.shares")


async def submit_layer_block(
    checker: ShareChecker,
    miner: Miner,
    job: Job,
    share: LayerShare,
    weights: TileOpening,
    record: ShareRecord,
) -> bytes | None:
    """Record, submit and credit the block of ``share``; its hash when the node accepted
    it, None otherwise (rejected, or left "submitting" for the resubmitter)."""
    t = job.template
    height, reward = t.block.height, t.block.reward
    sub = layer_block(share, weights)
    what = f" on model layer {share.head.layer}"
    return await checker.submit_found_block(miner, height, reward, record, sub, what)
