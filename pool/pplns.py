"""PPLNS reward split, a pure function in exact arithmetic.

Window: the newest accepted shares at or before the block, newest first, each scored
``difficulty / network_difficulty`` (the network difficulty when the share was made),
until the score sum reaches ``N = factor``; the share that crosses ``N`` counts only for
the part that fits. The whole reward minus the pool fee is split pro rata by score over
the window, even when the window is not full (a short window is *not* a reason to keep
part of the reward). Per-address amounts are floored; what the flooring leaves goes to the
fee account as ``remainder``, so ``sum(credits) + fee + remainder == reward`` exactly.

An empty window (no shares at all) pays nobody: the fee is taken as usual and everything
else is ``remainder`` for the fee account.

Scores are ``fractions.Fraction`` built from the floats exactly, so there is no rounding
anywhere before the final floor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

MAX_FEE_BPS = 10_000


@dataclass(frozen=True)
class ShareScore:
    """One accepted share as PPLNS sees it."""

    address: str
    difficulty: float
    network_difficulty: float


@dataclass(frozen=True)
class Split:
    """Outcome of one PPLNS split; all amounts in integer base units."""

    credits: dict[str, int]
    fee: int
    remainder: int
    shares_used: int = 0  # how many shares the window took (the last one maybe cut)
    window_score: Fraction = Fraction(0)  # score sum of the window, <= factor

    @property
    def total(self) -> int:
        return sum(self.credits.values()) + self.fee + self.remainder


@dataclass(frozen=True)
class PplnsPolicy:
    """Pool settings for crediting a block: window factor, fee and where the fee goes.

    ``fee_address`` None keeps fee and remainder in the pool wallet (no balance row).
    """

    factor: float = 2.0
    fee_bps: int = 100
    fee_address: str | None = None

    def __post_init__(self) -> None:
        check_parameters(0, self.fee_bps, self.factor)


def check_parameters(reward: int, fee_bps: int, factor: float) -> None:
    """Raise ``ValueError`` unless reward, fee and factor are usable."""
    if not isinstance(reward, int) or isinstance(reward, bool) or reward < 0:
        raise ValueError(f"reward must be a non-negative integer, got {reward!r}")
    if not isinstance(fee_bps, int) or isinstance(fee_bps, bool):
        raise ValueError(f"fee_bps must be an integer, got {fee_bps!r}")
    if not 0 <= fee_bps <= MAX_FEE_BPS:
        raise ValueError(f"fee_bps must be in [0, {MAX_FEE_BPS}], got {fee_bps}")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive finite number, got {factor!r}")


def share_score(share: ShareScore) -> Fraction:
    """Exact score ``difficulty / network_difficulty`` of one share."""
    d, nd = share.difficulty, share.network_difficulty
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"share difficulty must be positive and finite, got {d!r}")
    if not (math.isfinite(nd) and nd > 0):
        raise ValueError(f"network difficulty must be positive and finite, got {nd!r}")
    return Fraction(d) / Fraction(nd)


def pplns_window(
    shares_newest_first: Iterable[ShareScore], factor: float = 2.0
) -> tuple[dict[str, Fraction], int]:
    """Score per address over the window, and the number of shares taken.

    Consumes the iterable lazily and takes nothing past the share that fills the window,
    so a database cursor can be passed without reading all history.
    """
    limit = Fraction(factor)
    scores: dict[str, Fraction] = {}
    total = Fraction(0)
    used = 0
    for share in shares_newest_first:
        score = min(share_score(share), limit - total)
        scores[share.address] = scores.get(share.address, Fraction(0)) + score
        total += score
        used += 1
        if total >= limit:
            break
    return scores, used


def pplns_split(
    shares_newest_first: Iterable[ShareScore],
    reward: int,
    fee_bps: int,
    factor: float = 2.0,
) -> Split:
    """Split ``reward`` over the PPLNS window of ``shares_newest_first`` (see module doc)."""
    check_parameters(reward, fee_bps, factor)
    fee = reward * fee_bps // MAX_FEE_BPS
    distributable = reward - fee
    scores, used = pplns_window(shares_newest_first, factor)
    window = sum(scores.values(), Fraction(0))
    if window == 0:
        return Split(credits={}, fee=fee, remainder=distributable, shares_used=used)
    credits: dict[str, int] = {}
    for address, score in scores.items():
        amount = math.floor(distributable * score / window)
        if amount > 0:
            credits[address] = amount
    remainder = distributable - sum(credits.values())
    return Split(
        credits=credits, fee=fee, remainder=remainder, shares_used=used, window_score=window
    )
