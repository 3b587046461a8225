"""One session's side of useful work (SPEC §12.7): its lease, its blobs, its results.

:class:`UsefulLease` is the collaborator a session asks about useful work. It knows
whether the session takes useful work at all (it subscribed with ``useful-1`` and the
pool has useful work), leases a unit for the session's next job (a broken unit falls back
to synthetic work), answers ``work.get_blob`` and takes ``work.result`` chunks (refused
with a ``ProtocolError`` for a session that takes no useful work), has a delivered unit
judged, and hands the lease back when the connection ends.
"""

from __future__ import annotations

import logging

import trio

from pool.hashrate import HashrateMeter
from pool.jobs import SessionJobs
from pool.miner_state import MinerState
from pool.models.desk import ModelDesk
from pool.models.units import ModelJobWork, ModelLease, lease_model
from pool.useful.affinity import BlobHolders
from pool.useful.queue import Lease, LeaseError
from pool.useful.results import Verdict
from pool.useful.service import Credit, Delivery, UsefulWork
from pool.useful.unitwork import UnitWork
from protocol.errors import ErrorCode, ProtocolError
from protocol.work_messages import (
    USEFUL_CAPABILITY,
    GetBlob,
    GetBlobResult,
    WorkResult,
    WorkResultAck,
)

log = logging.getLogger("pool.session")


class UsefulLease:
    """Useful work for the session whose state is ``miner`` (``useful`` None: none)."""

    def __init__(
        self,
        useful: UsefulWork | None,
        miner: MinerState,
        hashrate: HashrateMeter | None = None,
        models: ModelDesk | None = None,
    ) -> None:
        self._useful = useful
        self.miner = miner
        self.hashrate = hashrate  # the session's accepted shares: units are cut to its rate
        self._models = models  # model jobs (SPEC §12.12) for a ``model-1`` session

    @property
    def models(self) -> ModelDesk | None:
        """The pool's model jobs, if this session takes them."""
        return self._models if self.miner.model_capable else None

    def rate(self) -> float | None:
        """The session's MAC/s over the last minute of accepted shares (None: none yet)."""
        meter = self.hashrate
        if meter is None or meter.last_share is None:
            return None
        return meter.rates(trio.current_time())["1m"]

    @property
    def work(self) -> UsefulWork | None:
        """The pool's useful work, if this session takes it."""
        return self._useful if self.miner.useful_capable else None

    def current(self) -> Lease | None:
        """The lease of the session's newest useful job (None: synthetic work)."""
        return None if self.work is None else self.work.current(self.miner.work_key)

    def wants_offer(self, book: SessionJobs) -> bool:
        """Whether an offered unit is for this session: it takes useful work, holds no
        lease and has had its first job (before that it leases with that job anyway)."""
        if book.current is None or self.current() is not None:
            return False
        if self.models is not None and not self.models.holds(self.miner.work_key):
            return True
        return self.work is not None

    async def lease(self) -> tuple[Lease | ModelLease, UnitWork | ModelJobWork] | None:
        """The session's lease and workload for its next job (a model unit first), or None
        for synthetic work."""
        model = lease_model(self.models, self.miner.work_key)
        if model is not None:
            return model
        useful = self.work
        if useful is None:
            return None
        try:
            miner = BlobHolders.miner_key(self.miner.address, self.miner.worker)
            return await useful.lease(self.miner.work_key, miner, self.rate())
        except Exception as exc:  # a broken unit must not stop mining: synthetic work
            log.error("could not lease useful work to %s: %s", self.miner.login, exc)
            return None

    async def attach(self, lease: Lease | ModelLease, job_id: str) -> None:
        """Note that job ``job_id`` mines ``lease``'s unit. A lease that ended meanwhile
        (its result came in while the job was made) is not attached: the job's shares are
        stale, and the end of the lease sends the session a fresh job anyway."""
        if isinstance(lease, ModelLease):
            return  # a model lease is the session's until its verdict
        assert self.work is not None
        try:
            await self.work.attach(lease, self.miner.work_key, job_id)
        except LeaseError as exc:
            log.info("job %s of %s not attached: %s", job_id, self.miner.login, exc)

    async def release(self) -> None:
        """The connection ended: its unit goes back to the queue (errors are logged)."""
        if self.models is not None:
            self.models.release_session(self.miner.work_key)
        if self.work is None:
            return
        try:
            await self.work.release_session(self.miner.work_key)
        except Exception as exc:
            log.error("could not release the lease of %s: %s", self.miner.login, exc)

    async def get_blob(self, msg: GetBlob) -> GetBlobResult:
        """Answer ``work.get_blob``; ``ProtocolError`` (wire code) when refused."""
        if self.work is None:
            raise ProtocolError(
                "work.get_blob: this session takes no useful work "
                f'(subscribe with capabilities ["{USEFUL_CAPABILITY}"])',
                code=ErrorCode.OTHER,
            )
        return await self.work.get_blob(self.miner.work_key, msg)

    async def take_result(self, msg: WorkResult) -> WorkResultAck | Delivery:
        """Take one ``work.result`` chunk: its ack, or the :class:`Delivery` of the unit."""
        if self.work is None:
            raise ProtocolError(
                "work.result: this session takes no useful work", code=ErrorCode.OTHER
            )
        return await self.work.take_result(self.miner.work_key, msg)

    async def judge(self, delivery: Delivery, credit: Credit) -> tuple[WorkResultAck, Verdict]:
        """Check a delivered unit (credit or void its held shares): the ack and verdict."""
        assert self._useful is not None
        return await self._useful.judge(delivery, credit)
