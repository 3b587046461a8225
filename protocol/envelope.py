"""The envelope of the wire: request, notification and response frames and their ids.

:func:`decode_envelope` classifies one decoded frame (SPEC §wire); the ``to_wire()`` of
each frame gives the map that ``protocol.framing`` encodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import Str, UInt, describe
from .errors import ProtocolError

MAX_ID = (1 << 32) - 1
MAX_METHOD_LEN = 64


@dataclass(frozen=True)
class ErrorInfo:
    """The ``error`` member of a failed response."""

    code: int
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"code": int(self.code), "message": self.message}


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "params": self.params}


@dataclass(frozen=True)
class Notification:
    method: str
    params: dict

    def to_wire(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}


@dataclass(frozen=True)
class Response:
    id: int
    result: Any = None
    error: ErrorInfo | None = None

    def to_wire(self) -> dict[str, Any]:
        if self.error is not None:
            return {"id": self.id, "error": self.error.to_wire()}
        return {"id": self.id, "result": self.result}


_ID = UInt(32)
_METHOD = Str(max_len=MAX_METHOD_LEN)
_CODE = UInt(lo=-(1 << 63), hi=(1 << 64) - 1)
_MESSAGE = Str(max_len=1 << 20, min_len=0, printable=False)


def is_valid_id(value: Any) -> bool:
    """True iff ``value`` can be a request id (an integer in [0, 2**32))."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_ID


def decode_envelope(obj: Any) -> Request | Notification | Response:
    """Classify and check one decoded frame; raises ``ProtocolError`` if it is none of them."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"envelope must be a map, got {describe(obj)}")
    if "method" in obj:
        method = _METHOD.check(obj["method"], "envelope: method")
        params = obj.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise ProtocolError(f"{method}: params must be a map, got {describe(params)}")
        if "id" in obj:
            return Request(_ID.check(obj["id"], "envelope: id"), method, params)
        return Notification(method, params)
    if "id" in obj:
        msg_id = _ID.check(obj["id"], "envelope: id")
        error = obj.get("error")
        if error is not None:
            if obj.get("result") is not None:
                raise ProtocolError(f"response {msg_id} has both a result and an error")
            if not isinstance(error, dict):
                raise ProtocolError(f"envelope: error must be a map, got {describe(error)}")
            if "code" not in error or "message" not in error:
                raise ProtocolError("envelope: error must have code and message")
            code = _CODE.check(error["code"], "envelope: error.code")
            message = _MESSAGE.check(error["message"], "envelope: error.message")
            return Response(msg_id, None, ErrorInfo(code, message))
        if "result" not in obj:
            raise ProtocolError(f"response {msg_id} has neither a result nor an error")
        return Response(msg_id, obj["result"])
    raise ProtocolError("envelope is neither a request, a notification nor a response")
