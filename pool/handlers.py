"""What the pool answers to each miner request, and the escalation for invalid shares.

:class:`RequestHandlers` belongs to one :class:`~pool.session.Session` and answers
through it: ``mining.subscribe`` (a new or resumed extranonce1), ``mining.authorize``
(the payout address is checked), ``mining.suggest_difficulty``, ``mining.submit`` (the
share check, credit, vardiff) and ``work.result`` (a finished unit's verdict answers its
last chunk after the next job went out). The session has already refused what the
handshake phase forbids (``protocol.connection.REFUSALS``); a submit's refusal is a
rejected share like any other. :meth:`judge` turns a verdict into the next step of
``pool.abuse.AbusePolicy``'s ladder.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from pool.abuse import Escalation
from pool.jobs import Job
from pool.models.jobs import check_submit
from pool.models.units import ModelJobWork
from pool.share_check import AcceptedShare, Miner, ShareRejected
from pool.sockets import tcp_socket
from pool.submit_pipeline import Deferred, start_submit
from pool.useful.service import Delivery
from protocol import messages
from protocol.address import validate_address
from protocol.errors import ErrorCode, ProtocolError
from protocol.header import EXTRANONCE2_SIZE
from protocol.model_messages import MODEL_CAPABILITY
from protocol.work_messages import USEFUL_CAPABILITY, WorkResult, WorkResultAck

if TYPE_CHECKING:
    from pool.session import Session

log = logging.getLogger("pool.session")

# Answers to a submit that are neutral in the escalation (SPEC §12.9): a stale share is
# honest, a rate-limited one was never judged. Every other refusal that is not the pool's
# own fault counts against the miner; only an accepted share counts for it, so cheap stale
# submits cannot dilute the invalid ratio of bogus tickets.
NEUTRAL_CODES = {ErrorCode.STALE, ErrorCode.RATE_LIMITED}
INVALID = "most of your recent shares were invalid"


class RequestHandlers:
    """The request handlers of ``session`` (each answers the request it is given)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.ctx = session.ctx
        self._miner: Miner | None = None  # who submits, made again when the login changes
        self._ack_difficulty: float | None = None  # the difficulty of ``_ack_wire``
        self._ack_wire: object = None

    async def subscribe(self, request_id: int, msg: messages.Subscribe) -> None:
        s = self.session
        resumed = None if msg.resume is None else self.ctx.resumable.pop(msg.resume, None)
        if msg.resume is not None and resumed is not None:
            s.session_id, s.extranonce1 = msg.resume, resumed
        else:
            s.extranonce1 = self.ctx.jobs.new_extranonce1()
        s.agent = msg.agent
        s.useful_capable = USEFUL_CAPABILITY in (msg.capabilities or ())
        s.model_capable = MODEL_CAPABILITY in (msg.capabilities or ())
        result = messages.SubscribeResult(
            session_id=s.session_id, extranonce1=s.extranonce1, extranonce2_size=EXTRANONCE2_SIZE
        )
        await s.send(s.conn.send_result(request_id, result))

    async def authorize(self, request_id: int, msg: messages.Authorize) -> None:
        s = self.session
        try:
            validate_address(msg.address)
        except ProtocolError as exc:
            await s.send(
                s.conn.send_error(
                    request_id, ErrorCode.UNAUTHORIZED, f"login {msg.login!r:.80}: {exc}"
                )
            )
            return
        first = s.address is None
        s.address, s.worker = msg.address, msg.worker
        await s.send(s.conn.send_result(request_id, messages.AuthorizeResult()))
        if first:
            log.info(
                "miner %s connected from %s (%s, session %s)",
                s.login,
                s.peer,
                s.agent or "unknown agent",
                s.session_id.hex(),
            )
        s.ready.set()

    async def suggest(self, request_id: int, msg: messages.SuggestDifficulty) -> None:
        s = self.session
        try:
            changed = s.vardiff.suggest(msg.difficulty, trio.current_time())
        except ValueError as exc:
            await s.send(s.conn.send_error(request_id, ErrorCode.MALFORMED, str(exc)))
            return
        await s.send(s.conn.send_result(request_id, messages.SuggestDifficultyResult()))
        if changed is not None and s.authorized:
            await s.feed.new_difficulty(changed)

    async def submit(self, request_id: int, msg: messages.Submit, nursery: trio.Nursery) -> None:
        """Start judging one share in an in-flight slot (freed once it is judged): in the
        submit pipeline (no task), or in a task of ``nursery`` where it needs one (a model
        job, a job on a leased unit, an unknown job). Its answer goes out through the
        session's replies, whose writer this starts at the first submit.

        A session that closes answers no more: of its shares in the pipeline, those
        already queued for a commit are committed (each once: the ledger refuses a second
        copy of a ticket), the others are dropped (never stored)."""
        s = self.session
        try:
            s.inflight.acquire_nowait()  # (the reader's receive is its checkpoint)
        except trio.WouldBlock:
            await s.inflight.acquire()
        if not s.replies.writing:
            s.replies.writing = True
            nursery.start_soon(s.guard, s.replies.write, s.send)
        refused = s.conn.refusal(msg)
        if refused is not None:
            self._judged(request_id, nursery, ShareRejected(str(refused), refused.code))
            return
        try:
            started = start_submit(
                self.ctx.checker,
                self._submitter(),
                s.book,
                msg,
                partial(self._judged, request_id, nursery),
                lambda: not self._gone(nursery),
                self._model_job,
            )
        except ShareRejected as exc:
            self._judged(request_id, nursery, exc)
            return
        if started:
            return
        judging = partial(check_submit, self.ctx, self._submitter(), s.book, msg)
        nursery.start_soon(s.guard, self._judge_in_task, request_id, judging)

    @staticmethod
    def _model_job(job: Job) -> bool:
        """Whether ``job`` is a model job (its shares are judged by ``check_submit``)."""
        return isinstance(job.workload, ModelJobWork)

    def _gone(self, nursery: trio.Nursery) -> bool:
        """Whether the session closed (or is closing): its submits are answered no more."""
        return self.session.replies.closed or nursery.cancel_scope.cancel_called

    def _judged(
        self,
        request_id: int,
        nursery: trio.Nursery,
        outcome: AcceptedShare | ShareRejected | Deferred,
    ) -> None:
        """The pipeline's outcome for one submit: answer it (or judge the rest in a task)."""
        s = self.session
        if self._gone(nursery):
            s.inflight.release()  # nothing to answer
            return
        if isinstance(outcome, Deferred):
            nursery.start_soon(s.guard, self._judge_in_task, request_id, outcome.rest)
            return
        s.inflight.release()
        self._answer(request_id, outcome)

    async def _judge_in_task(
        self, request_id: int, judging: Callable[[], Awaitable[AcceptedShare]]
    ) -> None:
        try:
            outcome: AcceptedShare | ShareRejected = await judging()
        except ShareRejected as exc:
            outcome = exc
        finally:
            self.session.inflight.release()
        self._answer(request_id, outcome)

    def _answer(self, request_id: int, outcome: AcceptedShare | ShareRejected) -> None:
        """Count a judged share and queue its answer (then what it leads to) for the writer."""
        s, ctx = self.session, self.ctx
        if isinstance(outcome, ShareRejected):
            s.rejected += 1
            ctx.checker.count(outcome.code)
            frame = s.conn.send_error(request_id, outcome.code, str(outcome))
            against = not outcome.pool_fault and outcome.code not in NEUTRAL_CODES
            s.replies.post(frame, partial(self.judge, False) if against else None)
            return
        share = outcome
        s.accepted += 1
        ctx.checker.count(None)
        now = trio.current_time()
        s.hashrate.add(share.difficulty, now)
        if ctx.pool_hashrate is not None:
            ctx.pool_hashrate.add(share.difficulty, now)
        frame = s.conn.send_result(request_id, self._ack(share.difficulty, share.block_hash))
        # = ``await self.judge(True)``: a valid share never escalates (ShareJudge.record
        # answers NONE to it), so no step is due and the policy's per-IP strikes are not read.
        s.judge.record(True)
        changed = None
        if ctx.config.vardiff.enabled:
            changed = s.vardiff.record_share(now, share.difficulty)
        s.replies.post(frame, None if changed is None else partial(s.feed.new_difficulty, changed))

    def _ack(self, difficulty: float, block: bytes | None) -> object:
        """The wire result of an accepted share: kept per difficulty while it does not
        change (a block's ack is made afresh)."""
        if block is not None:
            return messages.SubmitResult(difficulty=difficulty, block=block)
        if self._ack_difficulty != difficulty:
            self._ack_wire = messages.SubmitResult(difficulty=difficulty).to_result()
            self._ack_difficulty = difficulty
        return self._ack_wire

    def _submitter(self) -> Miner:
        """The session's :class:`Miner` for its login now."""
        s, miner = self.session, self._miner
        if (
            miner is None
            or miner.address != s.address
            or miner.worker != s.worker
            or miner.session_id != s.session_id
        ):
            assert s.address is not None and s.worker is not None
            miner = self._miner = Miner(s.session_id, s.address, s.worker, s.peer)
        return miner

    async def work_result(self, request_id: int, msg: WorkResult, nursery: trio.Nursery) -> None:
        s = self.session
        try:
            taken = await s.lease.take_result(msg)
        except ProtocolError as exc:
            await s.error(request_id, exc)
            return
        if isinstance(taken, WorkResultAck):
            await s.send(s.conn.send_result(request_id, taken))
            return
        # The whole unit is in: its mining is over. The verdict is reached meanwhile, but
        # answered only after the next job went out (another unit, or synthetic).
        pushed = trio.Event()
        nursery.start_soon(s.guard, self._verdict, request_id, taken, pushed)
        try:
            if s.authorized:
                await s.feed.push_fresh()
        finally:
            pushed.set()

    async def _verdict(self, request_id: int, delivery: Delivery, pushed: trio.Event) -> None:
        """Judge a delivered unit (credit or void its held shares); answer its last chunk."""
        s = self.session
        try:
            ack, verdict = await s.lease.judge(delivery, self.ctx.checker.credit)
        except ProtocolError as exc:
            await pushed.wait()
            await s.error(request_id, exc)
            return
        await pushed.wait()
        await s.send(s.conn.send_result(request_id, ack))
        if not verdict.passed:
            for _ in range(max(1, len(verdict.end.shares))):
                await self.judge(False)

    async def judge(self, valid: bool) -> None:
        """Count one share (or bad request) for or against the miner; act on the step."""
        s = self.session
        step = self.ctx.abuse.record(
            s.judge,
            valid,
            ip=s.peer,
            login=s.login,
            now=trio.current_time(),
            honest=lambda: self.ctx.honest_sessions(s.peer, s),
        )
        if step == Escalation.RESEND_WORK:
            log.info("miner %s sends mostly invalid shares: resending work", s.login)
            await s.notify(messages.ShowMessage(text=f"{INVALID}; here is fresh work"))
            if s.authorized:
                await s.feed.push_fresh()
        elif step == Escalation.RECONNECT:
            log.info("miner %s still sends invalid shares: asking it to reconnect", s.login)
            host, port = self._local_address()
            await s.notify(
                messages.Reconnect(
                    host=self.ctx.config.stratum.public_host or host, port=port, wait=5.0
                )
            )
        elif step >= Escalation.DROP:
            if step == Escalation.BAN:
                others = self.ctx.drop_peer(
                    s.peer, "banned: repeated invalid shares from this IP address", keep=s
                )
                log.warning(
                    "banning %s for %.0f s: repeated invalid shares from %s; "
                    "dropping its %d other connection(s)",
                    s.peer,
                    self.ctx.bans.ban_seconds,
                    s.login,
                    others,
                )
                await s.notify_and_close("banned: repeated invalid shares")
            await s.notify_and_close(f"dropped: {INVALID}")

    def _local_address(self) -> tuple[str, int]:
        """The address and port this miner connected to (where to reconnect)."""
        sock = tcp_socket(self.session.stream)
        try:
            if sock is not None:
                host, port = sock.getsockname()[:2]
                return str(host), int(port)
        except (OSError, ValueError):
            pass
        return "127.0.0.1", self.ctx.config.stratum.port or 3333
