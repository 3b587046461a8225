"""Model jobs in the pool's sessions (SPEC §12.12.8): the submit branch of a share on a
model job, and the desk's hooks into the sessions and the HTTP app.

- :func:`check_submit` — the one place a submit is routed: a share on a model job goes
  through :meth:`~pool.models.desk.ModelDesk.check_share` (``check_layer_share``, held until
  the audit), every other share through ``ShareChecker.check`` as before;
- :func:`open_model_jobs` — the desk, its HTTP routes and its session callbacks for
  ``pool.app``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.routing import Route

from pool.inbox import OfferWork, ResultRejected, WorkLost
from pool.ledger.base import ShareRecord
from pool.models.api import create_model_routes
from pool.models.blocks import submit_layer_block
from pool.models.desk import ModelDesk
from pool.models.registry import ModelRegistry
from pool.models.routes import DATA_PREFIX, create_infer_routes
from pool.models.units import ModelJobWork
from pool.share_check import AcceptedShare, Miner, ShareChecker
from pool.share_rules import ShareRejected
from protocol import messages
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.model_share import LayerShare, layer_header

if TYPE_CHECKING:
    from pool.context import PoolContext
    from pool.jobs import Job, SessionJobs

log = logging.getLogger("pool.models")


async def check_submit(
    ctx: PoolContext, miner: Miner, book: SessionJobs, submit: messages.Submit
) -> AcceptedShare:
    """Judge ``submit``: on a model job by layer, else by ``ctx.checker`` as always."""
    desk = ctx.models
    if desk is None:
        return await ctx.checker.check(miner, book, submit)
    try:
        job = book.lookup(submit.job_id, ctx.jobs.epoch, trio.current_time())
    except ProtocolError:
        return await ctx.checker.check(miner, book, submit)  # refused there, as always
    if not isinstance(job.workload, ModelJobWork):
        return await ctx.checker.check(miner, book, submit)
    return await check_model_share(desk, ctx.checker, miner, book, job, submit)


async def check_model_share(
    desk: ModelDesk,
    checker: ShareChecker,
    miner: Miner,
    book: SessionJobs,
    job: Job,
    submit: messages.Submit,
) -> AcceptedShare:
    """A share on a model job: the duplicate rule over the session's jobs, then every rule
    of ``check_layer_share``; held under its lease until the unit's audit."""
    assert isinstance(job.workload, ModelJobWork)
    lease = job.workload.lease
    notify = job.notify()
    try:
        head = layer_header(notify, job.extranonce1, submit)  # the cheap rules first
    except ProtocolError as exc:
        raise ShareRejected(f"share cannot be checked: {exc}", exc.code) from None
    key = (H(head.header), submit.tile)
    if book.has_share(key):
        raise ShareRejected("duplicate share", ErrorCode.DUPLICATE)
    job.seen.add(key)  # (a ticket that fails keeps its key: it fails again)
    t = job.template

    def record(share: LayerShare) -> ShareRecord:
        return ShareRecord(
            digest=share.digest,
            time=time.time(),
            address=miner.address,
            worker=miner.worker,
            job_id=job.job_id,
            height=t.block.height,
            difficulty=job.difficulty,
            network_difficulty=t.network_difficulty,
            session_id=miner.session_id,
        )

    try:
        share = await desk.check_share(lease.id, notify, job.extranonce1, submit, record)
    except ProtocolError as exc:
        raise ShareRejected(f"share cannot be checked: {exc}", exc.code) from None
    block_hash = None
    if share.meets_network:  # the share stays held; its block goes to the node at once
        weights = desk.weights_opening(lease, share.head.layer, share.tile[1])
        block_hash = await submit_layer_block(checker, miner, job, share, weights, record(share))
    checker.metrics.share_accepted_work(job.difficulty, miner.address, miner.worker)
    return AcceptedShare(job, job.difficulty, share.digest, block_hash)


def _sessions_of(ctx: PoolContext, work_key: str) -> list[Any]:
    return [s for s in list(ctx.sessions) if s.work_key == work_key]


def model_data_url(data_url: str) -> str:
    """The model data plane beside the useful one (``…/data`` → ``…/model-data``)."""
    return data_url.rsplit("/data", 1)[0] + DATA_PREFIX


def open_model_jobs(
    ctx: PoolContext, data_dir: Path, limiter: trio.CapacityLimiter
) -> tuple[ModelDesk, list[Route]]:
    """The pool's model desk (no jobs until its ``data_url`` is set), the model and
    inference routes, and the callbacks into its sessions' inboxes."""

    def verdict(session: str, passed: bool, voided: int) -> None:
        for s in _sessions_of(ctx, session):
            if not passed:
                s.inbox.post(ResultRejected(max(1, voided)))  # like a wrong product
            if not desk.holds(session):  # (once delivered, it has had its next job)
                s.inbox.post(WorkLost())  # its next job: another unit, or synthetic

    def delivered(session: str) -> None:
        for s in _sessions_of(ctx, session):
            s.inbox.post(WorkLost())  # its next job while the delivered unit's audit runs

    def queued() -> None:
        for s in list(ctx.sessions):
            if s.model_capable and s.authorized:
                s.inbox.post(OfferWork())

    metrics = None if ctx.useful is None else ctx.useful.metrics

    def held(record: Any) -> None:  # mined useful MACs, as for a share on a product's unit
        if metrics is not None:
            metrics.share_held(record.address, record.worker, record.difficulty)

    def passed(macs: int, records: list[Any]) -> None:  # verified useful MACs of the pass
        if metrics is not None:
            worker = (records[0].address, records[0].worker) if records else None
            metrics.result_checked("pass", macs, worker)

    desk = ModelDesk(
        ctx.config.models,
        limiter,
        on_verdict=verdict,
        on_queued=queued,
        on_held=held,
        on_passed=passed,
        on_delivered=delivered,
        max_frame_size=ctx.config.stratum.max_frame_size,
    )
    registry = ModelRegistry(data_dir)

    async def credit(records: list[Any]) -> object:
        return await ctx.checker.credit(records)

    routes = create_infer_routes(desk, registry, limiter, credit)
    return desk, routes + create_model_routes(registry, limiter)
