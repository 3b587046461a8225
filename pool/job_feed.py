"""A session's jobs: made, remembered and sent in one order (SPEC §wire.notify).

:class:`JobFeed` sends a miner its jobs: a new one on every template once it is
authorized (:meth:`run`), on every vardiff change (:meth:`new_difficulty`), and whenever
the session asks for fresh work. A job is on the session's leased useful-work unit when
it has one (a new unit makes the job clean), synthetic otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pool.jobs import JobManager, SessionJobs, Template
from pool.miner_state import MinerState
from pool.useful.lease import UsefulLease
from pool.vardiff import Vardiff
from protocol.messages import Message

log = logging.getLogger("pool.session")


class JobFeed:
    """The job side of one session; ``notify`` sends a notification to its miner."""

    __slots__ = (
        "_lock", "_metrics", "_notify", "_template_id", "book", "jobs", "lease", "miner",
        "vardiff",
    )  # fmt: skip

    def __init__(
        self,
        jobs: JobManager,
        miner: MinerState,
        book: SessionJobs,
        vardiff: Vardiff,
        lease: UsefulLease,
        notify: Callable[[Message], Awaitable[None]],
        metrics: Any | None = None,
    ) -> None:
        self.jobs = jobs
        self.miner = miner
        self.book = book
        self.vardiff = vardiff
        self.lease = lease
        self._notify = notify
        self._metrics = metrics
        self._template_id = 0
        self._lock = trio.Lock()

    async def run(self, authorized: trio.Event) -> None:
        """Once ``authorized`` is set, send a job on every new template (the first clean)."""
        await authorized.wait()
        first = True
        while True:
            template = await self.jobs.wait_for_template(self._template_id)
            await self.push(template, clean=first or template.clean)
            first = False

    async def push_fresh(self, *, new_unit_only: bool = False) -> None:
        """Send a clean job on the current template now (see :meth:`push`)."""
        await self.push(self.jobs.current, clean=True, new_unit_only=new_unit_only)

    async def push(
        self, template: Template | None, *, clean: bool, new_unit_only: bool = False
    ) -> None:
        """Make, remember and send the session's next job (on its leased unit, if any);
        with ``new_unit_only``, only if that is a unit the session did not mine yet."""
        extranonce1 = self.miner.extranonce1
        if template is None or extranonce1 is None:
            return
        async with self._lock:  # make, remember and send jobs in one order
            leased = await self.lease.lease()
            if new_unit_only and (leased is None or self._holds_lease(leased[0].id)):
                return
            if leased is not None and not self._holds_lease(leased[0].id):
                clean = True  # new unit: shares of the earlier jobs are no use any more
            now = trio.current_time()
            if leased is None:
                job = self.jobs.make_job(template, extranonce1, self.vardiff.difficulty, clean, now)
            else:
                lease, work = leased
                job = self.jobs.make_job(
                    template,
                    extranonce1,
                    self.vardiff.difficulty,
                    clean,
                    now,
                    workload=work,
                    lease_id=lease.id,
                )
                await self.lease.attach(lease, job.job_id)
            self._template_id = max(self._template_id, template.id)
            self.book.add(job, now)
            await self._notify(job.notify())

    def _holds_lease(self, lease_id: int) -> bool:
        current = self.book.current
        return current is not None and current.lease_id == lease_id

    async def new_difficulty(self, difficulty: float) -> None:
        """Vardiff moved to ``difficulty``: count it, send a job with it (not clean)."""
        current = self.book.current
        if self._metrics is not None and current is not None:
            self._metrics.vardiff_changed(current.difficulty, difficulty)
        log.debug("miner %s: difficulty now %.6g", self.miner.login, difficulty)
        await self.push(self.jobs.current, clean=False)
