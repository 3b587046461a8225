"""A sans-IO wire connection in the style of h11: bytes in → events out, messages in → bytes out.

``Connection("server")`` accepts the client → pool methods; ``Connection("client")``
accepts pool → client notifications and responses to its own requests. Framing
garbage, a malformed envelope without a usable request id, or a response nobody asked
for raises ``ProtocolError``: the connection must then be closed, and every later
``receive_data`` raises too. A well-framed request with an unknown method or invalid
params is a ``BadRequest`` event instead; the server answers it with ``send_error``
and keeps the connection.
"""

from __future__ import annotations

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
from .methods import CLIENT_METHODS, SERVER_METHODS, parse_result

Role = Literal["client", "server"]


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

    @property
    def pending(self) -> dict[int, str]:
        """Our requests still waiting for a response: id → method."""
        return dict(self._pending)

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._decoder.buffered

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events of every frame they complete."""
        if self._error is not None:
            raise ProtocolError(f"connection already failed: {self._error}")
        try:
            return [self._event(obj) for obj in self._decoder.feed(data)]
        except ProtocolError as exc:
            self._error = exc
            raise

    def _event(self, obj: dict) -> Event:
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
        return ResponseReceived(response.id, method, parse_result(method, response.result), None)

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
        """Answer request ``id``; ``result`` is a result object (``to_result()``) or plain."""
        if not is_valid_id(id):
            raise ValueError(f"not a request id: {id!r}")
        wire = result.to_result() if hasattr(result, "to_result") else result
        return encode_frame(Response(id, wire).to_wire())

    def send_error(self, id: int, code: int, message: str) -> bytes:
        """Answer request ``id`` with an error (``code`` from ``ErrorCode``)."""
        if not is_valid_id(id):
            raise ValueError(f"not a request id: {id!r}")
        return encode_frame(Response(id, error=ErrorInfo(int(code), str(message))).to_wire())
