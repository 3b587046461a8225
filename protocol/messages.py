"""The envelope and the typed, validated messages of the wire (SPEC §wire).

Every message is a frozen dataclass whose fields carry a codec: the codec checks a
value when the message is built in Python, decodes it from the wire in
``from_params`` and encodes it in ``to_params``. Errors are ``ProtocolError`` whose
text names the method and the field, e.g.
``"mining.submit: params.extranonce2 must be 8 bytes (bin)"``. Unknown extra fields
are ignored (forward compatibility). A new method is one new class plus one entry in
``CLIENT_METHODS`` or ``SERVER_METHODS``.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from .errors import ErrorCode, ProtocolError
from .header import EXTRANONCE2_SIZE
from .workload import Shape, work_root

MAX_ID = (1 << 32) - 1
MAX_METHOD_LEN = 64
MAX_JOB_ID = 64
"""Longest job id on the wire (SPEC §12.4)."""


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# --- field codecs --------------------------------------------------------------------


class _Codec:
    """Checks a Python value, decodes it from the wire, encodes it for the wire."""

    optional = False

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def decode(self, wire: Any, path: str) -> Any:
        return self.check(wire, path)

    def encode(self, value: Any) -> Any:
        return value


class _UInt(_Codec):
    def __init__(self, bits: int = 32, lo: int = 0, hi: int | None = None) -> None:
        self.lo = lo
        self.hi = (1 << bits) - 1 if hi is None else hi
        full = lo == 0 and hi is None
        self.what = f"an integer in [0, 2**{bits})" if full else f"an integer in [{lo}, {hi}]"

    def check(self, value: Any, path: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (self.lo <= value <= self.hi)
        ):
            raise ProtocolError(f"{path} must be {self.what}, got {_show(value)}")
        return value


class _Float(_Codec):
    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero
        self.what = "a finite number ≥ 0" if allow_zero else "a finite number > 0"

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(f"{path} must be {self.what}, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ProtocolError(f"{path} must be {self.what}, got {_show(value)}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not self.allow_zero):
            raise ProtocolError(f"{path} must be {self.what}, got {_show(value)}")
        return number


class _Bool(_Codec):
    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{path} must be a boolean, got {_show(value)}")
        return value


class _Str(_Codec):
    def __init__(self, max_len: int, min_len: int = 1, printable: bool = True) -> None:
        self.min_len, self.max_len, self.printable = min_len, max_len, printable
        kind = "printable characters" if printable else "characters"
        self.what = f"a string of {min_len} to {max_len} {kind}"

    def check(self, value: Any, path: str) -> str:
        if (
            not isinstance(value, str)
            or not self.min_len <= len(value) <= self.max_len
            or (self.printable and not value.isprintable())
        ):
            raise ProtocolError(f"{path} must be {self.what}, got {_show(value)}")
        return value


class _Bin(_Codec):
    def __init__(self, size: int | None = None, min_len: int = 0, max_len: int = 0) -> None:
        if size is not None:
            min_len = max_len = size
            self.what = f"{size} bytes (bin)"
        else:
            self.what = f"{min_len} to {max_len} bytes (bin)"
        self.min_len, self.max_len = min_len, max_len

    def check(self, value: Any, path: str) -> bytes:
        if not isinstance(value, bytes) or not self.min_len <= len(value) <= self.max_len:
            got = f"{len(value)} bytes" if isinstance(value, bytes) else _show(value)
            raise ProtocolError(f"{path} must be {self.what}, got {got}")
        return value


class _Tile(_Codec):
    _coord = _UInt(32)

    def check(self, value: Any, path: str) -> tuple[int, int]:
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise ProtocolError(f"{path} must be [ti, tj], got {_show(value)}")
        ti = self._coord.check(value[0], f"{path}[0]")
        return ti, self._coord.check(value[1], f"{path}[1]")

    def encode(self, value: tuple[int, int]) -> list[int]:
        return list(value)


class _StrList(_Codec):
    """An array of at most ``max_items`` strings, each as ``_Str(max_len)``; a tuple in Python."""

    def __init__(self, max_items: int, max_len: int) -> None:
        self.max_items = max_items
        self.item = _Str(max_len=max_len)

    def check(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, tuple | list) or len(value) > self.max_items:
            raise ProtocolError(
                f"{path} must be an array of at most {self.max_items} strings, got {_show(value)}"
            )
        return tuple(self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value))

    def encode(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


class _Optional(_Codec):
    optional = True

    def __init__(self, inner: _Codec) -> None:
        self.inner = inner

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)

    def decode(self, wire: Any, path: str) -> Any:
        return None if wire is None else self.inner.decode(wire, path)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)


class _Nested(_Codec):
    def __init__(self, cls: type[_Struct]) -> None:
        self.cls = cls

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, self.cls):
            raise ProtocolError(f"{path} must be a {self.cls.__name__}, got {_show(value)}")
        return value

    def decode(self, wire: Any, path: str) -> Any:
        return self.cls._from_map(wire, path)

    def encode(self, value: _Struct) -> dict[str, Any]:
        return value._to_map()


class _OneOf(_Codec):
    """A map tagged by ``"kind"``: one of several struct classes with a ``kind`` ClassVar."""

    def __init__(self, *classes: type[_Struct]) -> None:
        self.by_kind = {cls.kind: cls for cls in classes}  # type: ignore[attr-defined]
        self.kinds = ", ".join(repr(kind) for kind in self.by_kind)

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, tuple(self.by_kind.values())):
            raise ProtocolError(f"{path} must be one of {self.kinds} sources, got {_show(value)}")
        return value

    def decode(self, wire: Any, path: str) -> Any:
        if not isinstance(wire, dict):
            raise ProtocolError(f"{path} must be a map, got {_show(wire)}")
        cls = self.by_kind.get(wire.get("kind"))  # type: ignore[arg-type]
        if cls is None:
            raise ProtocolError(
                f"{path}.kind must be one of {self.kinds}, got {_show(wire.get('kind'))}"
            )
        return cls._from_map(wire, path)

    def encode(self, value: _Struct) -> dict[str, Any]:
        return {"kind": value.kind, **value._to_map()}  # type: ignore[attr-defined]


def _field(codec: _Codec, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"codec": codec})


class _Struct:
    """Base of every wire struct: validation from field codecs, map encode/decode."""

    _where: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = f.metadata["codec"].check(getattr(self, f.name), f"{self._where}.{f.name}")
            object.__setattr__(self, f.name, value)
        self._check(self._where)

    def _check(self, where: str) -> None:
        """Rules across fields, beyond each field's own; ``where`` prefixes errors."""

    def _to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            codec: _Codec = f.metadata["codec"]
            value = getattr(self, f.name)
            if value is None and codec.optional:
                continue
            out[f.name] = codec.encode(value)
        return out

    @classmethod
    def _from_map(cls, wire: Any, where: str) -> Any:
        if not isinstance(wire, dict):
            raise ProtocolError(f"{where} must be a map, got {_show(wire)}")
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            codec: _Codec = f.metadata["codec"]
            path = f"{where}.{f.name}"
            raw = wire.get(f.name, MISSING)
            if raw is MISSING or (raw is None and codec.optional):
                if f.default is MISSING:
                    raise ProtocolError(f"{path} is missing")
                values[f.name] = f.default
            else:
                values[f.name] = codec.decode(raw, path)
        obj = cls.__new__(cls)
        for name, value in values.items():
            object.__setattr__(obj, name, value)
        obj._check(where)
        return obj


class Result(_Struct):
    """A method's result; ``to_result()`` gives the wire value, ``from_result`` parses it."""

    def to_result(self) -> Any:
        return self._to_map()

    @classmethod
    def from_result(cls, result: Any) -> Any:
        return cls._from_map(result, cls._where)


class Message(_Struct):
    """A request or notification body; ``method`` names it on the wire."""

    method: ClassVar[str]
    result_type: ClassVar[type[Result] | None] = None
    """How a client parses the response; ``None`` for pool → client notifications."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            cls._where = f"{cls.method}: params"

    def to_params(self) -> dict[str, Any]:
        return self._to_map()

    @classmethod
    def from_params(cls, params: Any) -> Any:
        return cls._from_map(params, cls._where)


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribeResult(Result):
    """Answer to ``mining.subscribe``: the session and its extranonce1."""

    _where: ClassVar[str] = "mining.subscribe: result"
    session_id: bytes = _field(_Bin(min_len=1, max_len=32))
    extranonce1: bytes = _field(_Bin(min_len=1, max_len=32))
    extranonce2_size: int = _field(_UInt(lo=EXTRANONCE2_SIZE, hi=EXTRANONCE2_SIZE))


@dataclass(frozen=True)
class AuthorizeResult(Result):
    """Answer to ``mining.authorize``: the bare boolean ``true`` on the wire."""

    _where: ClassVar[str] = "mining.authorize: result"
    ok: bool = _field(_Bool(), True)

    def to_result(self) -> bool:
        return self.ok

    @classmethod
    def from_result(cls, result: Any) -> AuthorizeResult:
        return cls(_Bool().check(result, cls._where))


@dataclass(frozen=True)
class SubmitResult(Result):
    """An accepted share: the difficulty credited, and the block hash if it made a block."""

    _where: ClassVar[str] = "mining.submit: result"
    difficulty: float = _field(_Float())
    block: bytes | None = _field(_Optional(_Bin(32)), None)


class _TrueResult(Result):
    """A result that is the bare ``true``."""

    def to_result(self) -> bool:
        return True

    @classmethod
    def from_result(cls, result: Any) -> Any:
        if result is not True:
            raise ProtocolError(f"{cls._where} must be true, got {_show(result)}")
        return cls()


@dataclass(frozen=True)
class SuggestDifficultyResult(_TrueResult):
    _where: ClassVar[str] = "mining.suggest_difficulty: result"


@dataclass(frozen=True)
class PingResult(_TrueResult):
    _where: ClassVar[str] = "mining.ping: result"


# --- client → pool -------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribe(Message):
    """Open a session; ``resume`` is an earlier ``session_id`` to get its extranonce1 back.

    ``capabilities`` (optional, additive) lists features the miner supports; absent = none.
    """

    method: ClassVar[str] = "mining.subscribe"
    result_type: ClassVar[type[Result]] = SubscribeResult
    agent: str = _field(_Str(max_len=128))
    protocol: int = _field(_UInt(32, lo=1, hi=(1 << 32) - 1), 1)
    resume: bytes | None = _field(_Optional(_Bin(min_len=1, max_len=32)), None)
    capabilities: tuple[str, ...] | None = _field(_Optional(_StrList(16, 32)), None)
    """Optional features the miner supports, e.g. ``("useful-1",)`` (SPEC §12.7)."""


@dataclass(frozen=True)
class Authorize(Message):
    """Log a worker in: ``login`` is ``ADDRESS.WORKER`` (worker "default" if absent)."""

    method: ClassVar[str] = "mining.authorize"
    result_type: ClassVar[type[Result]] = AuthorizeResult
    login: str = _field(_Str(max_len=128))
    password: str = _field(_Str(max_len=128, min_len=0, printable=False), "")

    def _check(self, where: str) -> None:
        if not self.address:
            raise ProtocolError(f"{where}.login must be ADDRESS.WORKER, got {self.login!r:.60}")

    @property
    def address(self) -> str:
        return self.login.partition(".")[0]

    @property
    def worker(self) -> str:
        return self.login.partition(".")[2] or "default"


@dataclass(frozen=True)
class Submit(Message):
    """A share: the ticket of ``tile`` for the header of job, extranonce2 and time."""

    method: ClassVar[str] = "mining.submit"
    result_type: ClassVar[type[Result]] = SubmitResult
    job_id: str = _field(_Str(max_len=MAX_JOB_ID))
    extranonce2: bytes = _field(_Bin(EXTRANONCE2_SIZE))
    time: int = _field(_UInt(64))
    tile: tuple[int, int] = _field(_Tile())


@dataclass(frozen=True)
class SuggestDifficulty(Message):
    method: ClassVar[str] = "mining.suggest_difficulty"
    result_type: ClassVar[type[Result]] = SuggestDifficultyResult
    difficulty: float = _field(_Float())


@dataclass(frozen=True)
class Ping(Message):
    method: ClassVar[str] = "mining.ping"
    result_type: ClassVar[type[Result]] = PingResult


# --- pool → client -------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSource(_Struct):
    """Operands generated from a 32-byte workload seed (SPEC §synthetic)."""

    kind: ClassVar[str] = "synthetic"
    _where: ClassVar[str] = "work.source"
    seed: bytes = _field(_Bin(32))


@dataclass(frozen=True)
class BlobSource(_Struct):
    """Operands fetched by content hash: ``a`` is the blob of A, ``b`` the blob of Bᵀ."""

    kind: ClassVar[str] = "blob"
    _where: ClassVar[str] = "work.source"
    a: bytes = _field(_Bin(32))
    b: bytes = _field(_Bin(32))


@dataclass(frozen=True)
class WorkSpec(_Struct):
    """The workload of a job: its shape, row commitments and where the operands come from."""

    _where: ClassVar[str] = "work"
    m: int = _field(_UInt(32))
    n: int = _field(_UInt(32))
    k: int = _field(_UInt(32))
    r: int = _field(_UInt(32))
    a_root: bytes = _field(_Bin(32))
    b_root: bytes = _field(_Bin(32))
    source: SyntheticSource | BlobSource = _field(  # noqa: RUF009 (a field spec)
        _OneOf(SyntheticSource, BlobSource)
    )

    def _check(self, where: str) -> None:
        try:
            Shape(self.m, self.n, self.k, self.r)
        except ProtocolError as exc:
            text = str(exc).removeprefix("work.")
            raise ProtocolError(f"{where}.{text}") from None

    @property
    def shape(self) -> Shape:
        return Shape(self.m, self.n, self.k, self.r)

    @property
    def work_root(self) -> bytes:
        """The commitment that goes into the header."""
        return work_root(self.shape, self.a_root, self.b_root)


@dataclass(frozen=True)
class Notify(Message):
    """A job. Difficulty travels with it; ``clean`` means drop all earlier jobs."""

    method: ClassVar[str] = "mining.notify"
    job_id: str = _field(_Str(max_len=MAX_JOB_ID))
    clean: bool = _field(_Bool())
    version: int = _field(_UInt(32))
    height: int = _field(_UInt(32))
    prev_hash: bytes = _field(_Bin(32))
    coinbase1: bytes = _field(_Bin(min_len=1, max_len=1024))
    coinbase2: bytes = _field(_Bin(min_len=1, max_len=1024))
    time: int = _field(_UInt(64))
    bits: int = _field(_UInt(32))
    difficulty: float = _field(_Float())
    work: WorkSpec = _field(_Nested(WorkSpec))  # noqa: RUF009 (a field spec)


@dataclass(frozen=True)
class Reconnect(Message):
    """Ask the miner to reconnect to ``host:port`` after ``wait`` seconds."""

    method: ClassVar[str] = "client.reconnect"
    host: str = _field(_Str(max_len=255))
    port: int = _field(_UInt(lo=1, hi=65535))
    wait: float = _field(_Float(allow_zero=True))


@dataclass(frozen=True)
class ShowMessage(Message):
    method: ClassVar[str] = "client.show_message"
    text: str = _field(_Str(max_len=4096, min_len=0, printable=False))


CLIENT_METHODS: dict[str, type[Message]] = {
    cls.method: cls for cls in (Subscribe, Authorize, Submit, SuggestDifficulty, Ping)
}
"""Methods a miner sends to the pool (requests), by name."""

SERVER_METHODS: dict[str, type[Message]] = {
    cls.method: cls for cls in (Notify, Reconnect, ShowMessage)
}
"""Methods the pool sends to a miner (notifications), by name."""


def _unknown(method: str) -> ProtocolError:
    return ProtocolError(f"unknown method {method!r:.70}", code=ErrorCode.OTHER)


def parse_params(method: str, params: Any) -> Message:
    """The typed message of ``method`` (either direction) from its wire params."""
    cls = CLIENT_METHODS.get(method) or SERVER_METHODS.get(method)
    if cls is None:
        raise _unknown(method)
    return cls.from_params(params)


def parse_result(method: str, result: Any) -> Any:
    """The typed result of a client → pool ``method`` from the wire ``result``."""
    cls = CLIENT_METHODS.get(method)
    if cls is None or cls.result_type is None:
        raise _unknown(method)
    return cls.result_type.from_result(result)


# --- envelope ------------------------------------------------------------------------


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


_ID = _UInt(32)
_METHOD = _Str(max_len=MAX_METHOD_LEN)
_CODE = _UInt(lo=-(1 << 63), hi=(1 << 64) - 1)
_MESSAGE = _Str(max_len=1 << 20, min_len=0, printable=False)


def is_valid_id(value: Any) -> bool:
    """True iff ``value`` can be a request id (an integer in [0, 2**32))."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_ID


def decode_envelope(obj: Any) -> Request | Notification | Response:
    """Classify and check one decoded frame; raises ``ProtocolError`` if it is none of them."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"envelope must be a map, got {_show(obj)}")
    if "method" in obj:
        method = _METHOD.check(obj["method"], "envelope: method")
        params = obj.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise ProtocolError(f"{method}: params must be a map, got {_show(params)}")
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
                raise ProtocolError(f"envelope: error must be a map, got {_show(error)}")
            if "code" not in error or "message" not in error:
                raise ProtocolError("envelope: error must have code and message")
            code = _CODE.check(error["code"], "envelope: error.code")
            message = _MESSAGE.check(error["message"], "envelope: error.message")
            return Response(msg_id, None, ErrorInfo(code, message))
        if "result" not in obj:
            raise ProtocolError(f"response {msg_id} has neither a result nor an error")
        return Response(msg_id, obj["result"])
    raise ProtocolError("envelope is neither a request, a notification nor a response")


# The useful-work methods (work.get_blob, work.result) live in work_messages.py and add
# themselves to CLIENT_METHODS when imported; importing them here makes them always known.
from . import work_messages as _work_messages  # noqa: E402, F401
