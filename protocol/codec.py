"""The codec framework of the wire's messages: field types, structs, messages, tables.

Every message is a frozen dataclass whose fields carry a codec (``wire_field(UInt(32))``):
the codec checks a value when the message is built in Python, decodes it from the wire
in ``from_params`` and encodes it in ``to_params``. Errors are ``ProtocolError`` whose
text names the method and the field, e.g.
``"mining.submit: params.extranonce2 must be 8 bytes (bin)"``. Unknown extra fields
are ignored (forward compatibility). A catalogue of methods (``protocol.messages``,
``protocol.work_messages``) lists its own with :func:`method_table`;
``protocol.methods`` combines them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from .errors import ProtocolError


def describe(value: Any) -> str:
    """A short ``type repr`` of ``value`` for an error message."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# --- field codecs --------------------------------------------------------------------


class Codec:
    """Checks a Python value, decodes it from the wire, encodes it for the wire."""

    optional = False

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def decode(self, wire: Any, path: str) -> Any:
        return self.check(wire, path)

    def encode(self, value: Any) -> Any:
        return value


class UInt(Codec):
    """An integer in ``[lo, hi]`` (default ``[0, 2**bits)``); never a bool."""

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
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}")
        return value


class Float(Codec):
    """A finite number > 0 (≥ 0 with ``allow_zero``); an int is taken as a float."""

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero
        self.what = "a finite number ≥ 0" if allow_zero else "a finite number > 0"

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not self.allow_zero):
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}")
        return number


class Bool(Codec):
    """``true`` or ``false``."""

    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{path} must be a boolean, got {describe(value)}")
        return value


class Str(Codec):
    """A string of ``min_len`` to ``max_len`` characters, printable unless told."""

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
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}")
        return value


class Bin(Codec):
    """Bytes (msgpack bin) of exactly ``size`` or of ``min_len`` to ``max_len``."""

    def __init__(self, size: int | None = None, min_len: int = 0, max_len: int = 0) -> None:
        if size is not None:
            min_len = max_len = size
            self.what = f"{size} bytes (bin)"
        else:
            self.what = f"{min_len} to {max_len} bytes (bin)"
        self.min_len, self.max_len = min_len, max_len

    def check(self, value: Any, path: str) -> bytes:
        if not isinstance(value, bytes) or not self.min_len <= len(value) <= self.max_len:
            got = f"{len(value)} bytes" if isinstance(value, bytes) else describe(value)
            raise ProtocolError(f"{path} must be {self.what}, got {got}")
        return value


MAX_U32 = (1 << 32) - 1


class Tile(Codec):
    """A tile ``[ti, tj]`` of two uint32; a tuple in Python."""

    _coord = UInt(32)

    def check(self, value: Any, path: str) -> tuple[int, int]:
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise ProtocolError(f"{path} must be [ti, tj], got {describe(value)}")
        ti, tj = value
        if type(ti) is int and type(tj) is int and 0 <= ti <= MAX_U32 and 0 <= tj <= MAX_U32:
            return ti, tj  # the usual case, without building the error paths
        ti = self._coord.check(ti, f"{path}[0]")
        return ti, self._coord.check(tj, f"{path}[1]")

    def encode(self, value: tuple[int, int]) -> list[int]:
        return list(value)


class StrList(Codec):
    """An array of at most ``max_items`` strings, each as ``Str(max_len)``; a tuple in Python."""

    def __init__(self, max_items: int, max_len: int) -> None:
        self.max_items = max_items
        self.item = Str(max_len=max_len)

    def check(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, tuple | list) or len(value) > self.max_items:
            raise ProtocolError(
                f"{path} must be an array of at most {self.max_items} strings, "
                f"got {describe(value)}"
            )
        return tuple(self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value))

    def encode(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


class Optional(Codec):
    """``inner`` or absent: ``None`` in Python, left out of the map on the wire."""

    optional = True

    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)

    def decode(self, wire: Any, path: str) -> Any:
        return None if wire is None else self.inner.decode(wire, path)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)


class Nested(Codec):
    """A map that is the struct ``cls``."""

    def __init__(self, cls: type[Struct]) -> None:
        self.cls = cls

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, self.cls):
            raise ProtocolError(f"{path} must be a {self.cls.__name__}, got {describe(value)}")
        return value

    def decode(self, wire: Any, path: str) -> Any:
        return self.cls._from_map(wire, path)

    def encode(self, value: Struct) -> dict[str, Any]:
        return value._to_map()


class OneOf(Codec):
    """A map tagged by ``"kind"``: one of several struct classes with a ``kind`` ClassVar."""

    def __init__(self, *classes: type[Struct]) -> None:
        self.by_kind = {cls.kind: cls for cls in classes}
        self.kinds = ", ".join(repr(kind) for kind in self.by_kind)

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, tuple(self.by_kind.values())):
            raise ProtocolError(
                f"{path} must be one of {self.kinds} sources, got {describe(value)}"
            )
        return value

    def decode(self, wire: Any, path: str) -> Any:
        if not isinstance(wire, dict):
            raise ProtocolError(f"{path} must be a map, got {describe(wire)}")
        cls = self.by_kind.get(str(wire.get("kind")))
        if cls is None:
            raise ProtocolError(
                f"{path}.kind must be one of {self.kinds}, got {describe(wire.get('kind'))}"
            )
        return cls._from_map(wire, path)

    def encode(self, value: Struct) -> dict[str, Any]:
        return {"kind": value.kind, **value._to_map()}


def wire_field(codec: Codec, default: Any = MISSING) -> Any:
    """A dataclass field of a wire struct, checked and coded by ``codec``."""
    return field(default=default, metadata={"codec": codec})


_Plan = tuple[tuple[str, Codec, Any], ...]
"""A struct's fields as ``(name, codec, default)``, in order."""

MAX_PATHS = 64
"""Error-path prefixes (``where``) whose field paths a struct class keeps ready."""


class Struct:
    """Base of every wire struct: validation from field codecs, map encode/decode."""

    _where: ClassVar[str] = ""
    kind: ClassVar[str]  # set by the structs a ``OneOf`` tells apart
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # every Struct is a dataclass
    _wire_plan: ClassVar[_Plan]  # each class's own, made on first use (``_plan``)
    _wire_paths: ClassVar[dict[str, tuple[str, ...]]]

    @classmethod
    def _plan(cls) -> _Plan:
        """The fields of ``cls`` with their codecs and defaults (read once per class)."""
        plan = cls.__dict__.get("_wire_plan")
        if plan is None:
            plan = tuple((f.name, f.metadata["codec"], f.default) for f in fields(cls))
            cls._wire_plan = plan
        return plan

    @classmethod
    def _paths(cls, where: str) -> tuple[str, ...]:
        """``where.name`` of each field: the paths error messages name (kept per class)."""
        cache = cls.__dict__.get("_wire_paths")
        if cache is None:
            cache = cls._wire_paths = {}
        paths = cache.get(where)
        if paths is None:
            paths = tuple(f"{where}.{name}" for name, _, _ in cls._plan())
            if len(cache) < MAX_PATHS:
                cache[where] = paths
        return paths

    def __post_init__(self) -> None:
        cls = type(self)
        for (name, codec, _), path in zip(cls._plan(), cls._paths(self._where), strict=True):
            object.__setattr__(self, name, codec.check(getattr(self, name), path))
        self._check(self._where)

    def _check(self, where: str) -> None:
        """Rules across fields, beyond each field's own; ``where`` prefixes errors."""

    def _to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, codec, _ in type(self)._plan():
            value = getattr(self, name)
            if value is None and codec.optional:
                continue
            out[name] = codec.encode(value)
        return out

    @classmethod
    def _from_map(cls, wire: Any, where: str) -> Any:
        if not isinstance(wire, dict):
            raise ProtocolError(f"{where} must be a map, got {describe(wire)}")
        obj = cls.__new__(cls)
        for (name, codec, default), path in zip(cls._plan(), cls._paths(where), strict=True):
            raw = wire.get(name, MISSING)
            if raw is MISSING or (raw is None and codec.optional):
                if default is MISSING:
                    raise ProtocolError(f"{path} is missing")
                value = default
            else:
                value = codec.decode(raw, path)
            object.__setattr__(obj, name, value)
        obj._check(where)
        return obj


class Result(Struct):
    """A method's result; ``to_result()`` gives the wire value, ``from_result`` parses it."""

    def to_result(self) -> Any:
        return self._to_map()

    @classmethod
    def from_result(cls, result: Any) -> Any:
        return cls._from_map(result, cls._where)


class Message(Struct):
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


class TrueResult(Result):
    """A result that is the bare ``true``."""

    def to_result(self) -> bool:
        return True

    @classmethod
    def from_result(cls, result: Any) -> Any:
        if result is not True:
            raise ProtocolError(f"{cls._where} must be true, got {describe(result)}")
        return cls()


MethodTable = Mapping[str, type[Message]]
"""Message classes by wire method name; read-only."""


def method_table(*classes: type[Message]) -> MethodTable:
    """A read-only table of ``classes`` by ``method``; a name given twice is an error."""
    table: dict[str, type[Message]] = {}
    for cls in classes:
        if cls.method in table:
            raise ValueError(f"method {cls.method!r} is defined twice")
        table[cls.method] = cls
    return MappingProxyType(table)
