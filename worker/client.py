"""One connection to one pool: subscribe, authorize, receive jobs, submit shares (SPEC §12).

``PoolClient.run`` owns the socket and the sans-IO ``protocol.connection.Connection``;
it returns a ``Disconnected`` saying why the connection ended (refused, closed,
garbage, a request unanswered, no new job for too long, or ``client.reconnect``).
Jobs are handed to ``on_job`` as they arrive; ``submit`` may be called from any task
and always returns a ``SubmitOutcome`` (``lost`` if the connection is gone). The
socket comes from ``worker.transport``; whether subscribe and authorize succeeded is the
connection's handshake phase (``protocol.connection.Phase``), as on the pool's side.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from protocol.codec import Message
from protocol.connection import (
    BadRequest,
    Connection,
    NotificationReceived,
    Phase,
    ResponseReceived,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    Authorize,
    Notify,
    Ping,
    Reconnect,
    ShowMessage,
    Submit,
    SubmitResult,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
)
from protocol.work_messages import GetBlob, GetBlobResult, WorkResult, WorkResultAck

from .config import ConnectionConfig, PoolEndpoint
from .outcomes import Disconnected, RequestFailed, SubmitOutcome
from .transport import Dropped, open_stream, why

log = logging.getLogger(__name__)

RECEIVE_CHUNK = 65536


@dataclass(frozen=True)
class Job:
    """A ``mining.notify`` as received on one session (extranonce1 of that session)."""

    notify: Notify
    extranonce1: bytes
    client: PoolClient = field(repr=False, compare=False)
    received: float  # trio.current_time() at arrival

    @property
    def job_id(self) -> str:
        return self.notify.job_id


class _Waiter:
    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: ResponseReceived | None = None


class PoolClient:
    """A pool session over one TCP/TLS connection; create a new one per connection."""

    def __init__(
        self,
        endpoint: PoolEndpoint,
        *,
        login: str,
        password: str,
        agent: str,
        settings: ConnectionConfig,
        on_job: Callable[[Job], None],
        resume: bytes | None = None,
        suggest_difficulty: float = 0.0,
        capabilities: tuple[str, ...] = (),
    ) -> None:
        self.endpoint = endpoint
        self.login = login
        self.password = password
        self.agent = agent
        self.settings = settings
        self._on_job = on_job
        self._resume = resume
        self._suggest = suggest_difficulty
        self.capabilities = tuple(capabilities)
        self._conn = Connection("client", max_frame_size=settings.max_frame_size)
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._scope: trio.CancelScope | None = None
        self._dropped: Dropped | None = None
        self._last_job_at = 0.0
        self.subscription: SubscribeResult | None = None
        self.ready = False
        self.closed = False
        self.jobs_received = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self, on_ready: Callable[[PoolClient], None] | None = None) -> Disconnected:
        """Connect, subscribe, authorize, then serve until the connection ends; says why."""
        try:
            self._stream = await open_stream(self.endpoint, self.settings)
        except Dropped as exc:
            self.closed = True
            return Disconnected(exc.reason)
        try:
            async with self._stream, trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._handshake, nursery, on_ready)
        except trio.BrokenResourceError as exc:  # pragma: no cover - closing a dead stream
            self._drop(Dropped(f"connection broke: {why(exc)}"))
        finally:
            self._close_waiters()
        dropped = self._dropped or Dropped("connection closed")
        return Disconnected(
            dropped.reason, dropped.reconnect, self.jobs_received > 0, dropped.login_refused
        )

    async def _handshake(
        self, nursery: trio.Nursery, on_ready: Callable[[PoolClient], None] | None
    ) -> None:
        try:
            sub = await self._call(
                Subscribe(
                    agent=self.agent,
                    protocol=1,
                    resume=self._resume,
                    capabilities=self.capabilities or None,
                )
            )
            if self._conn.phase is Phase.NEW:  # the connection moves on what succeeded
                assert sub.error is not None
                raise Dropped(f"subscribe refused: {sub.error.code} {sub.error.message}")
            self.subscription = sub.result
            auth = await self._call(Authorize(login=self.login, password=self.password))
            if self._conn.phase is not Phase.AUTHORIZED:
                why = f"{auth.error.code} {auth.error.message}" if auth.error else "false"
                refused = auth.error is not None and auth.error.code == ErrorCode.UNAUTHORIZED
                raise Dropped(
                    f"authorization of {self.login!r} refused: {why}", login_refused=refused
                )
            if self._suggest > 0:
                answer = await self._call(SuggestDifficulty(difficulty=self._suggest))
                if answer.error is not None:
                    log.info(
                        "pool %s ignored suggest_difficulty: %s",
                        self.endpoint.label,
                        answer.error.message,
                    )
        except Dropped as exc:
            self._drop(exc)
            return
        self.ready = True
        self._last_job_at = trio.current_time()
        log.info(
            "subscribed to %s as %s (extranonce1 %s)",
            self.endpoint.label,
            self.login,
            self.subscription.extranonce1.hex(),
        )
        if on_ready is not None:
            on_ready(self)
        nursery.start_soon(self._keepalive)
        nursery.start_soon(self._job_timeout)

    def _drop(self, exc: Dropped) -> None:
        if self._dropped is None:
            self._dropped = exc
        self.closed = True
        if self._scope is not None:
            self._scope.cancel()

    def _close_waiters(self) -> None:
        self.closed = True
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()

    def close(self) -> None:
        """Drop the connection now (the ``run`` call returns)."""
        self._drop(Dropped("closed by the worker"))

    # --- receiving ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._stream is not None
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    raise Dropped("the pool closed the connection")
                try:
                    events = self._conn.receive_data(data)
                except ProtocolError as exc:
                    raise Dropped(f"malformed data from the pool ({exc}); dropping it") from None
                for event in events:
                    await self._dispatch(event)
        except Dropped as exc:
            self._drop(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._drop(Dropped(f"connection lost: {why(exc)}"))

    async def _dispatch(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            waiter = self._waiters.pop(event.id, None)
            if waiter is not None:
                waiter.response = event
                waiter.event.set()
        elif isinstance(event, NotificationReceived):
            message = event.message
            if isinstance(message, Notify):
                self._job(message)
            elif isinstance(message, Reconnect):
                raise Dropped(
                    f"pool asked to reconnect to {message.host}:{message.port} "
                    f"in {message.wait:g}s",
                    message,
                )
            elif isinstance(message, ShowMessage):
                log.warning("message from pool %s: %s", self.endpoint.label, message.text)
        elif isinstance(event, BadRequest):
            log.warning(
                "pool %s sent something unusable, ignored: %s", self.endpoint.label, event.error
            )
            if event.id is not None:
                error = self._conn.send_error(event.id, event.error.code, str(event.error))
                await self._send(error)

    def _job(self, notify: Notify) -> None:
        if self.subscription is None:
            log.warning(
                "pool %s sent job %s before subscribe finished; ignored",
                self.endpoint.label,
                notify.job_id,
            )
            return
        self._last_job_at = trio.current_time()
        self.jobs_received += 1
        log.debug(
            "job %s from %s (clean=%s, difficulty %g, height %d)",
            notify.job_id,
            self.endpoint.label,
            notify.clean,
            notify.difficulty,
            notify.height,
        )
        self._on_job(Job(notify, self.subscription.extranonce1, self, trio.current_time()))

    # --- sending -----------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if self._stream is None or self.closed:
            raise Dropped("not connected")
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Dropped(f"connection lost while sending: {why(exc)}") from None

    async def _start_call(self, message: Message) -> Callable[[], Awaitable[ResponseReceived]]:
        """Send a request now; the returned coroutine function waits for its response.

        Requests leave in the order of these calls, so a caller may keep several in
        flight (pipelining) and collect their answers later.
        """
        if self.closed:
            raise Dropped("not connected")
        request_id, data = self._conn.send_request(message)
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        await self._send(data)

        async def answer() -> ResponseReceived:
            with trio.move_on_after(self.settings.response_timeout):
                await waiter.event.wait()
            if waiter.response is None:
                if self.closed:
                    raise Dropped("connection closed while waiting for an answer")
                self._waiters.pop(request_id, None)
                exc = Dropped(
                    f"no answer to {message.method} in {self.settings.response_timeout:g}s"
                )
                self._drop(exc)
                raise exc
            return waiter.response

        return answer

    async def _call(self, message: Message) -> ResponseReceived:
        """Send a request and wait for its response; ``Dropped`` if none comes."""
        return await (await self._start_call(message))()

    async def submit(
        self, job_id: str, extranonce2: bytes, time: int, tile: tuple[int, int]
    ) -> SubmitOutcome:
        """Send one share and wait for the pool's verdict."""
        try:
            message = Submit(job_id=job_id, extranonce2=extranonce2, time=time, tile=tile)
        except ProtocolError as exc:
            return SubmitOutcome("lost", message=f"not sendable: {exc}")
        return await self.submit_message(message)

    async def submit_message(self, message: Submit) -> SubmitOutcome:
        """Send one ``mining.submit`` (a layer share's too) and wait for the pool's verdict."""
        try:
            answer = await self._call(message)
        except Dropped as exc:
            self._drop(exc)
            return SubmitOutcome("lost", message=exc.reason)
        if answer.error is None:
            result: SubmitResult = answer.result
            return SubmitOutcome("accepted", result.difficulty, result.block)
        code = answer.error.code
        kind = "stale" if code == ErrorCode.STALE else "rejected"
        return SubmitOutcome(kind, code=code, message=answer.error.message)

    async def _start_work_call(self, message: Message) -> Callable[[], Awaitable[object]]:
        """Send a ``work.*`` request; the returned coroutine function gives its result.

        Both steps raise ``RequestFailed``: the connection was lost, or the pool refused.
        """
        try:
            answer = await self._start_call(message)
        except Dropped as exc:
            self._drop(exc)
            raise RequestFailed(exc.reason) from None

        async def result() -> object:
            try:
                reply = await answer()
            except Dropped as exc:
                self._drop(exc)
                raise RequestFailed(exc.reason) from None
            if reply.error is not None:
                raise RequestFailed(
                    f"{message.method} refused: {reply.error.code} {reply.error.message}",
                    reply.error.code,
                )
            return reply.result

        return result

    async def _work_call(self, message: Message) -> object:
        return await (await self._start_work_call(message))()

    async def get_blob(self, blob: bytes, offset: int, length: int) -> tuple[bytes, int]:
        """One ``work.get_blob``: ``(data, total)``; ``RequestFailed`` if refused or lost."""
        try:
            message = GetBlob(hash=blob, offset=offset, length=length)
        except ProtocolError as exc:
            raise RequestFailed(f"not sendable: {exc}") from None
        result = await self._work_call(message)
        if not isinstance(result, GetBlobResult):  # pragma: no cover - decoded by the method
            raise RequestFailed(f"work.get_blob answered with {type(result).__name__}")
        return result.data, result.total

    async def send_result(
        self, job_id: str, unit: bytes, offset: int, data: bytes, final: bool
    ) -> Callable[[], Awaitable[WorkResultAck]]:
        """Send one ``work.result`` chunk; await the returned function for the pool's ack.

        Chunks may be pipelined: send several, then collect their acks in order.
        ``RequestFailed`` if the chunk is refused or the connection is lost.
        """
        try:
            message = WorkResult(job_id=job_id, unit=unit, offset=offset, data=data, final=final)
        except ProtocolError as exc:
            raise RequestFailed(f"not sendable: {exc}") from None
        answer = await self._start_work_call(message)

        async def ack() -> WorkResultAck:
            reply = await answer()
            if not isinstance(reply, WorkResultAck):  # pragma: no cover - decoded by the method
                raise RequestFailed(f"work.result answered with {type(reply).__name__}")
            return reply

        return ack

    # --- timers ------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        try:
            while True:
                await trio.sleep(self.settings.ping_interval)
                answer = await self._call(Ping())
                if answer.error is not None:
                    log.debug("pool %s answered ping with %s", self.endpoint.label, answer.error)
        except Dropped as exc:
            self._drop(exc)

    async def _job_timeout(self) -> None:
        limit = self.settings.job_timeout
        while True:
            deadline = self._last_job_at + limit
            if trio.current_time() >= deadline:
                self._drop(Dropped(f"no new job for {limit:g}s; reconnecting"))
                return
            await trio.sleep_until(deadline)


async def probe(endpoint: PoolEndpoint, settings: ConnectionConfig, agent: str) -> str | None:
    """Is a pool answering? Connect and subscribe, then hang up; ``None`` if fine, else why."""
    client = PoolClient(
        endpoint,
        login="probe",
        password="",
        agent=agent,
        settings=settings,
        on_job=lambda job: None,
    )
    try:
        client._stream = await open_stream(endpoint, settings)
    except Dropped as exc:
        return exc.reason
    reason: str | None = None
    answered = False
    async with client._stream, trio.open_nursery() as nursery:
        client._scope = nursery.cancel_scope
        nursery.start_soon(client._receive_loop)
        try:
            answer = await client._call(Subscribe(agent=agent, protocol=1))
            answered = True
            if answer.error is not None:
                reason = f"subscribe refused: {answer.error.message}"
        except Dropped as exc:
            reason = exc.reason
        nursery.cancel_scope.cancel()
    if not answered and reason is None:
        reason = client._dropped.reason if client._dropped else "no answer"
    return reason
