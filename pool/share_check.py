"""Checking a submit, storing the share, and turning a block-meeting share into a block.

:meth:`ShareChecker.check` runs every rule of a ``mining.submit`` and answers with an
:class:`AcceptedShare` or raises :class:`ShareRejected` with the wire code:

=====  ==========================================================================
code   when
=====  ==========================================================================
21     unknown job, a job from before the newest block, or an expired job
20     tile outside the job's tile grid (the code ``protocol.ticket.verify_ticket``
       uses for it; 26 stays for shares that do not even parse)
28     ``time`` before the job's time or more than 600 s after it
22     the same ticket — ``(H(header), tile)`` — already taken by one of the session's
       jobs, or already in the ledger for another share (SPEC §12.8)
27     the job has seen ``max_shares_per_job`` shares (the per-job duplicate
       memory is bounded; take the next job)
23     the ticket does not meet the job's share difficulty
20     the share could not be stored (never acknowledged then; it may be resubmitted)
=====  ==========================================================================

Credit = proven work (SPEC §12.8): each job's coinbase names the job, so a header belongs
to one job and a ticket is a share of that job's difficulty only; an ack means the share
was stored as new and is credited (``ShareLog.commit`` says whether the ledger took it).

24 (unauthorized), 25 (not subscribed), 26 (malformed) and 27 (message rate) are the
session's (``pool.session``). Everything that touches numpy or hashes rows — building the
coinbase and header, regenerating 16 rows of A and Bᵀ, recomputing the ticket — runs in
a worker thread behind a ``CapacityLimiter``; the event loop only does dictionary work.

An accepted share is committed through the :class:`~pool.sharelog.ShareLog` before the
ack. A share that also meets the network target is submitted to the chain at once
(``BlockSubmission`` with the workload seed, or for a useful-work unit its 16 + 16 rows
with Merkle proofs), then recorded in the ledger and credited by PPLNS.

A share of a job made for a useful-work lease (``Job.lease_id``) is **held** in the work
queue instead of the ledger; :meth:`ShareChecker.credit` writes it once the unit's result
verified. If the lease has ended, the share is stale (21).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from pool.abuse import CheckBudget
from pool.chain.base import ChainAdapter
from pool.jobs import Job, JobManager, SessionJobs, ShareKey
from pool.ledger.base import Ledger, ShareRecord
from pool.metrics import PoolMetrics
from pool.sharelog import ShareLog, ShareLogError
from pool.useful.service import UsefulWork
from protocol import messages
from protocol.chain import BlockSubmission
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.header import MAX_TIME_ROLL, Header, coins
from protocol.target import meets_target
from protocol.ticket import verify_ticket

log = logging.getLogger("pool.shares")

T = TypeVar("T")


class ShareRejected(ProtocolError):
    """A submit that is not accepted; ``code`` is the wire error code. ``pool_fault``: the
    pool's own state (its ledger could not store the share), never the miner's doing."""

    def __init__(self, message: str, code: int, *, pool_fault: bool = False) -> None:
        super().__init__(message, int(code))
        self.pool_fault = pool_fault


@dataclass(frozen=True)
class CheckedTicket:
    """What the worker thread found: the ticket digest, the header, the coinbase."""

    digest: bytes
    header: bytes
    coinbase: bytes
    meets_share: bool
    meets_network: bool


@dataclass(frozen=True)
class AcceptedShare:
    """An acknowledged share; ``block_hash`` is set when it also made an accepted block."""

    job: Job
    difficulty: float
    digest: bytes
    block_hash: bytes | None = None


@dataclass(frozen=True)
class Miner:
    """Who submits: the session id and the authorized login."""

    session_id: bytes
    address: str
    worker: str
    ip: str = ""

    @property
    def login(self) -> str:
        return f"{short_address(self.address)}.{self.worker}"


def short_address(address: str) -> str:
    """``mmd16fa1…0a`` style: enough to recognise an address in a log line."""
    return f"{address[:8]}…{address[-4:]}" if len(address) > 16 else address


def check_ticket(job: Job, coinbase: bytes, header: bytes, tile: tuple[int, int]) -> CheckedTicket:
    """Recompute the ticket of a submit on ``job``'s ``header`` (from :meth:`Job.header`;
    CPU work: call it in a worker thread)."""
    t = job.template
    work = job.work
    a_rows, bt_rows = work.tile_rows(tile)
    digest = verify_ticket(header, work.shape, tile, a_rows, bt_rows)
    k = work.shape.k
    return CheckedTicket(
        digest,
        header,
        coinbase,
        meets_target(digest, job.share_target, k),
        meets_target(digest, t.network_target, k),
    )


@dataclass(frozen=True)
class Prechecked:
    """A submit past the cheap rules: its ticket's key (reserved), coinbase and header."""

    key: ShareKey
    coinbase: bytes
    header: bytes


def precheck(
    book: SessionJobs, job: Job, submit: messages.Submit, max_shares_per_job: int
) -> Prechecked:
    """The cheap rules (tile, time, duplicate across the session's jobs); reserves the
    ticket's key ``(H(header), tile)`` in ``job`` on success."""
    shape = job.work.shape
    ti, tj = submit.tile
    if not (ti < shape.tiles_m and tj < shape.tiles_n):
        raise ShareRejected(
            f"tile {list(submit.tile)} is outside the job's {shape.tiles_m}x{shape.tiles_n} tiles",
            ErrorCode.OTHER,
        )
    job_time = job.template.block.time
    if submit.time < job_time:
        raise ShareRejected(
            f"time {submit.time} is before the job's time {job_time}", ErrorCode.BAD_TIME
        )
    if submit.time > job_time + MAX_TIME_ROLL:
        raise ShareRejected(
            f"time {submit.time} is more than {MAX_TIME_ROLL} s after the job's time {job_time}",
            ErrorCode.BAD_TIME,
        )
    try:
        coinbase, header = job.header(submit.extranonce2, submit.time)
    except ProtocolError as exc:
        raise ShareRejected(f"share cannot be checked: {exc}", exc.code) from None
    key: ShareKey = (H(header), (ti, tj))
    if book.has_share(key):
        raise ShareRejected("duplicate share", ErrorCode.DUPLICATE)
    if len(job.seen) >= max_shares_per_job:
        raise ShareRejected(
            "too many shares for one job; mine the newest job", ErrorCode.RATE_LIMITED
        )
    job.seen.add(key)
    return Prechecked(key, coinbase, header)


class ShareChecker:
    """Runs the submit pipeline: rules, ticket check, durable store, block submission."""

    def __init__(
        self,
        jobs: JobManager,
        sharelog: ShareLog,
        chain: ChainAdapter,
        ledger: Ledger,
        ledger_limiter: trio.CapacityLimiter,
        check_limiter: trio.CapacityLimiter,
        *,
        pplns_factor: float,
        fee_bps: int,
        fee_address: str | None,
        max_shares_per_job: int,
        metrics: PoolMetrics,
        useful: UsefulWork | None = None,
        budget: CheckBudget | None = None,
    ) -> None:
        self.jobs = jobs
        self.sharelog = sharelog
        self.chain = chain
        self.ledger = ledger
        self.ledger_limiter = ledger_limiter
        self.check_limiter = check_limiter
        self.pplns_factor = pplns_factor
        self.fee_bps = fee_bps
        self.fee_address = fee_address
        self.max_shares_per_job = max_shares_per_job
        self.metrics = metrics
        self.useful = useful
        self.budget = budget

    def count(self, code: int | None) -> None:
        """Count one submit outcome in the shares metric (None = accepted)."""
        if code is None:
            self.metrics.share("accepted")
        else:
            self.metrics.share_rejected(code)

    async def check(
        self, miner: Miner, book: SessionJobs, submit: messages.Submit
    ) -> AcceptedShare:
        """Judge ``submit``; return the accepted share once stored, or raise ``ShareRejected``."""
        try:
            job = book.lookup(submit.job_id, self.jobs.epoch, trio.current_time())
        except ProtocolError as exc:
            raise ShareRejected(str(exc), exc.code) from None
        pre = precheck(book, job, submit, self.max_shares_per_job)
        if self.budget is not None and not self.budget.allow(
            miner.ip, miner.session_id, trio.current_time()
        ):
            job.seen.discard(pre.key)  # not checked: the same share may come again
            raise ShareRejected(
                "too many share checks from your IP address; slow down", ErrorCode.RATE_LIMITED
            )

        def timed_check() -> CheckedTicket:
            # Timed inside the thread: the metric is the check, not the wait for a thread.
            started = time.perf_counter()
            try:
                return check_ticket(job, pre.coinbase, pre.header, submit.tile)
            finally:
                self.metrics.share_check_seconds.observe(time.perf_counter() - started)

        try:
            checked = await trio.to_thread.run_sync(timed_check, limiter=self.check_limiter)
        except ProtocolError as exc:  # the header, coinbase or ticket rules
            raise ShareRejected(f"share cannot be checked: {exc}", exc.code) from None
        except Exception as exc:  # a bug: reject the share, keep the session, say so loudly
            log.exception("share check of job %s failed unexpectedly", submit.job_id)
            raise ShareRejected(f"share cannot be checked: {exc}", ErrorCode.OTHER) from None
        if not checked.meets_share:  # (the key stays taken: the same ticket fails again)
            raise ShareRejected(
                f"ticket does not meet the job's difficulty {job.difficulty:g}",
                ErrorCode.LOW_DIFFICULTY,
            )
        t = job.template
        record = ShareRecord(
            digest=checked.digest,
            time=time.time(),
            address=miner.address,
            worker=miner.worker,
            job_id=job.job_id,
            height=t.block.height,
            difficulty=job.difficulty,
            network_difficulty=t.network_difficulty,
            session_id=miner.session_id,
        )
        block_hash = None
        try:
            if checked.meets_network:
                block_hash = await self._submit_block(miner, job, submit.tile, checked, record)
            else:
                await self._keep(job, record)
        except ShareRejected as exc:
            if exc.code == ErrorCode.OTHER:  # not stored: a resubmit must not be a duplicate
                job.seen.discard(pre.key)
            raise
        if self.budget is not None:
            self.budget.earn(miner.session_id)
        self.metrics.share_accepted_work(job.difficulty)
        return AcceptedShare(job, job.difficulty, checked.digest, block_hash)

    async def _keep(self, job: Job, record: ShareRecord) -> None:
        """Store a share, or hold it when it was mined on a leased useful-work unit."""
        if job.lease_id is None or self.useful is None:
            await self._store(record)
            return
        try:
            held = await self.useful.hold(job.lease_id, record)
        except Exception as exc:
            raise ShareRejected(
                f"share not stored, please resubmit: {exc}", ErrorCode.OTHER, pool_fault=True
            ) from None
        if not held:
            raise ShareRejected(
                f"job {job.job_id!r}: its work unit is no longer leased to this session",
                ErrorCode.STALE,
            )

    async def credit(self, records: list[ShareRecord]) -> int:
        """Write held shares whose unit verified into the ledger (one transaction)."""
        if not records:
            return 0
        return await self._ledger(self.ledger.insert_shares, records)

    async def _store(self, record: ShareRecord) -> None:
        try:
            stored = await self.sharelog.commit(record)
        except ShareLogError as exc:
            raise ShareRejected(
                f"share not stored, please resubmit: {exc}", ErrorCode.OTHER, pool_fault=True
            ) from None
        if not stored:  # the ledger holds this ticket for another share: no second credit
            raise ShareRejected(
                "duplicate share: this ticket is already credited", ErrorCode.DUPLICATE
            )

    async def _submit_block(
        self,
        miner: Miner,
        job: Job,
        tile: tuple[int, int],
        checked: CheckedTicket,
        record: ShareRecord,
    ) -> bytes | None:
        """Store the share, record the block (durable intent), submit it, then credit it.

        Recording before submitting costs a few ms but means a crash at any point never
        leaves a block on chain that the ledger does not know: the unlocker credits a
        block left "found", and orphans one the chain never accepted.
        """
        t = job.template
        height, reward = t.block.height, t.block.reward
        block_hash = Header.decode(checked.header).hash()
        # The share goes in first: PPLNS counts the shares at or before the block. A share
        # on a useful-work unit is held instead (credited once the unit's result verifies);
        # if its lease has just ended the share is stale, but the block is still submitted.
        stale: ShareRejected | None = None
        try:
            await self._keep(job, record)
        except ShareRejected as exc:
            if exc.code != ErrorCode.STALE:
                raise
            stale = exc
        block_id = None
        try:
            block_id = await self._ledger(
                self.ledger.record_block,
                height,
                block_hash,
                reward,
                record.time,
                record.address,
                record.worker,
                record.network_difficulty,
            )
        except Exception as exc:  # submit anyway: a block must never be thrown away
            log.error("could not record block %d before submitting it: %s", height, exc)
        block_fields = await trio.to_thread.run_sync(
            job.work.block_fields, tile, limiter=self.check_limiter
        )
        sub = BlockSubmission(
            header=checked.header,
            coinbase=checked.coinbase,
            shape=job.work.shape,
            tile=tile,
            **block_fields,
        )
        try:
            result = await self.chain.submit_block(sub)
            accepted, reason = result.accepted, result.reason
        except Exception as exc:
            accepted, reason = False, f"error: {exc}"
        self.jobs.poke()
        self.metrics.block("found" if accepted else "rejected")
        if not accepted:
            log.warning(
                "block %d found by %s was rejected by the chain: %s", height, miner.login, reason
            )
            if block_id is not None:
                await self._ledger_quietly(self.ledger.orphan_block, block_id)
            if stale is not None:
                raise stale
            return None
        log.info(
            "block %d found by %s, reward %s, submitted: accepted (hash %s)",
            height,
            miner.login,
            coins(reward),
            block_hash.hex()[:16],
        )
        if block_id is not None:
            credited = await self._ledger_quietly(
                self.ledger.credit_block,
                block_id,
                self.pplns_factor,
                self.fee_bps,
                self.fee_address,
            )
            if credited is not None:
                credits = await self._ledger_quietly(self.ledger.block_credits, block_id)
                log.info(
                    "block %d credited by PPLNS: %s to %d address(es) over %s shares, fee %s",
                    height,
                    coins(sum((credits or {}).values())),
                    len(credits or {}),
                    credited.shares_used,
                    coins(credited.fee or 0),
                )
        if stale is not None:
            raise stale
        return block_hash

    async def _ledger(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.ledger_limiter)
        finally:
            self.metrics.db_write_seconds.observe(time.perf_counter() - started)

    async def _ledger_quietly(self, fn: Callable[..., T], *args: Any) -> T | None:
        """A ledger call whose failure the unlocker repairs later: log it, carry on."""
        try:
            return await self._ledger(fn, *args)
        except Exception as exc:
            log.error("ledger %s failed (the unlocker will retry): %s", fn.__name__, exc)
            return None
