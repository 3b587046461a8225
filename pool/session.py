"""One miner connection: the stream, the frame loop and the dispatch to handlers.

A :class:`Session` owns its stream and a sans-IO ``protocol.connection.Connection``
(which also keeps the subscribe → authorize phase and refuses what a phase forbids). Its
tasks, in its own nursery: the reader (frames → events → answers; the session's own
task), the job feed (``pool.job_feed``: a job on every template and vardiff change) and
the inbox reader (``pool.inbox``: what other parts ask — kick, notices, useful work lost
or offered), which between events keeps the watchdog's deadlines (``pool.watchdog``:
handshake and idle timeouts; the vardiff idle sweep). At most ``max_inflight_submits``
submits are judged at once, each without a task (``pool.submit_pipeline``; ``replies``
sends the answers); beyond that the reader stops reading (a flood's backpressure).

Closing rules: framing garbage or an oversized frame → ``client.show_message`` with the
reason, then close; a message rate above the limit → error 27 for each refused request
and a drop after ``message_burst`` refusals; mostly-invalid shares → the escalation of
``pool.abuse.AbusePolicy`` (resend work → ``client.reconnect`` → drop → IP ban; a ban
also kicks the IP's other connections).

Useful work (SPEC §12.7) goes through ``pool.useful.lease.UsefulLease``. ``work.*``
requests are outside the message-rate limit (a unit is hundreds of chunks). The final
result chunk ends the unit's mining at once: the next job goes out before the verdict,
which answers that chunk when it is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import trio

from pool.abuse import RateLimiter, ShareJudge
from pool.context import PoolContext
from pool.handlers import RequestHandlers
from pool.hashrate import HashrateMeter
from pool.inbox import Inbox, Kick, Notice, Replies, ResultRejected, WorkLost
from pool.job_feed import JobFeed
from pool.jobs import SessionJobs
from pool.miner_state import MinerState
from pool.sender import FrameSender
from pool.sockets import READ_SIZE, linger
from pool.useful.lease import UsefulLease
from pool.vardiff import Vardiff
from pool.watchdog import SessionWatchdog
from protocol import messages
from protocol.connection import BadRequest, Connection, NotificationReceived, RequestReceived
from protocol.errors import ErrorCode, ProtocolError
from protocol.work_messages import GetBlob, WorkResult

log = logging.getLogger("pool.session")

LINGER_SECONDS = 0.5


class CloseSession(Exception):
    """Raised inside a session to close it; the message says why (logged)."""


class Session(MinerState):
    """A connected miner; :meth:`run` serves it until it leaves or is dropped."""

    __slots__ = ("_close_reason", "_scope", "book", "conn", "ctx", "feed", "handlers",
                 "hashrate", "inbox", "inflight", "judge", "lease", "rate", "ready", "replies",
                 "sender", "stream", "vardiff", "watchdog")  # fmt: skip

    def __init__(self, stream: trio.abc.Stream, peer: str, ctx: PoolContext) -> None:
        now = trio.current_time()
        super().__init__(peer=peer, connected_at=now, last_message=now)
        self.stream = stream
        self.ctx = ctx
        cfg = ctx.config
        self.conn = Connection("server", max_frame_size=cfg.stratum.max_frame_size)
        self.book = SessionJobs(cfg.limits.max_jobs_per_session, cfg.work.job_expiry_seconds)
        # The window opens now, so every accepted share counts (and none depends on whether
        # the first share or the first idle sweep comes first).
        self.vardiff = Vardiff(ctx.vardiff, cfg.pool.start_difficulty, now)
        self.rate = RateLimiter(cfg.limits.messages_per_second, cfg.limits.message_burst, now)
        self.judge = ShareJudge(
            cfg.limits.invalid_window, cfg.limits.invalid_min_shares, cfg.limits.invalid_ratio
        )
        self.hashrate = HashrateMeter(now)
        self.inbox = Inbox()
        self.sender = FrameSender(stream)
        self.replies = Replies(self.sender.send_now if self.sender.direct else None)
        self.lease = UsefulLease(ctx.useful, self, self.hashrate, ctx.models)
        self.feed = JobFeed(
            ctx.jobs, self, self.book, self.vardiff, self.lease, self.notify, ctx.metrics
        )
        self.watchdog = SessionWatchdog(cfg.stratum, ctx.vardiff.idle_seconds)
        self.handlers = RequestHandlers(self)
        self.ready = trio.Event()  # set once the authorize result went out
        self.inflight = trio.Semaphore(cfg.stratum.max_inflight_submits)
        self._close_reason: str | None = None
        self._scope: trio.CancelScope | None = None

    @property
    def authorized(self) -> bool:
        """Whether ``mining.authorize`` succeeded."""
        return self.ready.is_set()

    @property
    def difficulty(self) -> float:
        """The miner's share difficulty now (vardiff)."""
        return self.vardiff.difficulty

    # -- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns when it is closed, for whatever reason."""
        self.ctx.sessions.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self.guard, self.feed.run, self.ready)
                nursery.start_soon(self.guard, self._serve_inbox)
                await self.guard(self._reader, nursery)  # the reader is this very task
        finally:
            self.replies.close()
            self.ctx.sessions.discard(self)
            self.inbox.close()
            with trio.CancelScope(shield=True):
                await self.lease.release()  # before it can be resumed: a resume starts afresh
                if self.extranonce1 is not None:
                    self.ctx.remember_session(self.session_id, self.extranonce1)
            with trio.CancelScope(shield=True), trio.move_on_after(LINGER_SECONDS + 1):
                await linger(self.stream, LINGER_SECONDS)
                await self.stream.aclose()
            log.info(
                "miner %s from %s disconnected: %s (%d accepted, %d rejected)",
                self.login,
                self.peer,
                self._close_reason or "closed by the pool",
                self.accepted,
                self.rejected,
            )

    def close(self, reason: str) -> None:
        """End the session (from any of its tasks, or from outside)."""
        if self._close_reason is None:
            self._close_reason = reason
        self.replies.close()
        if self._scope is not None:
            self._scope.cancel()

    def show_message(self, text: str) -> None:
        """Send ``client.show_message {text}`` soon (never blocks; nothing once closed)."""
        if self.ready.is_set():
            self.inbox.post(Notice(text))

    def kick(self, reason: str) -> None:
        """Tell the miner ``reason`` (``client.show_message``), then close (never blocks)."""
        if not self.inbox.post(Kick(reason)):
            self.close(reason)

    async def guard(self, fn: Any, *args: Any) -> None:
        """Run one task of the session; a reason to close ends the whole session."""
        try:
            await fn(*args)
        except CloseSession as exc:
            self.close(str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close("connection lost")

    async def _serve_inbox(self) -> None:
        """The inbox's events in order; between them, the watchdog's deadlines."""
        while True:
            event = await self.inbox.receive(self._next_check())
            if event is None:
                await self._watch()
            elif isinstance(event, Kick):
                await self.notify_and_close(event.reason)
            elif isinstance(event, Notice):
                await self.notify(messages.ShowMessage(text=event.text))
            elif isinstance(event, WorkLost):
                if self.ready.is_set():
                    await self.feed.push_fresh()
            elif isinstance(event, ResultRejected):
                for _ in range(event.shares):
                    await self.handlers.judge(False)
            elif self.lease.wants_offer(self.book):  # OfferWork
                await self.feed.push_fresh(new_unit_only=True)

    def _next_check(self) -> float:
        vardiff = self.vardiff if self.ctx.config.vardiff.enabled else None
        return self.watchdog.next_check(trio.current_time(), self, self.ready.is_set(), vardiff)

    async def _watch(self) -> None:
        now = trio.current_time()
        reason = self.watchdog.overdue(now, self, self.ready.is_set())
        if reason is not None:
            with trio.move_on_after(1):
                await self.notify(messages.ShowMessage(text=reason))
            raise CloseSession(reason)
        if self.ready.is_set() and self.ctx.config.vardiff.enabled:
            changed = self.vardiff.check_idle(now)
            if changed is not None:
                await self.feed.new_difficulty(changed)

    # -- the wire -----------------------------------------------------------------------

    async def _reader(self, nursery: trio.Nursery) -> None:
        while True:  # (no local keeps the last read's bytes or frames while waiting)
            await self._received(await self.stream.receive_some(READ_SIZE), nursery)

    async def _received(self, data: bytes | bytearray, nursery: trio.Nursery) -> None:
        if not data:
            raise CloseSession("the miner closed the connection")
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            await self.notify_and_close(f"protocol error: {exc}")
        for event in events:
            self.last_message = trio.current_time()
            chunked = isinstance(event, RequestReceived) and isinstance(
                event.message, GetBlob | WorkResult
            )
            if not chunked and not self.rate.allow(self.last_message):
                await self._rate_limited(event)
                continue
            if isinstance(event, RequestReceived):
                await self._request(event, nursery)
            elif isinstance(event, BadRequest):
                if event.id is not None:
                    await self.error(event.id, event.error)
                await self.handlers.judge(False)
            elif isinstance(event, NotificationReceived):
                pass  # a miner's notifications (pings without id) need no answer

    async def _rate_limited(self, event: object) -> None:
        if self.rate.refused > self.ctx.config.limits.message_burst:
            await self.notify_and_close("message flood: too many messages too fast")
        if isinstance(event, RequestReceived | BadRequest) and event.id is not None:
            await self.send(
                self.conn.send_error(event.id, ErrorCode.RATE_LIMITED, "rate limited: slow down")
            )
        if isinstance(event, RequestReceived) and isinstance(event.message, messages.Submit):
            self.ctx.checker.count(ErrorCode.RATE_LIMITED)

    async def notify_and_close(self, reason: str) -> None:
        """Tell the miner ``reason``, then close (raises :class:`CloseSession`)."""
        log.warning("closing connection of %s from %s: %s", self.login, self.peer, reason)
        with trio.move_on_after(1):
            await self.notify(messages.ShowMessage(text=reason))
        raise CloseSession(reason)

    async def send(self, data: bytes) -> None:
        """Send a frame; a miner that does not read it within ``SEND_TIMEOUT`` is closed."""
        if not await self.sender.send(data):
            raise CloseSession("the miner does not read what we send")

    async def notify(self, message: messages.Message) -> None:
        """Send ``message`` as a notification."""
        await self.send(self.conn.send_notification(message))

    async def error(self, request_id: int, exc: ProtocolError) -> None:
        """Answer ``request_id`` with ``exc``'s code and text."""
        await self.send(self.conn.send_error(request_id, exc.code, str(exc)))

    async def answer(self, request_id: int, answer: Awaitable[Any]) -> None:
        """Send the result of ``answer``, or the error it raises."""
        try:
            result = await answer
        except ProtocolError as exc:
            await self.error(request_id, exc)
            return
        await self.send(self.conn.send_result(request_id, result))

    async def _request(self, event: RequestReceived, nursery: trio.Nursery) -> None:
        msg, request_id, handlers = event.message, event.id, self.handlers
        if isinstance(msg, messages.Submit):
            await handlers.submit(request_id, msg, nursery)
            return
        refused = self.conn.refusal(msg)
        if refused is not None:
            await self.error(request_id, refused)
        elif isinstance(msg, messages.Subscribe):
            await handlers.subscribe(request_id, msg)
        elif isinstance(msg, messages.Authorize):
            await handlers.authorize(request_id, msg)
        elif isinstance(msg, messages.SuggestDifficulty):
            await handlers.suggest(request_id, msg)
        elif isinstance(msg, messages.Ping):
            await self.send(self.conn.send_result(request_id, messages.PingResult()))
        elif isinstance(msg, GetBlob):
            await self.answer(request_id, self.lease.get_blob(msg))
        elif isinstance(msg, WorkResult):
            await handlers.work_result(request_id, msg, nursery)
        else:  # pragma: no cover - Connection only yields the methods above
            await self.send(self.conn.send_error(request_id, ErrorCode.OTHER, "unsupported"))
