"""What every miner session shares: config, jobs, share checker, bans, abuse policy.

:class:`PoolContext` is built once by ``pool.app`` and handed to every session. It knows
the live sessions and reaches them only through their inboxes (``pool.inbox``): a lease
that ended, units queued, or the IP's other connections to close after a ban.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pool.abuse import AbusePolicy, BanList
from pool.config import PoolConfig
from pool.hashrate import HashrateMeter
from pool.inbox import OfferWork, ResultRejected, WorkLost
from pool.jobs import JobManager
from pool.share_check import ShareChecker
from pool.useful.queue import LeaseEnd
from pool.useful.service import UsefulWork
from pool.vardiff import VardiffConfig

if TYPE_CHECKING:
    from pool.models.desk import ModelDesk
    from pool.session import Session


@dataclass
class PoolContext:
    """What every session shares: config, jobs, the share checker, bans, metrics."""

    config: PoolConfig
    jobs: JobManager
    checker: ShareChecker
    bans: BanList
    vardiff: VardiffConfig
    metrics: Any | None = None
    sessions: set[Session] = field(default_factory=set)
    resumable: OrderedDict[bytes, bytes] = field(default_factory=OrderedDict)
    pool_hashrate: HashrateMeter | None = None
    useful: UsefulWork | None = None
    models: ModelDesk | None = None  # model jobs (SPEC §12.12), when useful work is on
    abuse: AbusePolicy = field(init=False)

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.abuse = AbusePolicy(self.bans, limits.ban_seconds, limits.max_banned_ips, self.metrics)

    @property
    def strikes(self) -> OrderedDict[str, list[float]]:
        """Drops for invalid shares per IP, recent ones (kept by :attr:`abuse`)."""
        return self.abuse.strikes

    def lease_ended(self, end: LeaseEnd) -> None:
        """A lease ended without a verified result: its session gets new work (a deadline,
        a delivery over the data plane) or, for a wrong result, the strikes it earned."""
        for session in list(self.sessions):
            if session.work_key == end.lease.session:
                if end.state == "rejected":
                    session.inbox.post(ResultRejected(max(1, len(end.shares))))
                else:
                    session.inbox.post(WorkLost())

    def units_queued(self) -> None:
        """Units wait in the queue: every idle capable session tries to lease one now."""
        for session in list(self.sessions):
            if session.lease.wants_offer(session.book):
                session.inbox.post(OfferWork())

    def drop_peer(self, ip: str, reason: str, keep: Session | None = None) -> int:
        """Close every open session from ``ip`` (but ``keep``), telling each ``reason``."""
        dropped = 0
        for session in list(self.sessions):
            if session.peer == ip and session is not keep:
                session.kick(reason)
                dropped += 1
        return dropped

    def remember_session(self, session_id: bytes, extranonce1: bytes) -> None:
        """Keep a closed session's extranonce1 for ``mining.subscribe {resume}`` (bounded)."""
        self.resumable[session_id] = extranonce1
        while len(self.resumable) > self.config.stratum.max_connections:
            self.resumable.popitem(last=False)

    def honest_sessions(self, ip: str, but: Session) -> int:
        """Live sessions from ``ip`` (but ``but``) that have had a share accepted."""
        return sum(1 for s in self.sessions if s.peer == ip and s is not but and s.accepted)
