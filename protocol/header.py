"""The 128-byte block header and the coinbase (mmpow-1 §header)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError
from .hashing import H

HEADER_SIZE = 128
HEADER_VERSION = 1
"""The mmpow-1 header version."""
MAX_TIME_ROLL = 600
"""A miner may roll a job's time forward by up to this many seconds, never backward."""
COIN = 10**8  # base units per coin: every amount (rewards, balances, payments) is in base units
EXTRANONCE2_SIZE = 8
_HEADER = struct.Struct("<II32s32s32sQI12s")
_COINBASE_MAGIC = b"MMCB\x01"
_CB_FIXED = struct.Struct("<IQ")
_RESERVED = bytes(12)


@dataclass(frozen=True)
class Header:
    """A block header; ``encode()`` gives the 128 bytes that are hashed and mined."""

    version: int
    height: int
    prev_hash: bytes
    coinbase_hash: bytes
    work_root: bytes
    time: int
    bits: int

    def encode(self) -> bytes:
        return encode_header(
            self.version,
            self.height,
            self.prev_hash,
            self.coinbase_hash,
            self.work_root,
            self.time,
            self.bits,
        )

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        if len(raw) != HEADER_SIZE:
            raise ProtocolError(f"header must be {HEADER_SIZE} bytes, got {len(raw)}")
        version, height, prev, cb, wr, time, bits, reserved = _HEADER.unpack(raw)
        if reserved != bytes(12):
            raise ProtocolError("header reserved bytes must be zero")
        return cls(version, height, prev, cb, wr, time, bits)

    def hash(self) -> bytes:
        """Block hash ``H(header)``."""
        return block_hash(self.encode())


def encode_header(
    version: int,
    height: int,
    prev_hash: bytes,
    coinbase_hash: bytes,
    work_root: bytes,
    time: int,
    bits: int,
) -> bytes:
    """The 128 bytes of the header with these fields (``Header(...).encode()`` without
    building the object: a pool assembles one per submit)."""
    try:
        return _HEADER.pack(
            version, height, prev_hash, coinbase_hash, work_root, time, bits, _RESERVED
        )
    except struct.error as exc:
        raise ProtocolError(f"header field out of range: {exc}") from None


def block_hash(header: bytes) -> bytes:
    return H(header)


def coinbase_hash(coinbase: bytes) -> bytes:
    """``H("mmpow1/coinbase" ‖ coinbase)``."""
    return H(b"mmpow1/coinbase", coinbase)


@dataclass(frozen=True)
class Coinbase:
    """What a coinbase says: who gets ``reward`` at ``height``, and the extranonces."""

    height: int
    reward: int
    address: str
    tag: str
    extranonce1: bytes
    extranonce2: bytes

    def encode(self) -> bytes:
        c1, c2 = coinbase_parts(
            self.height, self.reward, self.address, self.tag, len(self.extranonce1)
        )
        return assemble_coinbase(c1, self.extranonce1, self.extranonce2, c2)


def coinbase_parts(
    height: int, reward: int, address: str, tag: str, extranonce1_size: int
) -> tuple[bytes, bytes]:
    """(coinbase1, coinbase2) around the extranonces, as the pool sends them."""
    addr, tag_b = address.encode(), tag.encode()
    if len(addr) > 255 or len(tag_b) > 255 or not 0 < extranonce1_size < 256:
        raise ProtocolError("coinbase address, tag or extranonce1 too long")
    coinbase1 = (
        _COINBASE_MAGIC
        + _CB_FIXED.pack(height, reward)
        + bytes([len(addr)])
        + addr
        + bytes([extranonce1_size])
    )
    return coinbase1, bytes([len(tag_b)]) + tag_b


def assemble_coinbase(
    coinbase1: bytes, extranonce1: bytes, extranonce2: bytes, coinbase2: bytes
) -> bytes:
    if len(extranonce2) != EXTRANONCE2_SIZE:
        raise ProtocolError(f"extranonce2 must be {EXTRANONCE2_SIZE} bytes")
    return coinbase1 + extranonce1 + extranonce2 + coinbase2


def parse_coinbase(raw: bytes) -> Coinbase:
    """Decode a full coinbase; raises ``ProtocolError`` on any inconsistency."""
    try:
        if not raw.startswith(_COINBASE_MAGIC):
            raise ProtocolError("coinbase has a bad magic")
        pos = len(_COINBASE_MAGIC)
        height, reward = _CB_FIXED.unpack_from(raw, pos)
        pos += _CB_FIXED.size
        alen = raw[pos]
        address = raw[pos + 1 : pos + 1 + alen].decode()
        pos += 1 + alen
        en1_len = raw[pos]
        pos += 1
        en1 = raw[pos : pos + en1_len]
        en2 = raw[pos + en1_len : pos + en1_len + EXTRANONCE2_SIZE]
        pos += en1_len + EXTRANONCE2_SIZE
        tlen = raw[pos]
        tag = raw[pos + 1 : pos + 1 + tlen].decode()
        if pos + 1 + tlen != len(raw) or len(en2) != EXTRANONCE2_SIZE or len(en1) != en1_len:
            raise ProtocolError("coinbase length does not match its fields")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ProtocolError("truncated or garbled coinbase") from None
    return Coinbase(height, reward, address, tag, en1, en2)


def coins(amount: int) -> str:
    """Base units as a plain decimal number of coins, for log lines ("50.0", "0.00012")."""
    whole, frac = divmod(amount, COIN)
    return f"{whole}.{f'{frac:08d}'.rstrip('0') or '0'}"
