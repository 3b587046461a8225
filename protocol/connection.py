"""A sans-IO wire connection in the style of h11: bytes in → events out, messages in → bytes out.

``Connection("server")`` accepts the client → pool methods; ``Connection("client")``
accepts pool → client notifications and responses to its own requests. Framing
garbage, a malformed envelope without a usable request id, or a response nobody asked
for raises ``ProtocolError``: the connection must then be closed, and every later
``receive_data`` raises too. A well-framed request with an unknown method or invalid
params is a ``BadRequest`` event instead; the server answers it with ``send_error``
and keeps the connection.

Both roles also track the handshake (SPEC §wire): a connection is ``Phase.NEW`` until a
subscribe succeeds, ``SUBSCRIBED`` until an authorize succeeds, then ``AUTHORIZED``. The
server moves on the results it sends, the client on the responses it receives.
:data:`REFUSALS` says, in one table, which requests a server refuses in which phase and
with which error; :meth:`Connection.refusal` looks a request up in it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from .codec import Message
from .envelope import (
    MAX_ID,
    ErrorInfo,
    Notification,
    Request,
    Response,
    decode_envelope,
    is_valid_id,
)
from .errors import ErrorCode, ProtocolError
from .framing import MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .messages import AuthorizeResult, SubscribeResult
from .methods import CLIENT_METHODS, SERVER_METHODS, parse_result

Role = Literal["client", "server"]


class Phase(enum.Enum):
    """How far the handshake of a connection got."""

    NEW = "new"  # connected, not subscribed
    SUBSCRIBED = "subscribed"  # subscribed, not authorized
    AUTHORIZED = "authorized"  # may submit


# method → the phases in which a server refuses it, with the wire error and its text.
# Methods not named here (ping, suggest_difficulty, work.*) are taken in every phase.
REFUSALS: dict[str, dict[Phase, tuple[ErrorCode, str]]] = {
    "mining.subscribe": {
        Phase.SUBSCRIBED: (ErrorCode.OTHER, "already subscribed"),
        Phase.AUTHORIZED: (ErrorCode.OTHER, "already subscribed"),
    },
    "mining.authorize": {Phase.NEW: (ErrorCode.NOT_SUBSCRIBED, "subscribe first")},
    "mining.submit": {
        Phase.NEW: (ErrorCode.NOT_SUBSCRIBED, "subscribe first"),
        Phase.SUBSCRIBED: (ErrorCode.UNAUTHORIZED, "authorize first"),
    },
}

RESULT_METHODS: dict[type, str] = {
    SubscribeResult: "mining.subscribe",
    AuthorizeResult: "mining.authorize",
}


def next_phase(phase: Phase, method: str, result: Any) -> Phase:
    """The phase after a successful answer ``result`` to ``method`` (either role)."""
    if method == "mining.subscribe" and phase is Phase.NEW:
        return Phase.SUBSCRIBED
    if method == "mining.authorize" and phase is not Phase.NEW and getattr(result, "ok", False):
        return Phase.AUTHORIZED
    return phase


@dataclass(frozen=True)
class RequestReceived:
    """The peer asks something and waits for ``send_result``/``send_error`` with ``id``."""

    id: int
    message: Message


@dataclass(frozen=True)
class NotificationReceived:
    """A message that expects no answer."""

    message: Message


@dataclass(frozen=True)
class ResponseReceived:
    """The answer to our request ``id`` of ``method``: a typed ``result`` or an ``error``."""

    id: int
    method: str
    result: Any
    error: ErrorInfo | None


@dataclass(frozen=True)
class BadRequest:
    """A well-framed request (``id``) or notification (``id`` None) we cannot accept.

    Answer a request with ``send_error(id, error.code, str(error))``; the connection
    stays usable.
    """

    id: int | None
    error: ProtocolError


Event = RequestReceived | NotificationReceived | ResponseReceived | BadRequest


class Connection:
    """One side of a wire connection; owns no socket."""

    def __init__(self, role: Role, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        self.role: Role = role
        self._decoder = FrameDecoder(max_frame_size)
        self._incoming = CLIENT_METHODS if role == "server" else SERVER_METHODS
        self._outgoing = SERVER_METHODS if role == "server" else CLIENT_METHODS
        self._pending: dict[int, str] = {}
        self._next_id = 1
        self._error: ProtocolError | None = None
        self.phase = Phase.NEW

    @property
    def pending(self) -> dict[int, str]:
        """Our requests still waiting for a response: id → method."""
        return dict(self._pending)

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._decoder.buffered

    def refusal(self, message: Message) -> ProtocolError | None:
        """Why ``message``, a request of the peer, is refused in this phase (None: go on)."""
        refused = REFUSALS.get(message.method, {}).get(self.phase)
        return None if refused is None else ProtocolError(refused[1], code=refused[0])

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the peer; return the events of every frame they complete."""
        if self._error is not None:
            raise ProtocolError(f"connection already failed: {self._error}")
        try:
            return [self._event(obj) for obj in self._decoder.feed(data)]
        except ProtocolError as exc:
            self._error = exc
            raise

    def _event(self, obj: dict) -> Event:
        request_id, method, params = obj.get("id"), obj.get("method"), obj.get("params")
        if (  # the usual frame: a request of one of our methods (a valid name by the table)
            self.role == "server"
            and type(method) is str
            and type(params) is dict
            and type(request_id) is int
            and 0 <= request_id <= MAX_ID
        ):
            cls = self._incoming.get(method)
            if cls is not None:
                try:
                    return RequestReceived(request_id, cls.from_params(params))
                except ProtocolError as exc:
                    return BadRequest(request_id, exc)
        return self._slow_event(obj)

    def _slow_event(self, obj: dict) -> Event:
        try:
            envelope = decode_envelope(obj)
        except ProtocolError as exc:
            if "method" in obj and is_valid_id(obj.get("id")):
                return BadRequest(obj["id"], exc)
            raise
        if isinstance(envelope, Response):
            return self._response(envelope)
        request_id = envelope.id if isinstance(envelope, Request) else None
        if self.role == "client" and request_id is not None:
            return BadRequest(
                request_id,
                ProtocolError(
                    f"a miner accepts no requests, got {envelope.method!r:.70}",
                    code=ErrorCode.OTHER,
                ),
            )
        cls = self._incoming.get(envelope.method)
        if cls is None:
            error = ProtocolError(
                f"unknown method {envelope.method!r:.70} for a {self.role}", code=ErrorCode.OTHER
            )
            return BadRequest(request_id, error)
        try:
            message = cls.from_params(envelope.params)
        except ProtocolError as exc:
            return BadRequest(request_id, exc)
        if request_id is None:
            return NotificationReceived(message)
        return RequestReceived(request_id, message)

    def _response(self, response: Response) -> ResponseReceived:
        method = self._pending.pop(response.id, None)
        if method is None:
            raise ProtocolError(f"response to id {response.id}, which has no request pending")
        if response.error is not None:
            return ResponseReceived(response.id, method, None, response.error)
        result = parse_result(method, response.result)
        self.phase = next_phase(self.phase, method, result)
        return ResponseReceived(response.id, method, result, None)

    # --- sending ---------------------------------------------------------------------

    def _check_outgoing(self, message: Message) -> None:
        if not isinstance(message, Message):
            raise TypeError(f"expected a Message, got {type(message).__name__}")
        if self._outgoing.get(message.method) is not type(message):
            raise ValueError(f"a {self.role} does not send {message.method}")

    def _allocate_id(self) -> int:
        while True:
            request_id = self._next_id
            self._next_id = request_id % MAX_ID + 1
            if request_id not in self._pending:
                return request_id

    def send_request(self, message: Message) -> tuple[int, bytes]:
        """Frame ``message`` as a request; returns (id, bytes). Its response is parsed
        with ``message.result_type``."""
        self._check_outgoing(message)
        if message.result_type is None:
            raise ValueError(f"{message.method} is a notification, not a request")
        request_id = self._allocate_id()
        frame = encode_frame(Request(request_id, message.method, message.to_params()).to_wire())
        self._pending[request_id] = message.method
        return request_id, frame

    def send_notification(self, message: Message) -> bytes:
        """Frame ``message`` as a notification (no id, no answer)."""
        self._check_outgoing(message)
        return encode_frame(Notification(message.method, message.to_params()).to_wire())

    def send_result(self, id: int, result: Any) -> bytes:
        """Answer request ``id``; ``result`` is a result object (``to_result()``) or plain.

        A subscribe or (ok) authorize result moves the handshake on."""
        if not is_valid_id(id):
            raise ValueError(f"not a request id: {id!r}")
        method = RESULT_METHODS.get(type(result))
        if method is not None:
            self.phase = next_phase(self.phase, method, result)
        wire = result.to_result() if hasattr(result, "to_result") else result
        return encode_frame({"id": id, "result": wire})  # = Response(id, wire).to_wire()

    def send_error(self, id: int, code: int, message: str) -> bytes:
        """Answer request ``id`` with an error (``code`` from ``ErrorCode``)."""
        if not is_valid_id(id):
            raise ValueError(f"not a request id: {id!r}")
        return encode_frame(Response(id, error=ErrorInfo(int(code), str(message))).to_wire())
