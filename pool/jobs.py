"""Jobs: templates from the chain, per-session coinbases, staleness and expiry.

:class:`JobManager` polls the chain adapter for a new tip every ``poll_interval`` and
makes a :class:`Template` — block template + prepared workload + coinbase1/2 paying the
pool — on every new block (``clean``) and every ``refresh_seconds`` (not clean; a new
workload seed each time). Sessions wait on :meth:`JobManager.wait_for_template` and turn a
template into their own :class:`Job` with :meth:`JobManager.make_job`.

A job fixes what a share is judged by: its template (hence header fields and the
network target), the session's extranonce1 and the **share difficulty**; a vardiff change
is a new job with ``clean = false`` (SPEC §12.4). Every job has its own coinbase2: the
coinbase tag ends in ``/JOB_ID``, so the header, hence every ticket, commits to exactly one
job and one difficulty (SPEC §12.8): a ticket cannot be shopped around the session's jobs
for the hardest difficulty it happens to meet. :class:`SessionJobs` keeps a session's
recent jobs (bounded) and answers "which job is this?" with the stale rules:

- a job from before the newest block is stale at once;
- a superseded job of the current block stays valid for ``expiry_seconds``;
- an unknown id (never issued, or pushed out of the bounded book) is stale too.

Extranonce1 = u16 instance_id ‖ 2 random bytes per process start ‖ u32 counter, so two
pool instances (distinct ``instance_id``) never hand out the same one. Job ids are
``TEMPLATE.COUNTER.RUN`` (hex), ``RUN`` naming this process start (its start second and
16 random bits), so an id from before a restart never names a job of the new process.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import trio

from pool.chain.base import ChainAdapter
from pool.health import CHAIN, DependencyHealth
from pool.workloads import JobWork, PreparedWork, WorkloadSource
from protocol import messages
from protocol.chain import BlockTemplate
from protocol.errors import ErrorCode, ProtocolError
from protocol.header import (
    HEADER_VERSION,
    assemble_coinbase,
    coinbase_hash,
    coinbase_parts,
    coins,
    encode_header,
)
from protocol.messages import MAX_JOB_ID
from protocol.target import difficulty_from_bits, target_from_bits, target_from_difficulty

log = logging.getLogger("pool.jobs")

EXTRANONCE1_SIZE = 8
MAX_TAG_BYTES = 255 - 1 - MAX_JOB_ID
"""Longest configured coinbase tag: ``/JOB_ID`` is appended to it in every job."""

ShareKey = tuple[bytes, tuple[int, int]]
"""What makes a ticket unique: ``(H(header), tile)`` (SPEC §12.8)."""


@dataclass(frozen=True)
class Template:
    """One block template with its workload and coinbase halves; shared by all sessions."""

    id: int
    epoch: int  # bumps on every new block (new prev_hash)
    block: BlockTemplate
    work: PreparedWork
    coinbase1: bytes
    tag: str  # the pool's coinbase tag; each job's coinbase2 adds "/JOB_ID"
    clean: bool
    created: float  # trio clock

    @property
    def network_target(self) -> int:
        return target_from_bits(self.block.bits)

    @cached_property
    def network_difficulty(self) -> float:  # (read by every share: worked out once)
        return difficulty_from_bits(self.block.bits)


def job_coinbase2(tag: str, job_id: str) -> bytes:
    """The coinbase2 of one job: ``u8 len ‖ tag "/" job_id`` (SPEC §5.2, §12.8)."""
    raw = f"{tag}/{job_id}".encode()
    if len(raw) > 255:
        raise ValueError(f"coinbase tag {tag[:40]!r}… is over {MAX_TAG_BYTES} bytes")
    return bytes([len(raw)]) + raw


@dataclass
class Job:
    """A template as one session mines it: its extranonce1, share difficulty and
    coinbase2 (which names the job, so its headers are its own)."""

    job_id: str
    template: Template
    extranonce1: bytes
    difficulty: float
    clean: bool
    created: float
    coinbase2: bytes
    superseded: float | None = None  # trio clock when a newer job replaced it
    seen: set[ShareKey] = field(default_factory=set)
    workload: JobWork | None = None  # a per-session workload (useful work); None = template's
    lease_id: int | None = None  # the useful-work lease this job mines; its shares are held

    @property
    def work(self) -> JobWork:
        """The matrices this job mines: its own workload, or the template's synthetic one."""
        return self.workload if self.workload is not None else self.template.work

    @property
    def share_target(self) -> int:
        return target_from_difficulty(self.difficulty)

    def header(self, extranonce2: bytes, ntime: int) -> tuple[bytes, bytes]:
        """``(coinbase, header)`` of a share on this job (two small hashes: cheap)."""
        t = self.template
        coinbase = assemble_coinbase(t.coinbase1, self.extranonce1, extranonce2, self.coinbase2)
        block = t.block
        header = encode_header(
            HEADER_VERSION,
            block.height,
            block.prev_hash,
            coinbase_hash(coinbase),
            self.work.work_root,
            ntime,
            block.bits,
        )
        return coinbase, header

    def notify(self) -> messages.Notify:
        t = self.template
        return messages.Notify(
            job_id=self.job_id,
            clean=self.clean,
            version=HEADER_VERSION,
            height=t.block.height,
            prev_hash=t.block.prev_hash,
            coinbase1=t.coinbase1,
            coinbase2=self.coinbase2,
            time=t.block.time,
            bits=t.block.bits,
            difficulty=self.difficulty,
            work=self.work.work_spec(),
        )


class SessionJobs:
    """The recent jobs of one session, at most ``max_jobs``; see the module doc."""

    def __init__(self, max_jobs: int, expiry_seconds: float) -> None:
        self.max_jobs = max_jobs
        self.expiry_seconds = expiry_seconds
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    @property
    def current(self) -> Job | None:
        return next(reversed(self._jobs.values())) if self._jobs else None

    def add(self, job: Job, now: float) -> None:
        if job.clean:
            self._jobs.clear()
        elif self._jobs:
            latest = self.current
            assert latest is not None
            latest.superseded = now
        self._jobs[job.job_id] = job
        while len(self._jobs) > self.max_jobs:
            self._jobs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._jobs)

    def has_share(self, key: ShareKey) -> bool:
        """Whether any of the session's jobs already took the ticket ``key``."""
        for job in self._jobs.values():  # noqa: SIM110 (a loop: 4x faster, once per submit)
            if key in job.seen:
                return True
        return False

    def lookup(self, job_id: str, current_epoch: int, now: float) -> Job:
        """The job ``job_id`` if shares for it are still accepted, else ``ProtocolError``
        (``STALE``)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise ProtocolError(f"job {job_id!r} is unknown or too old", ErrorCode.STALE)
        if job.template.epoch != current_epoch:
            raise ProtocolError(f"job {job_id!r} is stale: a new block was found", ErrorCode.STALE)
        if job.superseded is not None and now - job.superseded > self.expiry_seconds:
            raise ProtocolError(f"job {job_id!r} has expired", ErrorCode.STALE)
        return job


class JobManager:
    """Makes templates from the chain and jobs from templates (see the module doc)."""

    def __init__(
        self,
        chain: ChainAdapter,
        source: WorkloadSource,
        *,
        payout_address: str,
        tag: str,
        instance_id: int,
        poll_interval: float = 1.0,
        refresh_seconds: float = 30.0,
        prepare_limiter: trio.CapacityLimiter | None = None,
        health: DependencyHealth | None = None,
    ) -> None:
        self.chain = chain
        self.health = health if health is not None else DependencyHealth()
        self.source = source
        self.payout_address = payout_address
        self.tag = tag
        self.poll_interval = poll_interval
        self.refresh_seconds = refresh_seconds
        self._limiter = prepare_limiter or trio.CapacityLimiter(1)
        self._en1_prefix = struct.pack(">H", instance_id) + secrets.token_bytes(2)
        self._en1_counter = itertools.count(1)
        self._job_counter = itertools.count(1)
        self.run_id = f"{int(time.time()) & 0xFFFFFFFF:x}{secrets.randbits(16):04x}"
        self._template_ids = itertools.count(1)
        self.current: Template | None = None
        self.template_received: float | None = None  # time.monotonic() of the last template
        self.epoch = 0
        self._tip: bytes | None = None
        self._changed = trio.Event()
        self._poke = trio.Event()

    # -- extranonce1 and jobs -------------------------------------------------------------

    def new_extranonce1(self) -> bytes:
        """A fresh extranonce1, unique within this instance and across instances."""
        return self._en1_prefix + struct.pack(">I", next(self._en1_counter) & 0xFFFFFFFF)

    def make_job(
        self,
        template: Template,
        extranonce1: bytes,
        difficulty: float,
        clean: bool,
        now: float,
        workload: JobWork | None = None,
        lease_id: int | None = None,
    ) -> Job:
        """A session's job on ``template``; ``workload`` replaces the template's matrices
        (a leased useful-work unit, ``lease_id``)."""
        job_id = f"{template.id:x}.{next(self._job_counter):x}.{self.run_id}"
        return Job(
            job_id,
            template,
            extranonce1,
            difficulty,
            clean,
            now,
            job_coinbase2(template.tag, job_id),
            workload=workload,
            lease_id=lease_id,
        )

    # -- templates ------------------------------------------------------------------------

    async def wait_for_template(self, after_id: int = 0) -> Template:
        """The current template once its id is newer than ``after_id``."""
        while self.current is None or self.current.id <= after_id:
            await self._changed.wait()
        return self.current

    def template_age(self) -> float:
        """Seconds since the chain last gave a template (0 before the first)."""
        received = self.template_received
        return 0.0 if received is None else max(0.0, time.monotonic() - received)

    def poke(self) -> None:
        """Check the chain now (after a block was found) instead of at the next poll."""
        self._poke.set()

    async def refresh(self, *, clean: bool | None = None) -> Template:
        """Fetch a template and publish it; ``clean`` defaults to "the tip moved"."""
        block = await self.chain.template()
        self.template_received = time.monotonic()
        new_block = block.prev_hash != self._tip
        if clean is None:
            clean = new_block or self.current is None
        work = await trio.to_thread.run_sync(self.source.prepare, block, limiter=self._limiter)
        if new_block or self.current is None:
            self.epoch += 1
            self._tip = block.prev_hash
        c1, _ = coinbase_parts(
            block.height, block.reward, self.payout_address, self.tag, EXTRANONCE1_SIZE
        )
        template = Template(
            next(self._template_ids),
            self.epoch,
            block,
            work,
            c1,
            self.tag,
            clean,
            trio.current_time(),
        )
        self.current = template
        self._changed.set()
        self._changed = trio.Event()
        if new_block:
            log.info(
                "new block template: height %d, network difficulty %.6g, reward %s coins",
                block.height,
                template.network_difficulty,
                coins(block.reward),
            )
        return template

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish the first template, then follow the chain tip and refresh periodically.

        Until the chain answers for the first time, retry (logging why) with a backoff.
        """
        delay = self.poll_interval
        while True:
            try:
                await self.refresh(clean=True)
                self.health.up(CHAIN)
                break
            except Exception as exc:
                self.health.down(CHAIN, str(exc))
                log.warning("waiting for the chain (retry in %.0f s): %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
        task_status.started()
        last_refresh = trio.current_time()
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._poke.wait()
            self._poke = trio.Event()
            try:
                _, tip_hash = await self.chain.tip()
                now = trio.current_time()
                if tip_hash != self._tip:
                    await self.refresh(clean=True)
                    last_refresh = now
                elif now - last_refresh >= self.refresh_seconds:
                    await self.refresh(clean=False)
                    last_refresh = now
                self.health.up(CHAIN)
            except Exception as exc:  # a chain hiccup must not stop the pool
                # Logged once per outage by the health report, not once per poll.
                log.debug("could not get work from the chain: %s", exc)
                self.health.down(CHAIN, f"could not get work from the chain: {exc}")
