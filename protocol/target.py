"""Difficulty, per-MAC targets, compact bits and hashrate (mmpow-1 §lottery)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

from .errors import ProtocolError

DIFF1_TARGET = 1 << 224
MAX_DIGEST = (1 << 256) - 1
MACS_PER_DIFF1 = 1 << 32
TILE_MACS_PER_K = 256


def target_from_difficulty(difficulty: float) -> int:
    """Per-MAC target ``T = ⌊2²²⁴ / D⌋``; fractional D is allowed."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float):
        raise ProtocolError(f"difficulty must be a number, got {difficulty!r}")
    if not math.isfinite(difficulty) or difficulty <= 0:
        raise ProtocolError(f"difficulty must be positive, got {difficulty!r}")
    return int(Fraction(DIFF1_TARGET) / Fraction(difficulty))


def difficulty_from_target(target: int) -> float:
    """The difficulty whose target is ``target`` (inverse of the above, as a float)."""
    if target <= 0:
        raise ProtocolError("target must be positive")
    return float(Fraction(DIFF1_TARGET, target))


def bits_from_target(target: int) -> int:
    """Bitcoin's compact encoding of a target (rounds down to 3 significant bytes)."""
    if target <= 0:
        raise ProtocolError("target must be positive")
    size = (target.bit_length() + 7) // 8
    mantissa = target << 8 * (3 - size) if size <= 3 else target >> 8 * (size - 3)
    if mantissa & 0x00800000:
        mantissa >>= 8
        size += 1
    if size > 0xFF:
        raise ProtocolError("target too large for compact bits")
    return (size << 24) | mantissa


def target_from_bits(bits: int) -> int:
    """Decode compact bits; negative or zero targets raise ``ProtocolError``."""
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ProtocolError(f"bits out of range: {bits!r}")
    size, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000 or mantissa == 0:
        raise ProtocolError(f"bits {bits:#010x} encode a non-positive target")
    return mantissa >> 8 * (3 - size) if size <= 3 else mantissa << 8 * (size - 3)


def difficulty_from_bits(bits: int) -> float:
    return difficulty_from_target(target_from_bits(bits))


def ticket_limit(target: int, k: int) -> int:
    """Largest winning digest value: ``min(2²⁵⁶ − 1, T · 256 · k)``."""
    return min(MAX_DIGEST, target * TILE_MACS_PER_K * k)


def digest_value(digest: bytes) -> int:
    return int.from_bytes(digest, "little")


def meets_target(digest: bytes, target: int, k: int) -> bool:
    """True iff a ticket digest of a job with inner dimension ``k`` meets per-MAC ``target``."""
    return digest_value(digest) <= ticket_limit(target, k)


def ticket_difficulty(digest: bytes, k: int) -> float:
    """The highest difficulty this ticket meets (for best-share statistics)."""
    value = max(digest_value(digest), 1)
    return float(Fraction(DIFF1_TARGET * TILE_MACS_PER_K * k, value))


def share_macs(difficulty: float) -> float:
    """Expected MACs behind one share of ``difficulty``: D · 2³²."""
    return difficulty * MACS_PER_DIFF1


def hashrate(difficulties: Iterable[float], seconds: float) -> float:
    """MAC/s proven by shares of the given difficulties over ``seconds``."""
    if seconds <= 0:
        return 0.0
    return sum(difficulties) * MACS_PER_DIFF1 / seconds
