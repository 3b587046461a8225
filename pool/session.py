"""One miner connection: subscribe → authorize → submit, jobs, vardiff, limits.

A :class:`Session` owns its stream and a sans-IO ``protocol.connection.Connection``. Its
tasks, in one nursery: the reader (frames → events → answers), the job pusher (a new
job on every template and on every vardiff change, difficulty inside the job) and the
watchdog (handshake and idle timeouts, vardiff idle sweep). Submits are checked
concurrently, at most ``max_inflight_submits`` at once; beyond that the reader stops
reading, which is the backpressure a flooding miner feels.

Closing rules: framing garbage or an oversized frame → ``client.show_message`` with the
reason, then close; a message rate above the limit → error 27 for each refused request
and a drop after ``message_burst`` refusals; mostly-invalid shares → the escalation of
``pool.abuse`` (resend work → ``client.reconnect`` → drop → IP ban).

Useful work (SPEC §12.7): a miner that announces ``useful-1`` in ``mining.subscribe
{capabilities}`` gets jobs on a leased unit of a customer's product while one is queued
(synthetic jobs otherwise); it fetches the unit's operands with ``work.get_blob`` and
returns the product with ``work.result``. Its shares on such a job are held until the
result passes Freivalds' check, then credited; a wrong result voids them and counts each
against the session in the escalation. The final result chunk ends the unit's mining at
once: the session gets its next job (another unit, or synthetic) before the verdict,
which answers that chunk when it is ready. ``work.*`` requests are outside the
message-rate limit (a unit is hundreds of chunks); the per-lease byte bound replaces it.
When the connection ends, its lease ends and the unit goes back to the queue. When units
are queued, idle capable sessions (synthetic work, no lease) are offered one at once.

A ban (the last step of the escalation) also drops the IP's other open connections,
each told why with ``client.show_message`` first.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from pool.abuse import BanList, Escalation, RateLimiter, ShareJudge
from pool.config import PoolConfig
from pool.hashrate import HashrateMeter
from pool.jobs import JobManager, SessionJobs, Template
from pool.share_check import Miner, ShareChecker, ShareRejected, short_address
from pool.useful.queue import LeaseEnd
from pool.useful.service import Delivery, UsefulWork
from pool.vardiff import Vardiff, VardiffConfig
from protocol import messages
from protocol.address import validate_address
from protocol.connection import BadRequest, Connection, NotificationReceived, RequestReceived
from protocol.errors import ErrorCode, ProtocolError
from protocol.header import EXTRANONCE2_SIZE
from protocol.work_messages import USEFUL_CAPABILITY, GetBlob, WorkResult, WorkResultAck

log = logging.getLogger("pool.session")

READ_SIZE = 65536
SEND_TIMEOUT = 10.0
LINGER_SECONDS = 0.5
LINGER_BYTES = 1 << 20
# Answers to a submit that are neutral in the escalation (SPEC §12.9): a stale share is
# honest, a rate-limited one was never judged. Every other refusal that is not the pool's
# own fault counts against the miner; only an accepted share counts for it, so cheap stale
# submits cannot dilute the invalid ratio of bogus tickets.
NEUTRAL_CODES = {ErrorCode.STALE, ErrorCode.RATE_LIMITED}
# An IP is banned only when its drops (within limits.ban_seconds) outweigh its honest
# sessions (live ones with an accepted share) this many times over (SPEC §12.9).
HONEST_SESSION_WEIGHT = 4


class CloseSession(Exception):
    """Raised inside a session to close it; the message says why (logged)."""


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
    strikes: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    useful: UsefulWork | None = None

    def lease_ended(self, end: LeaseEnd) -> None:
        """A lease ended without a result (deadline): give its session new work."""
        for session in list(self.sessions):
            if session.work_key == end.lease.session:
                session.work_lost()

    def units_queued(self) -> None:
        """Units wait in the queue: every idle capable session tries to lease one now."""
        for session in list(self.sessions):
            session.offer_work()

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

    def strike(self, ip: str) -> int:
        """Count a drop for invalid shares against ``ip``; return its strikes within the
        last ``limits.ban_seconds`` (bounded in IPs and in times kept)."""
        now = trio.current_time()
        times = [t for t in self.strikes.pop(ip, []) if now - t < self.config.limits.ban_seconds]
        times = [*times[-63:], now]
        self.strikes[ip] = times
        while len(self.strikes) > self.config.limits.max_banned_ips:
            self.strikes.popitem(last=False)
        return len(times)

    def honest_sessions(self, ip: str, but: Session) -> int:
        """Live sessions from ``ip`` (but ``but``) that have had a share accepted."""
        return sum(1 for s in self.sessions if s.peer == ip and s is not but and s.accepted)


class Session:
    """A connected miner; :meth:`run` serves it until it leaves or is dropped."""

    def __init__(self, stream: trio.abc.Stream, peer: str, ctx: PoolContext) -> None:
        self.stream = stream
        self.peer = peer
        self.ctx = ctx
        cfg = ctx.config
        now = trio.current_time()
        self.conn = Connection("server", max_frame_size=cfg.stratum.max_frame_size)
        self.session_id = secrets.token_bytes(8)
        self.extranonce1: bytes | None = None
        self.address: str | None = None
        self.worker: str | None = None
        self.agent = ""
        self.connected_at = now
        self.last_message = now
        self.book = SessionJobs(cfg.limits.max_jobs_per_session, cfg.work.job_expiry_seconds)
        # The window opens now, so every accepted share counts (and none depends on whether
        # the first share or the first idle sweep comes first).
        self.vardiff = Vardiff(ctx.vardiff, cfg.pool.start_difficulty, now)
        self.rate = RateLimiter(cfg.limits.messages_per_second, cfg.limits.message_burst, now)
        self.judge = ShareJudge(
            cfg.limits.invalid_window, cfg.limits.invalid_min_shares, cfg.limits.invalid_ratio
        )
        self.hashrate = HashrateMeter(now)
        self.accepted = 0
        self.rejected = 0
        self._send_lock = trio.Lock()
        self._authorized = trio.Event()
        self._inflight = trio.Semaphore(cfg.stratum.max_inflight_submits)
        self._template_id = 0
        self._close_reason: str | None = None
        self._scope: trio.CancelScope | None = None
        self._job_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._offering = False
        self.useful_capable = False

    # -- identity -----------------------------------------------------------------------

    @property
    def authorized(self) -> bool:
        """Whether ``mining.authorize`` succeeded."""
        return self._authorized.is_set()

    @property
    def login(self) -> str:
        """``mmd1abcd…wxyz.rig1`` for logs (the anonymous peer before authorize)."""
        if not self.address:
            return f"<anonymous {self.peer}>"
        return f"{short_address(self.address)}.{self.worker}"

    @property
    def difficulty(self) -> float:
        return self.vardiff.difficulty

    @property
    def work_key(self) -> str:
        """How the useful-work queue names this session (its leases, jobs, held shares)."""
        return self.session_id.hex()

    @property
    def useful(self) -> UsefulWork | None:
        """The pool's useful work, if this session takes it."""
        return self.ctx.useful if self.useful_capable else None

    # -- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns when it is closed, for whatever reason."""
        self.ctx.sessions.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                nursery.start_soon(self._guard, self._job_pusher)
                nursery.start_soon(self._guard, self._watchdog)
                nursery.start_soon(self._guard, self._reader, nursery)
        finally:
            self.ctx.sessions.discard(self)
            self._nursery = None
            with trio.CancelScope(shield=True):
                if self.useful is not None:  # before it can be resumed: a resume starts afresh
                    try:
                        await self.useful.release_session(self.work_key)
                    except Exception as exc:
                        log.error("could not release the lease of %s: %s", self.login, exc)
                if self.extranonce1 is not None:
                    self.ctx.remember_session(self.session_id, self.extranonce1)
            with trio.CancelScope(shield=True), trio.move_on_after(LINGER_SECONDS + 1):
                await self._linger()
                await self.stream.aclose()
            log.info(
                "miner %s from %s disconnected: %s (%d accepted, %d rejected)",
                self.login,
                self.peer,
                self._close_reason or "closed by the pool",
                self.accepted,
                self.rejected,
            )

    async def _linger(self) -> None:
        """Half-close, then drain what the miner still sends for a moment, so that our
        last words (the reason for closing) reach it instead of being lost to a reset."""
        if not isinstance(self.stream, trio.SocketStream):
            return
        try:
            await self.stream.send_eof()
            drained = 0
            with trio.move_on_after(LINGER_SECONDS):
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def close(self, reason: str) -> None:
        """End the session (from any of its tasks, or from outside)."""
        if self._close_reason is None:
            self._close_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    def show_message(self, text: str) -> None:
        """Send ``client.show_message {text}`` soon (never blocks; nothing once closed)."""
        if self._nursery is not None and self._authorized.is_set():
            notice = self.conn.send_notification(messages.ShowMessage(text=text))
            self._nursery.start_soon(self._guard, self._send, notice)

    def kick(self, reason: str) -> None:
        """Tell the miner ``reason`` (``client.show_message``), then close (never blocks)."""
        if self._nursery is None:
            self.close(reason)
        else:
            self._nursery.start_soon(self._guard, self._notify_and_close, reason)

    async def _guard(self, fn: Any, *args: Any) -> None:
        """Run one task of the session; a reason to close ends the whole session."""
        try:
            await fn(*args)
        except CloseSession as exc:
            self.close(str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close("connection lost")

    async def _reader(self, nursery: trio.Nursery) -> None:
        while True:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise CloseSession("the miner closed the connection")
            try:
                events = self.conn.receive_data(data)
            except ProtocolError as exc:
                await self._notify_and_close(f"protocol error: {exc}")
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
                        await self._send(
                            self.conn.send_error(event.id, event.error.code, str(event.error))
                        )
                    await self._judge(False)
                elif isinstance(event, NotificationReceived):
                    pass  # a miner's notifications (pings without id) need no answer

    async def _rate_limited(self, event: object) -> None:
        if self.rate.refused > self.ctx.config.limits.message_burst:
            await self._notify_and_close("message flood: too many messages too fast")
        if isinstance(event, RequestReceived | BadRequest) and event.id is not None:
            await self._send(
                self.conn.send_error(event.id, ErrorCode.RATE_LIMITED, "rate limited: slow down")
            )
        self._count(ErrorCode.RATE_LIMITED, event)

    def _count(self, code: int, event: object) -> None:
        if isinstance(event, RequestReceived) and isinstance(event.message, messages.Submit):
            self.ctx.checker.count(code)

    async def _notify_and_close(self, reason: str) -> None:
        log.warning("closing connection of %s from %s: %s", self.login, self.peer, reason)
        with trio.move_on_after(1):
            await self._send(self.conn.send_notification(messages.ShowMessage(text=reason)))
        raise CloseSession(reason)

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise CloseSession("the miner does not read what we send")

    # -- requests -----------------------------------------------------------------------

    async def _request(self, event: RequestReceived, nursery: trio.Nursery) -> None:
        msg = event.message
        if isinstance(msg, messages.Submit):
            await self._inflight.acquire()
            nursery.start_soon(self._guard, self._submit, event.id, msg)
        elif isinstance(msg, messages.Subscribe):
            await self._subscribe(event.id, msg)
        elif isinstance(msg, messages.Authorize):
            await self._authorize(event.id, msg)
        elif isinstance(msg, messages.SuggestDifficulty):
            await self._suggest(event.id, msg)
        elif isinstance(msg, messages.Ping):
            await self._send(self.conn.send_result(event.id, messages.PingResult()))
        elif isinstance(msg, GetBlob):
            await self._get_blob(event.id, msg)
        elif isinstance(msg, WorkResult):
            await self._work_result(event.id, msg, nursery)
        else:  # pragma: no cover - Connection only yields the methods above
            await self._send(self.conn.send_error(event.id, ErrorCode.OTHER, "unsupported"))

    async def _subscribe(self, request_id: int, msg: messages.Subscribe) -> None:
        if self.extranonce1 is not None:
            await self._send(
                self.conn.send_error(request_id, ErrorCode.OTHER, "already subscribed")
            )
            return
        resumed = None
        if msg.resume is not None:
            resumed = self.ctx.resumable.pop(msg.resume, None)
        if resumed is not None:
            self.session_id, self.extranonce1 = msg.resume, resumed
        else:
            self.extranonce1 = self.ctx.jobs.new_extranonce1()
        self.agent = msg.agent
        self.useful_capable = USEFUL_CAPABILITY in (msg.capabilities or ())
        result = messages.SubscribeResult(
            session_id=self.session_id,
            extranonce1=self.extranonce1,
            extranonce2_size=EXTRANONCE2_SIZE,
        )
        await self._send(self.conn.send_result(request_id, result))

    async def _authorize(self, request_id: int, msg: messages.Authorize) -> None:
        if self.extranonce1 is None:
            await self._send(
                self.conn.send_error(request_id, ErrorCode.NOT_SUBSCRIBED, "subscribe first")
            )
            return
        try:
            validate_address(msg.address)
        except ProtocolError as exc:
            await self._send(
                self.conn.send_error(
                    request_id, ErrorCode.UNAUTHORIZED, f"login {msg.login!r:.80}: {exc}"
                )
            )
            return
        first = self.address is None
        self.address, self.worker = msg.address, msg.worker
        await self._send(self.conn.send_result(request_id, messages.AuthorizeResult()))
        if first:
            log.info(
                "miner %s connected from %s (%s, session %s)",
                self.login,
                self.peer,
                self.agent or "unknown agent",
                self.session_id.hex(),
            )
        self._authorized.set()

    async def _suggest(self, request_id: int, msg: messages.SuggestDifficulty) -> None:
        try:
            changed = self.vardiff.suggest(msg.difficulty, trio.current_time())
        except ValueError as exc:
            await self._send(self.conn.send_error(request_id, ErrorCode.MALFORMED, str(exc)))
            return
        await self._send(self.conn.send_result(request_id, messages.SuggestDifficultyResult()))
        if changed is not None and self._authorized.is_set():
            await self._new_difficulty(changed)

    async def _submit(self, request_id: int, msg: messages.Submit) -> None:
        try:
            if self.extranonce1 is None:
                raise ShareRejected("subscribe first", ErrorCode.NOT_SUBSCRIBED)
            if self.address is None or self.worker is None:
                raise ShareRejected("authorize first", ErrorCode.UNAUTHORIZED)
            miner = Miner(self.session_id, self.address, self.worker, self.peer)
            share = await self.ctx.checker.check(miner, self.book, msg)
        except ShareRejected as exc:
            self.rejected += 1
            self.ctx.checker.count(exc.code)
            await self._send(self.conn.send_error(request_id, exc.code, str(exc)))
            if not exc.pool_fault and exc.code not in NEUTRAL_CODES:
                await self._judge(False)
            return
        finally:
            self._inflight.release()
        self.accepted += 1
        self.ctx.checker.count(None)
        now = trio.current_time()
        self.hashrate.add(share.difficulty, now)
        if self.ctx.pool_hashrate is not None:
            self.ctx.pool_hashrate.add(share.difficulty, now)
        await self._send(
            self.conn.send_result(
                request_id,
                messages.SubmitResult(difficulty=share.difficulty, block=share.block_hash),
            )
        )
        await self._judge(True)
        if self.ctx.config.vardiff.enabled:
            changed = self.vardiff.record_share(now, share.difficulty)
            if changed is not None:
                await self._new_difficulty(changed)

    # -- useful work --------------------------------------------------------------------

    async def _get_blob(self, request_id: int, msg: GetBlob) -> None:
        useful = self.useful
        try:
            if useful is None:
                raise ProtocolError(
                    "work.get_blob: this session takes no useful work "
                    f'(subscribe with capabilities ["{USEFUL_CAPABILITY}"])',
                    code=ErrorCode.OTHER,
                )
            result = await useful.get_blob(self.work_key, msg)
        except ProtocolError as exc:
            await self._send(self.conn.send_error(request_id, exc.code, str(exc)))
            return
        await self._send(self.conn.send_result(request_id, result))

    async def _work_result(self, request_id: int, msg: WorkResult, nursery: trio.Nursery) -> None:
        useful = self.useful
        try:
            if useful is None:
                raise ProtocolError(
                    "work.result: this session takes no useful work", code=ErrorCode.OTHER
                )
            taken = await useful.take_result(self.work_key, msg)
        except ProtocolError as exc:
            await self._send(self.conn.send_error(request_id, exc.code, str(exc)))
            return
        if isinstance(taken, WorkResultAck):
            await self._send(self.conn.send_result(request_id, taken))
            return
        # The whole unit is in: its mining is over. The verdict is reached meanwhile, but
        # answered only after the next job went out (another unit, or synthetic).
        pushed = trio.Event()
        nursery.start_soon(self._guard, self._verdict, request_id, taken, pushed)
        try:
            if self._authorized.is_set():
                await self._push_job(self.ctx.jobs.current, clean=True)
        finally:
            pushed.set()

    async def _verdict(self, request_id: int, delivery: Delivery, pushed: trio.Event) -> None:
        """Judge a delivered unit (credit or void its held shares); answer its last chunk."""
        assert self.ctx.useful is not None
        try:
            ack, verdict = await self.ctx.useful.judge(delivery, self.ctx.checker.credit)
        except ProtocolError as exc:
            await pushed.wait()
            await self._send(self.conn.send_error(request_id, exc.code, str(exc)))
            return
        await pushed.wait()
        await self._send(self.conn.send_result(request_id, ack))
        if not verdict.passed:
            for _ in range(max(1, len(verdict.end.shares))):
                await self._judge(False)

    def work_lost(self) -> None:
        """This session's lease ended without a result: push new work (never blocks)."""
        if self._nursery is not None and self._authorized.is_set():
            self._nursery.start_soon(self._guard, self._push_new_work)

    async def _push_new_work(self) -> None:
        await self._push_job(self.ctx.jobs.current, clean=True)

    def offer_work(self) -> None:
        """Units are queued: if this session takes useful work and holds no lease, lease
        one and push its job now (never blocks; nothing happens when none is free)."""
        useful = self.useful
        if (
            useful is None
            or self._nursery is None
            or self.book.current is None
            or self._offering
            or useful.current(self.work_key) is not None
        ):
            return  # (before its first job, the session leases with that job anyway)
        self._offering = True
        self._nursery.start_soon(self._guard, self._take_offered_work)

    async def _take_offered_work(self) -> None:
        try:
            useful = self.useful
            if useful is None or useful.current(self.work_key) is not None:
                return
            await self._push_job(self.ctx.jobs.current, clean=True, new_unit_only=True)
        finally:
            self._offering = False

    # -- escalation ---------------------------------------------------------------------

    async def _judge(self, valid: bool) -> None:
        step = self.judge.record(valid)
        if step == Escalation.NONE:
            return
        fraction = "most of your recent shares were invalid"
        if step == Escalation.RESEND_WORK:
            log.info("miner %s sends mostly invalid shares: resending work", self.login)
            await self._send(
                self.conn.send_notification(
                    messages.ShowMessage(text=f"{fraction}; here is fresh work")
                )
            )
            if self._authorized.is_set():
                await self._push_job(self.ctx.jobs.current, clean=True)
        elif step == Escalation.RECONNECT:
            log.info("miner %s still sends invalid shares: asking it to reconnect", self.login)
            host, port = self._local_address()
            await self._send(
                self.conn.send_notification(
                    messages.Reconnect(
                        host=self.ctx.config.stratum.public_host or host, port=port, wait=5.0
                    )
                )
            )
        else:
            strikes = self.ctx.strike(self.peer)
            honest = self.ctx.honest_sessions(self.peer, self)
            banned = strikes >= 2 and strikes > HONEST_SESSION_WEIGHT * honest
            if strikes >= 2 and self.ctx.metrics is not None:
                self.ctx.metrics.ban_decisions.labels("banned" if banned else "spared").inc()
            if strikes >= 2 and not banned:
                log.warning(
                    "not banning %s: its %d drop(s) do not outweigh its %d honest "
                    "session(s); dropping %s only",
                    self.peer,
                    strikes,
                    honest,
                    self.login,
                )
            if banned:
                self.ctx.bans.ban(self.peer, trio.current_time())
                if self.ctx.metrics is not None:
                    self.ctx.metrics.bans.inc()
                others = self.ctx.drop_peer(
                    self.peer, "banned: repeated invalid shares from this IP address", keep=self
                )
                log.warning(
                    "banning %s for %.0f s: repeated invalid shares from %s; "
                    "dropping its %d other connection(s)",
                    self.peer,
                    self.ctx.bans.ban_seconds,
                    self.login,
                    others,
                )
                await self._notify_and_close("banned: repeated invalid shares")
            await self._notify_and_close(f"dropped: {fraction}")

    def _local_address(self) -> tuple[str, int]:
        """The address and port this miner connected to (where to reconnect)."""
        inner = (
            self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        )
        try:
            host, port = inner.socket.getsockname()[:2]  # type: ignore[attr-defined]
            return str(host), int(port)
        except (AttributeError, OSError, ValueError):
            return "127.0.0.1", self.ctx.config.stratum.port or 3333

    # -- jobs ---------------------------------------------------------------------------

    async def _job_pusher(self) -> None:
        await self._authorized.wait()
        first = True
        while True:
            template = await self.ctx.jobs.wait_for_template(self._template_id)
            await self._push_job(template, clean=first or template.clean)
            first = False

    async def _push_job(
        self, template: Template | None, *, clean: bool, new_unit_only: bool = False
    ) -> None:
        """Make, remember and send the session's next job (on its leased unit, if any);
        with ``new_unit_only``, only if that is a unit the session did not mine yet."""
        if template is None or self.extranonce1 is None:
            return
        async with self._job_lock:  # make, remember and send jobs in one order
            leased = await self._lease()
            if new_unit_only and (leased is None or self._holds_lease(leased[0].id)):
                return
            if leased is not None and not self._holds_lease(leased[0].id):
                clean = True  # new unit: shares of the earlier jobs are no use any more
            now = trio.current_time()
            if leased is None:
                job = self.ctx.jobs.make_job(
                    template, self.extranonce1, self.vardiff.difficulty, clean, now
                )
            else:
                lease, work = leased
                job = self.ctx.jobs.make_job(
                    template,
                    self.extranonce1,
                    self.vardiff.difficulty,
                    clean,
                    now,
                    workload=work,
                    lease_id=lease.id,
                )
                assert self.useful is not None
                await self.useful.attach(lease, self.work_key, job.job_id)
            self._template_id = max(self._template_id, template.id)
            self.book.add(job, now)
            await self._send(self.conn.send_notification(job.notify()))

    async def _lease(self) -> Any:
        """The session's useful-work lease and workload, or None for synthetic work."""
        useful = self.useful
        if useful is None:
            return None
        try:
            return await useful.lease(self.work_key)
        except Exception as exc:  # a broken unit must not stop mining: synthetic work
            log.error("could not lease useful work to %s: %s", self.login, exc)
            return None

    def _holds_lease(self, lease_id: int) -> bool:
        current = self.book.current
        return current is not None and current.lease_id == lease_id

    async def _new_difficulty(self, difficulty: float) -> None:
        current = self.book.current
        if self.ctx.metrics is not None and current is not None:
            self.ctx.metrics.vardiff_changed(current.difficulty, difficulty)
        log.debug("miner %s: difficulty now %.6g", self.login, difficulty)
        await self._push_job(self.ctx.jobs.current, clean=False)

    async def _watchdog(self) -> None:
        s = self.ctx.config.stratum
        tick = min(
            1.0, s.idle_timeout / 4, s.handshake_timeout / 4, self.ctx.vardiff.idle_seconds / 4
        )
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            if not self._authorized.is_set() and now - self.connected_at > s.handshake_timeout:
                await self._close_from_watchdog("did not subscribe and authorize in time")
            if now - self.last_message > s.idle_timeout:
                await self._close_from_watchdog(
                    f"idle for more than {s.idle_timeout:g} s without a message"
                )
            if self._authorized.is_set() and self.ctx.config.vardiff.enabled:
                changed = self.vardiff.check_idle(now)
                if changed is not None:
                    await self._new_difficulty(changed)

    async def _close_from_watchdog(self, reason: str) -> None:
        with trio.move_on_after(1):
            await self._send(self.conn.send_notification(messages.ShowMessage(text=reason)))
        raise CloseSession(reason)
