"""The useful-work methods of the wire (``work.*``), in the style of ``messages.py``.

- ``work.get_blob {hash: bin32, offset: uint, length: uint}`` → ``{data: bin, total: uint}``:
  a chunk of an operand blob named by its content hash (BLAKE3 of its raw bytes).
  The pool answers at most ``length`` bytes and refuses a ``length`` above its configured
  chunk maximum; ``total`` is the blob's size.
- ``work.result {job_id: str, unit: bin32, offset: uint, data: bin, final: bool}`` →
  ``{accepted: bool, received: uint, verified?: bool, reason?: str}``: a chunk of the
  unit's padded C (int32 little-endian, row-major), in order; ``final`` marks the last.
  The answer to the final chunk says whether the result passed the pool's check.

Importing this module registers both methods in ``messages.CLIENT_METHODS``
(``messages.py`` imports it at its end, so either import order works).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .messages import (
    CLIENT_METHODS,
    MAX_JOB_ID,
    Message,
    Result,
    _Bin,
    _Bool,
    _field,
    _Optional,
    _Str,
    _UInt,
)

MAX_CHUNK = 1 << 20
"""Hard ceiling of one chunk (the largest frame); pools configure a smaller maximum."""

CHUNK_SIZE = 8192
"""A chunk size every pool serves and accepts (its configured maximum is never below it)."""

USEFUL_CAPABILITY = "useful-1"
"""Announced in ``mining.subscribe {capabilities}``: this miner takes blob jobs, fetches
their operands with ``work.get_blob`` and returns each unit's product with ``work.result``."""


@dataclass(frozen=True)
class GetBlobResult(Result):
    """A chunk of a blob and the blob's total size."""

    _where: ClassVar[str] = "work.get_blob: result"
    data: bytes = _field(_Bin(min_len=0, max_len=MAX_CHUNK))
    total: int = _field(_UInt(64))


@dataclass(frozen=True)
class GetBlob(Message):
    """Ask for ``length`` bytes of blob ``hash`` from ``offset``."""

    method: ClassVar[str] = "work.get_blob"
    result_type: ClassVar[type[Result]] = GetBlobResult
    hash: bytes = _field(_Bin(32))
    offset: int = _field(_UInt(64))
    length: int = _field(_UInt(32, lo=1, hi=MAX_CHUNK))


@dataclass(frozen=True)
class WorkResultAck(Result):
    """The pool's answer to a result chunk.

    ``received`` is the number of bytes of the unit's result the pool holds now;
    ``verified`` is set on the answer to the final chunk; ``reason`` says why a chunk or
    result was not accepted.
    """

    _where: ClassVar[str] = "work.result: result"
    accepted: bool = _field(_Bool())
    received: int = _field(_UInt(64), 0)
    verified: bool | None = _field(_Optional(_Bool()), None)
    reason: str | None = _field(_Optional(_Str(max_len=256, printable=False)), None)


@dataclass(frozen=True)
class WorkResult(Message):
    """A chunk of the product C of ``unit`` (its id, the unit's work_root) of a job."""

    method: ClassVar[str] = "work.result"
    result_type: ClassVar[type[Result]] = WorkResultAck
    job_id: str = _field(_Str(max_len=MAX_JOB_ID))
    unit: bytes = _field(_Bin(32))
    offset: int = _field(_UInt(64))
    data: bytes = _field(_Bin(min_len=0, max_len=MAX_CHUNK))
    final: bool = _field(_Bool())


WORK_CLIENT_METHODS: dict[str, type[Message]] = {cls.method: cls for cls in (GetBlob, WorkResult)}
"""Useful-work methods a miner sends to the pool, by name."""

CLIENT_METHODS.update(WORK_CLIENT_METHODS)
