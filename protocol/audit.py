"""The usefulness audit of a model-job unit (SPEC §12.12.6–§12.12.7).

After a unit's commitments arrive, the pool draws challenges ``(layer l, row i)`` from
``HK(pool secret, commitments digest)``, which the worker cannot predict; the worker opens
row ``i`` of ``A_l`` and of ``A_{l+1}`` with Merkle proofs; the pool recomputes the row of
``A_{l+1}`` from its own weights (``k_l·n_l`` MACs) and compares. A pass is row-independent,
so a wrong output row means at least one wrong ``(layer, row)`` pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .hashing import HK, X
from .merkle import RowTree, verify_proof
from .model import Model, layer_forward
from .model_work import UnitRecord, padded_activation
from .workload import ENTRY_MAX, ENTRY_MIN

DRAW_LABEL = b"matmine/audit/draw"
DEFAULT_BUDGET_PPM = 100
"""The audit's cost bound by default: 100 parts per million (1e-4) of the unit's MACs."""
RANK_GAP = 0.2
"""A bound on ``1 − E[ρ_s]/r`` (measured 0.165..0.183, SPEC §12.12.5): the most a worker
saves of a layer's mining by faking that layer's activation as zero, which it can only do
by faking at least ``1 − RANK_GAP`` of the layer's rows."""
_DRAW_BLOCK = 512


class AuditFailure(Exception):
    """An audit answer that does not hold; the message is one line naming the challenge."""


@dataclass(frozen=True, order=True)
class Challenge:
    """The pair ``(layer, row)``: check ``A_{layer+1}[row] = layer_{layer}(A_layer[row])``."""

    layer: int
    row: int


@dataclass(frozen=True)
class RowOpening:
    """One row of a committed (padded) activation and its Merkle proof (SPEC §3)."""

    row: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class ChallengeAnswer:
    """The worker's openings for one challenge: row of ``A_l`` (None for ``l = 0``: the
    pool has the inputs) and of ``A_{l+1}`` (None for the last layer: the pool has ``Y``)."""

    a_row: RowOpening | None
    next_row: RowOpening | None


def audit_seed(pool_secret: bytes, digest: bytes) -> bytes:
    """``HK(pool_secret, commitments digest)``: unpredictable without the pool's secret."""
    if len(pool_secret) != 32 or len(digest) != 32:
        raise ProtocolError("the pool secret and the commitments digest must be 32 bytes")
    return HK(pool_secret, digest)


class _Draws:
    """Uniform integers below a bound from ``X(seed, DRAW_LABEL)``, u64 by u64, rejecting
    ``u ≥ 2⁶⁴ − (2⁶⁴ mod bound)`` so that ``u mod bound`` is exactly uniform."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.position = 0
        self.block = b""

    def _u64(self) -> int:
        offset = self.position % _DRAW_BLOCK
        if offset == 0:
            self.block = X(self.seed, DRAW_LABEL, _DRAW_BLOCK, self.position)
        self.position += 8
        return int.from_bytes(self.block[offset : offset + 8], "little")

    def below(self, bound: int) -> int:
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            u = self._u64()
            if u < limit:
                return u % bound


def draw_challenges(model: Model, rows: int, seed: bytes, count: int) -> tuple[Challenge, ...]:
    """``count`` draws, each uniform over the unit's ``N = L·rows`` pairs: draw ``t`` is
    ``p = below(N)``, pair ``(⌊p/rows⌋, p mod rows)``; repeats are kept once, the rest in
    draw order."""
    total = model.depth * rows
    if rows <= 0 or count < 0 or total >= 1 << 64:
        raise ProtocolError(f"cannot draw {count} challenges over {rows} rows")
    draws = _Draws(seed)
    picked: dict[Challenge, None] = {}
    for _ in range(count):
        p = draws.below(total)
        picked.setdefault(Challenge(p // rows, p % rows), None)
    return tuple(picked)


def deterrence_floor(depth: int) -> int:
    """The fewest draws that catch, with probability at least ``RANK_GAP``, a worker that
    fakes ``1 − RANK_GAP`` of one layer's rows (what the rank gap of SPEC §12.12.5 needs):
    ``⌈ln(1 − g) / ln(1 − (1 − g)/L)⌉``, 1 for ``L ≤ 4``."""
    per_draw = (1 - RANK_GAP) / depth
    if per_draw >= RANK_GAP:
        return 1
    return math.ceil(math.log1p(-RANK_GAP) / math.log1p(-per_draw))


def challenge_count(model: Model, rows: int, budget_ppm: int = DEFAULT_BUDGET_PPM) -> int:
    """``c = max(deterrence_floor(L), ⌊ppm·U / (10⁶·κ)⌋)``: ``U = rows·Σ k_l·n_l`` the
    unit's MACs and ``κ = max k_l·n_l`` the dearest challenge, so the audit costs at most
    ``c·κ ≤ ppm·U/10⁶`` whenever the unit has at least :func:`min_unit_rows` rows."""
    kappa = max(layer.macs_per_row for layer in model.layers)
    fitting = budget_ppm * rows * model.macs_per_row // (10**6 * kappa)
    return max(deterrence_floor(model.depth), fitting)


def min_unit_rows(
    model: Model, budget_ppm: int = DEFAULT_BUDGET_PPM, challenges: int | None = None
) -> int:
    """The fewest rows of a unit whose ``challenges`` draws (by default the deterrence
    floor) cost within the budget: ``⌈c·κ·10⁶ / (ppm·Σ k_l·n_l)⌉``."""
    c = deterrence_floor(model.depth) if challenges is None else challenges
    kappa = max(layer.macs_per_row for layer in model.layers)
    return -(-c * kappa * 10**6 // (budget_ppm * model.macs_per_row))


def audit_cost(model: Model, challenges: Sequence[Challenge]) -> int:
    """MACs the pool spends recomputing the challenged rows, ``Σ k_l·n_l``."""
    return sum(model.layers[c.layer].macs_per_row for c in challenges)


def faked_fraction(model: Model, rows: int, faked: Sequence[Challenge]) -> float:
    """``φ``: the share of the unit's ``L·rows`` pairs that are wrong."""
    return len(set(faked)) / (model.depth * rows)


def catch_probability(fraction: float, draws: int) -> float:
    """Chance that ``draws`` draws hit a wrong pair when a fraction ``φ`` of the pairs is
    wrong: exactly ``1 − (1 − φ)^c``."""
    if not 0 <= fraction <= 1 or draws < 0:
        raise ValueError("need 0 ≤ fraction ≤ 1 and draws ≥ 0")
    return 1.0 - (1.0 - fraction) ** draws


def challenges_for(fraction: float, confidence: float) -> int:
    """The fewest draws that catch a faked fraction ``φ`` with at least ``confidence``."""
    if not 0 < fraction <= 1 or not 0 <= confidence < 1:
        raise ValueError("need 0 < fraction ≤ 1 and 0 ≤ confidence < 1")
    if fraction == 1:
        return 1
    return max(1, math.ceil(math.log1p(-confidence) / math.log1p(-fraction)))


class Openings:
    """The worker's side: padded ``A_1..A_{L−1}`` of one unit and their row trees."""

    def __init__(self, unit: UnitRecord, activations: Sequence[np.ndarray]) -> None:
        """``activations`` = ``A_0..A_{L−1}`` unpadded, as :func:`reference_pass` gives them."""
        self.unit = unit
        self.padded = [
            padded_activation(activations[index], unit.shape(index))
            for index in range(1, unit.model.depth)
        ]
        self.trees = [RowTree(matrix) for matrix in self.padded]

    def _open(self, index: int, row: int) -> RowOpening:
        matrix = self.padded[index - 1]
        proof = self.trees[index - 1].proof(row)
        return RowOpening(matrix[row].tobytes(), tuple(proof))

    def answer(self, challenge: Challenge) -> ChallengeAnswer:
        depth = self.unit.model.depth
        a_row = self._open(challenge.layer, challenge.row) if challenge.layer > 0 else None
        last = challenge.layer == depth - 1
        next_row = None if last else self._open(challenge.layer + 1, challenge.row)
        return ChallengeAnswer(a_row, next_row)


def _opened(
    unit: UnitRecord, index: int, challenge: Challenge, opening: RowOpening | None
) -> np.ndarray:
    """Row ``challenge.row`` of ``A_index`` from an opening, checked against ``a_root_index``."""
    where = f"challenge (layer {challenge.layer}, row {challenge.row}): A_{index}"
    if opening is None:
        raise AuditFailure(f"{where} row not opened")
    shape = unit.shape(index)
    if len(opening.row) != shape.k:
        raise AuditFailure(f"{where} row has {len(opening.row)} bytes, expected {shape.k}")
    depth = (shape.m - 1).bit_length()
    if len(opening.proof) != depth or any(len(p) != 32 for p in opening.proof):
        raise AuditFailure(f"{where} proof must be {depth} hashes of 32 bytes")
    if not verify_proof(opening.row, challenge.row, list(opening.proof), unit.a_roots[index - 1]):
        raise AuditFailure(f"{where} row does not match the committed root")
    row = np.frombuffer(opening.row, dtype=np.int8)
    width = unit.model.layers[index].k
    if np.any(row[width:]) or int(row.min()) < ENTRY_MIN or int(row.max()) > ENTRY_MAX:
        raise AuditFailure(f"{where} row has entries outside [-64, 64] or non-zero padding")
    return row[:width]


def check_challenge(unit: UnitRecord, challenge: Challenge, answer: ChallengeAnswer) -> None:
    """Raise :class:`AuditFailure` unless the opened ``A_{l+1}`` row is ``layer_l`` of the
    opened ``A_l`` row (inputs and delivered output rows are the pool's own)."""
    depth = unit.model.depth
    if not (0 <= challenge.layer < depth and 0 <= challenge.row < unit.rows):
        raise AuditFailure(f"challenge {challenge} is outside the unit")
    index = challenge.layer
    a = unit.x[challenge.row] if index == 0 else _opened(unit, index, challenge, answer.a_row)
    if index == depth - 1:
        claimed = unit.output[challenge.row]
    else:
        claimed = _opened(unit, index + 1, challenge, answer.next_row)
    expected = layer_forward(unit.model.layers[index], a[None, :])[0]
    if not np.array_equal(expected, claimed):
        what = "the delivered output" if index == depth - 1 else f"A_{index + 1}"
        raise AuditFailure(
            f"challenge (layer {index}, row {challenge.row}): {what} row is not layer {index} "
            f"of A_{index}"
        )


def check_audit(
    unit: UnitRecord, challenges: Sequence[Challenge], answers: Sequence[ChallengeAnswer]
) -> None:
    """Every challenge answered and holding; the first failure raises :class:`AuditFailure`."""
    if len(answers) != len(challenges):
        raise AuditFailure(f"{len(answers)} answers to {len(challenges)} challenges")
    for challenge, answer in zip(challenges, answers, strict=True):
        check_challenge(unit, challenge, answer)
