"""A layer share that met the network target (SPEC §12.12.8, "A block"): its block.

The share itself is held under its lease (credited once the unit's audit passed), but the
block is recorded and submitted at once, like every found block (``pool.share_check``):
recorded first (durable intent; ``pool.block_submitter`` resubmits one the node did not
answer), then submitted with ``protocol.model_share.layer_block`` (the 16 + 16 rows and
their proofs against ``a_root_l`` and ``b_root_l``), then credited by PPLNS when accepted.
"""

from __future__ import annotations

import logging

import trio

from pool.block_submitter import credit_accepted_block, encode_submission, node_verdict, unanswered
from pool.jobs import Job
from pool.ledger.base import ShareRecord
from pool.share_check import Miner, ShareChecker
from protocol.header import Header, coins
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
    block_hash = Header.decode(share.head.header).hash()
    sub = layer_block(share, weights)
    block_id = None
    try:
        block_id = await checker._ledger(
            checker.ledger.record_block,
            height,
            block_hash,
            reward,
            record.time,
            record.address,
            record.worker,
            record.network_difficulty,
            encode_submission(sub),
        )
    except Exception as exc:  # submit anyway: a block must never be thrown away
        log.error("could not record block %d before submitting it: %s", height, exc)
    try:
        with trio.fail_after(checker.submit_timeout):
            accepted, reason = node_verdict(await checker.chain.submit_block(sub))
    except Exception as exc:
        if isinstance(exc, trio.TooSlowError):
            exc = TimeoutError(f"no answer within {checker.submit_timeout:g} s")
        if unanswered(exc):
            await checker._unanswered(miner, height, block_id, exc)
            return None
        accepted, reason = False, f"error: {exc}"
    checker.jobs.poke()
    if not accepted:
        checker.metrics.block("rejected")
        log.warning(
            "block %d (model layer %d) found by %s was rejected by the chain: %s",
            height,
            share.head.layer,
            miner.login,
            reason,
        )
        if block_id is not None:
            await checker._ledger_quietly(checker.ledger.reject_block, block_id, reason)
        return None
    log.info(
        "block %d found by %s on model layer %d, reward %s, submitted: accepted (hash %s)",
        height,
        miner.login,
        share.head.layer,
        coins(reward),
        block_hash.hex()[:16],
    )
    moved = True
    if block_id is not None:
        moved, _ = await credit_accepted_block(
            checker._ledger, checker.ledger, block_id, checker.policy
        )
    if moved:
        checker.metrics.block("found")
    return block_hash
