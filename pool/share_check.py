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
20     the share could not be stored (never acknowledged then; it may be resubmitted);
       counted as ``pool_error``, not as the miner's fault
=====  ==========================================================================

Credit = proven work (SPEC §12.8): each job's coinbase names the job, so a header belongs
to one job and a ticket is a share of that job's difficulty only; an ack means the share
was stored as new and is credited (``ShareLog.commit`` says whether the ledger took it).

24, 25, 26 and 27 (message rate) are the session's. The ticket's numpy and hashing runs in
a check thread, several submits a call (:mod:`pool.check_batch`); :meth:`ShareChecker.check`
awaits each step in turn, :mod:`pool.submit_pipeline` runs the same steps without a task.

An accepted share is committed through the :class:`~pool.sharelog.ShareLog` before the
ack. A share that also meets the network target is submitted to the chain at once
(``BlockSubmission`` with the workload seed, or for a useful-work unit its 16 + 16 rows
with Merkle proofs), recorded in the ledger with that submission first, then credited by
PPLNS; a submission the node does not answer is kept and tried again
(:mod:`pool.block_submitter`).

A share of a job made for a useful-work lease (``Job.lease_id``) is **held** in the work
queue instead of the ledger; :meth:`ShareChecker.credit` writes it once the unit's result
verified. If the lease has ended, the share is stale (21).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from pool.abuse import CheckBudget
from pool.block_submitter import credit_accepted_block, encode_submission, node_verdict, unanswered
from pool.chain.base import ChainAdapter
from pool.check_batch import Answer, CheckBatcher
from pool.check_procs import CheckProcesses
from pool.jobs import Job, JobManager, SessionJobs
from pool.ledger.base import Ledger, ShareRecord
from pool.metrics import PoolMetrics
from pool.pplns import PplnsPolicy
from pool.share_rules import CheckedTicket, Prechecked, ShareRejected, precheck
from pool.sharelog import ShareLog, ShareLogError
from pool.useful.service import UsefulWork
from protocol import messages
from protocol.chain import BlockSubmission
from protocol.errors import ErrorCode, ProtocolError
from protocol.header import Header, coins

log = logging.getLogger("pool.shares")

T = TypeVar("T")


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


@contextlib.contextmanager
def _released_unless_stored(job: Job, pre: Prechecked) -> Iterator[None]:
    try:
        yield
    except ShareRejected as exc:
        if exc.code == ErrorCode.OTHER:  # not stored: a resubmit must not be a duplicate
            job.seen.discard(pre.key)
        raise


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
        submit_timeout: float = 10.0,
        processes: CheckProcesses | None = None,
    ) -> None:
        self.jobs = jobs
        self.sharelog = sharelog
        self.chain = chain
        self.ledger = ledger
        self.ledger_limiter = ledger_limiter
        self.check_limiter = check_limiter
        self.policy = PplnsPolicy(pplns_factor, fee_bps, fee_address)
        self.max_shares_per_job = max_shares_per_job
        self.metrics = metrics
        self.useful = useful
        self.budget = budget
        self.submit_timeout = submit_timeout  # then a found block is left to the resubmitter
        # Timed inside the thread: the metric is the check, not the wait for a thread.
        # With check processes, their limiter bounds the batches in flight.
        self.batcher = CheckBatcher(
            check_limiter if processes is None else processes.limiter,
            observe=metrics.share_check_seconds.observe,
            processes=processes,
        )

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
        pre = self.admit(miner, book, job, submit)
        try:
            answer: Answer = await self.batcher.check(job, pre.coinbase, pre.header, submit.tile)
        except Exception as exc:
            answer = exc
        checked, record = self.to_record(miner, job, pre, submit, answer)
        return await self.store(miner, job, pre, submit, checked, record)

    def admit(
        self, miner: Miner, book: SessionJobs, job: Job, submit: messages.Submit
    ) -> Prechecked:
        """The cheap rules and the check budget; the ticket's key is reserved on success."""
        pre = precheck(book, job, submit, self.max_shares_per_job)
        if self.budget is not None and not self.budget.allow(
            miner.ip, miner.session_id, trio.current_time()
        ):
            job.seen.discard(pre.key)  # not checked: the same share may come again
            raise ShareRejected(
                "too many share checks from your IP address; slow down", ErrorCode.RATE_LIMITED
            )
        return pre

    def to_record(
        self, miner: Miner, job: Job, pre: Prechecked, submit: messages.Submit, answer: Answer
    ) -> tuple[CheckedTicket, ShareRecord]:
        """The check's answer as a share to store, or the ``ShareRejected`` it makes."""
        if isinstance(answer, ShareRejected):  # not checked (a check process died): may come again
            job.seen.discard(pre.key)
            raise answer
        if isinstance(answer, ProtocolError):  # the header, coinbase or ticket rules
            raise ShareRejected(f"share cannot be checked: {answer}", answer.code) from None
        if isinstance(answer, Exception):  # a bug: reject the share, keep the session, say so
            log.error(
                "share check of job %s failed unexpectedly",
                submit.job_id,
                exc_info=(type(answer), answer, answer.__traceback__),
            )
            raise ShareRejected(f"share cannot be checked: {answer}", ErrorCode.OTHER) from None
        if not answer.meets_share:  # (the key stays taken: the same ticket fails again)
            raise ShareRejected(
                f"ticket does not meet the job's difficulty {job.difficulty:g}",
                ErrorCode.LOW_DIFFICULTY,
            )
        t = job.template
        record = ShareRecord(
            digest=answer.digest,
            time=time.time(),
            address=miner.address,
            worker=miner.worker,
            job_id=job.job_id,
            height=t.block.height,
            difficulty=job.difficulty,
            network_difficulty=t.network_difficulty,
            session_id=miner.session_id,
        )
        return answer, record

    async def store(
        self,
        miner: Miner,
        job: Job,
        pre: Prechecked,
        submit: messages.Submit,
        checked: CheckedTicket,
        record: ShareRecord,
    ) -> AcceptedShare:
        """Store a checked share (and submit its block); the accepted share."""
        block_hash = None
        with _released_unless_stored(job, pre):
            if checked.meets_network:
                block_hash = await self._submit_block(miner, job, submit.tile, checked, record)
            else:
                await self._keep(job, record)
        return self.accepted(miner, job, checked.digest, block_hash)

    def queued_outcome(self, job: Job, pre: Prechecked, stored: bool | ShareLogError) -> None:
        """Raise the ``ShareRejected`` of a share queued in the share log and not stored."""
        if stored is not True:  # (stored as new, the usual case: nothing to raise or release)
            with _released_unless_stored(job, pre):
                self._store_outcome(stored)

    def accepted(
        self, miner: Miner, job: Job, digest: bytes, block_hash: bytes | None = None
    ) -> AcceptedShare:
        if self.budget is not None:
            self.budget.earn(miner.session_id)
        self.metrics.share_accepted_work(job.difficulty, miner.address, miner.worker)
        return AcceptedShare(job, job.difficulty, digest, block_hash)

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
            stored: bool | ShareLogError = await self.sharelog.commit(record)
        except ShareLogError as exc:
            stored = exc
        self._store_outcome(stored)

    @staticmethod
    def _store_outcome(stored: bool | ShareLogError) -> None:
        """Raise the ``ShareRejected`` of a share the share log did not store as new."""
        if isinstance(stored, ShareLogError):
            raise ShareRejected(
                f"share not stored, please resubmit: {stored}", ErrorCode.OTHER, pool_fault=True
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
        """Store the share, record the block with its submission (durable intent), submit
        it, then credit it.

        Recording before submitting costs a few ms but means a crash at any point never
        leaves a block on chain that the ledger does not know, nor a found block forgotten:
        a block left "submitting" (no answer from the node, or a crash before it came) is
        submitted again by :mod:`pool.block_submitter` until the node answers or the chain
        moves past it (SPEC §12.11).
        """
        t = job.template
        height, reward = t.block.height, t.block.reward
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
        found = await self.submit_found_block(miner, height, reward, record, sub)
        if stale is not None:
            raise stale
        return found

    async def submit_found_block(
        self,
        miner: Miner,
        height: int,
        reward: int,
        record: ShareRecord,
        sub: BlockSubmission,
        what: str = "",
    ) -> bytes | None:
        """Record ``sub`` (durable intent), submit it, and credit it by PPLNS if the node
        accepts it: its hash; None if it was rejected or is left "submitting" for the
        resubmitter. ``what`` (e.g. " on model layer 2") goes into the log lines."""
        block_hash = Header.decode(sub.header).hash()
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
                encode_submission(sub),
            )
        except Exception as exc:  # submit anyway: a block must never be thrown away
            log.error("could not record block %d before submitting it: %s", height, exc)
        try:
            with trio.fail_after(self.submit_timeout):
                accepted, reason = node_verdict(await self.chain.submit_block(sub))
        except Exception as exc:
            if isinstance(exc, trio.TooSlowError):
                exc = TimeoutError(f"no answer within {self.submit_timeout:g} s")
            if unanswered(exc):
                await self._unanswered(miner, height, block_id, exc)
                return None
            accepted, reason = False, f"error: {exc}"
        self.jobs.poke()
        if not accepted:
            self.metrics.block("rejected")
            log.warning(
                "block %d found by %s%s was rejected by the chain: %s",
                height,
                miner.login,
                what,
                reason,
            )
            if block_id is not None:
                await self._ledger_quietly(self.ledger.reject_block, block_id, reason)
            return None
        log.info(
            "block %d found by %s%s, reward %s, submitted: accepted (hash %s)",
            height,
            miner.login,
            what,
            coins(reward),
            block_hash.hex()[:16],
        )
        moved = True
        if block_id is not None:
            moved, _ = await credit_accepted_block(self._ledger, self.ledger, block_id, self.policy)
        if moved:  # else the resubmitter got there first and counted it
            self.metrics.block("found")
        return block_hash

    async def _unanswered(
        self, miner: Miner, height: int, block_id: int | None, exc: Exception
    ) -> None:
        """The node did not answer the first submission: the block stays "submitting"."""
        self.metrics.block("submit_failed")
        if block_id is None:
            log.error(
                "block %d found by %s is LOST: the chain did not answer and the ledger "
                "could not keep it: %s",
                height,
                miner.login,
                exc,
            )
            return
        await self._ledger_quietly(self.ledger.submission_failed, block_id, str(exc))
        log.warning(
            "block %d found by %s: the chain did not answer (%s); kept, it is "
            "submitted again until the node answers",
            height,
            miner.login,
            exc,
        )

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
