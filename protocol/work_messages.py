"""The useful-work catalogue of the wire (``work.*``), built on :mod:`protocol.codec`.

- ``work.get_blob {hash: bin32, offset: uint, length: uint}`` → ``{data: bin, total: uint}``:
  a chunk of an operand blob named by its content hash (BLAKE3 of its raw bytes).
  The pool answers at most ``length`` bytes and refuses a ``length`` above its configured
  chunk maximum; ``total`` is the blob's size.
- ``work.result {job_id: str, unit: bin32, offset: uint, data: bin, final: bool}`` →
  ``{accepted: bool, received: uint, verified?: bool, reason?: str}``: a chunk of the
  unit's padded C (int32 little-endian, row-major), in order; ``final`` marks the last.
  The answer to the final chunk says whether the result passed the pool's check.

Both are listed in ``WORK_CLIENT_METHODS``; ``protocol.methods`` combines them with the
mining catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .codec import (
    Bin,
    Bool,
    Message,
    MethodTable,
    Optional,
    Result,
    Str,
    UInt,
    method_table,
    wire_field,
)
from .messages import MAX_JOB_ID

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
    data: bytes = wire_field(Bin(min_len=0, max_len=MAX_CHUNK))
    total: int = wire_field(UInt(64))


@dataclass(frozen=True)
class GetBlob(Message):
    """Ask for ``length`` bytes of blob ``hash`` from ``offset``."""

    method: ClassVar[str] = "work.get_blob"
    result_type: ClassVar[type[Result]] = GetBlobResult
    hash: bytes = wire_field(Bin(32))
    offset: int = wire_field(UInt(64))
    length: int = wire_field(UInt(32, lo=1, hi=MAX_CHUNK))


@dataclass(frozen=True)
class WorkResultAck(Result):
    """The pool's answer to a result chunk.

    ``received`` is the number of bytes of the unit's result the pool holds now;
    ``verified`` is set on the answer to the final chunk; ``reason`` says why a chunk or
    result was not accepted.
    """

    _where: ClassVar[str] = "work.result: result"
    accepted: bool = wire_field(Bool())
    received: int = wire_field(UInt(64), 0)
    verified: bool | None = wire_field(Optional(Bool()), None)
    reason: str | None = wire_field(Optional(Str(max_len=256, printable=False)), None)


@dataclass(frozen=True)
class WorkResult(Message):
    """A chunk of the product C of ``unit`` (its id, the unit's work_root) of a job."""

    method: ClassVar[str] = "work.result"
    result_type: ClassVar[type[Result]] = WorkResultAck
    job_id: str = wire_field(Str(max_len=MAX_JOB_ID))
    unit: bytes = wire_field(Bin(32))
    offset: int = wire_field(UInt(64))
    data: bytes = wire_field(Bin(min_len=0, max_len=MAX_CHUNK))
    final: bool = wire_field(Bool())


WORK_CLIENT_METHODS: MethodTable = method_table(GetBlob, WorkResult)
"""Useful-work methods a miner sends to the pool, by name."""
