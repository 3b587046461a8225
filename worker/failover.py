"""Failover across several pools: priorities, jittered exponential backoff, back to the primary.

The best pool (lowest priority number) whose backoff has run out is tried first. While
on a worse pool, the better ones are probed every ``primary_retry`` seconds (connect and
subscribe); when one answers, the current session is dropped and the better pool taken.
A pool's backoff resets only once it has sent a job, so a pool that accepts connections
but sends garbage is retried ever more slowly instead of flapping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from protocol.messages import Reconnect

from .client import Disconnected, Job, PoolClient, SubmitOutcome, probe
from .config import ConnectionConfig, PoolEndpoint

log = logging.getLogger(__name__)


class WorkerStopped(Exception):
    """The worker cannot go on (every pool refused its login, say); the message says why."""


@dataclass
class Backoff:
    """Exponential backoff with ± ``jitter`` (a fraction), capped at ``maximum``."""

    initial: float
    maximum: float
    jitter: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Record one failure; the delay before the next try."""
        base = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return base * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class PoolState:
    """What the failover knows about one configured pool."""

    endpoint: PoolEndpoint
    backoff: Backoff
    retry_at: float = 0.0
    redirect: PoolEndpoint | None = None
    resume: bytes | None = None
    last_error: str = ""
    refused: bool = False  # the pool refused this login (24): never retried

    @property
    def target(self) -> PoolEndpoint:
        return self.redirect or self.endpoint


ClientFactory = Callable[[PoolEndpoint, bytes | None], PoolClient]


class Failover:
    """Keeps one pool session alive, choosing among ``endpoints`` by priority."""

    def __init__(
        self,
        endpoints: list[PoolEndpoint] | tuple[PoolEndpoint, ...],
        make_client: ClientFactory,
        settings: ConnectionConfig,
        *,
        agent: str = "matmine-worker",
        on_connected: Callable[[PoolClient | None], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("failover needs at least one pool")
        rng = rng or random.Random()
        ordered = sorted(enumerate(endpoints), key=lambda pair: (pair[1].priority, pair[0]))
        self.pools = [
            PoolState(
                ep,
                Backoff(
                    settings.backoff_initial, settings.backoff_max, settings.backoff_jitter, rng
                ),
            )
            for _, ep in ordered
        ]
        self.settings = settings
        self.agent = agent
        self._make_client = make_client
        self._on_connected = on_connected
        self.active: PoolClient | None = None
        self.active_pool: PoolState | None = None
        self.sessions = 0
        self.switches_to_better = 0

    # --- public --------------------------------------------------------------------------

    async def submit(
        self, job: Job, extranonce2: bytes, time: int, tile: tuple[int, int]
    ) -> SubmitOutcome:
        """Submit a share of ``job`` on the session that gave it (``lost`` if that is gone)."""
        if job.client is not self.active or job.client.closed:
            return SubmitOutcome("lost", message="the session of this job has ended")
        return await job.client.submit(job.job_id, extranonce2, time, tile)

    async def run(self) -> None:
        """Forever: connect to the best available pool; on loss, back off and move on."""
        while True:
            if all(p.refused for p in self.pools):
                raise WorkerStopped(
                    "; ".join(f"pool {p.endpoint.label}: {p.last_error}" for p in self.pools)
                )
            state = self._choose()
            if state is None:
                wake = min(p.retry_at for p in self.pools)
                await trio.sleep_until(wake)
                continue
            await self._session(state)

    # --- internals -----------------------------------------------------------------------

    def _choose(self) -> PoolState | None:
        now = trio.current_time()
        for state in self.pools:
            if state.retry_at <= now:
                return state
        return None

    def _set_active(self, client: PoolClient | None, state: PoolState | None) -> None:
        self.active = client
        self.active_pool = state
        if self._on_connected is not None:
            self._on_connected(client)

    async def _session(self, state: PoolState) -> None:
        target = state.target
        client = self._make_client(target, state.resume)
        switched = False

        def ready(c: PoolClient) -> None:
            self.sessions += 1
            if c.subscription is not None:
                state.resume = c.subscription.session_id
            log.info("mining on pool %s", target.label)
            self._set_active(c, state)
            if state is not self.pools[0]:
                nursery.start_soon(self._watch_better, state, nursery.cancel_scope)

        outcome: Disconnected | None = None
        try:
            async with trio.open_nursery() as nursery:
                outcome = await client.run(on_ready=ready)
                nursery.cancel_scope.cancel()
            switched = outcome is None
        finally:
            if self.active is client:
                self._set_active(None, None)
        if switched:
            client.close()
            return
        assert outcome is not None
        self._after(state, outcome)

    def _after(self, state: PoolState, outcome: Disconnected) -> None:
        now = trio.current_time()
        if outcome.login_refused:
            state.refused, state.retry_at, state.last_error = True, float("inf"), outcome.reason
            log.error("pool %s: %s; not retrying this pool", state.target.label, outcome.reason)
            return
        if outcome.got_job:
            state.backoff.reset()
        request = outcome.reconnect
        if request is not None:
            self._redirect(state, request)
            state.retry_at = now + request.wait
            return
        if state.redirect is not None and not outcome.got_job:
            log.warning(
                "redirect %s failed (%s); back to %s",
                state.redirect.label,
                outcome.reason,
                state.endpoint.label,
            )
            state.redirect = None
        delay = state.backoff.next_delay()
        state.retry_at = now + delay
        state.last_error = outcome.reason
        others = [p for p in self.pools if p is not state and p.retry_at <= now]
        then = f"trying {others[0].target.label}" if others else f"retrying in {delay:.1f}s"
        log.warning("pool %s: %s; %s", state.target.label, outcome.reason, then)

    def _redirect(self, state: PoolState, request: Reconnect) -> None:
        host = request.host or state.endpoint.host
        if host != state.endpoint.host and not self.settings.follow_foreign_redirects:
            log.warning(
                "pool %s asked to move to another host %s:%d; refused "
                "(follow_foreign_redirects = false), reconnecting to it instead",
                state.endpoint.label,
                request.host,
                request.port,
            )
            state.redirect = None
            return
        target = PoolEndpoint(host, request.port, state.endpoint.tls, state.endpoint.priority)
        state.redirect = None if target == state.endpoint else target
        log.info("pool %s redirects to %s in %gs", state.endpoint.label, target.label, request.wait)

    async def _watch_better(self, current: PoolState, session: trio.CancelScope) -> None:
        """While on a worse pool, probe the better ones; switch when one answers."""
        better = self.pools[: self.pools.index(current)]
        while True:
            await trio.sleep(self.settings.primary_retry)
            now = trio.current_time()
            for state in better:
                if state.retry_at > now:
                    continue
                reason = await probe(state.target, self.settings, self.agent)
                if reason is None:
                    log.info(
                        "pool %s is back; leaving %s for it",
                        state.target.label,
                        current.target.label,
                    )
                    self.switches_to_better += 1
                    session.cancel()
                    return
                state.retry_at = trio.current_time() + state.backoff.next_delay()
                log.debug("pool %s still down: %s", state.target.label, reason)
