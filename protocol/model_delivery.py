"""The bodies of a model unit's delivery and audit over the data plane (SPEC §12.12.8).

- **Delivery** (``PUT {data}/results/{unit}``, resumable like a result): ``a_root_1 ‖ … ‖
  a_root_{L−1} ‖ Y`` (:func:`encode_delivery` / :func:`decode_delivery`).
- **Challenges** (``GET {data}/audits/{unit}``, JSON): ``{"unit", "challenges": [[l, i],
  …], "deadline"}`` (:func:`challenges_to_json` / :func:`challenges_from_json`).
- **Answers** (``PUT {data}/audits/{unit}``): per challenge in order, the opened row of
  ``A_l`` (none for ``l = 0``) and of ``A_{l+1}`` (none for the last layer), each its
  ``k'`` bytes then its proof of ``bitlen(m' − 1)`` hashes; every size follows from the
  challenges, so the body has one exact length (:func:`answers_size`).

Every parse error is a one-line ``ProtocolError``; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .audit import Challenge, ChallengeAnswer, RowOpening
from .errors import ProtocolError
from .model import Model, output_bytes
from .model_work import layer_shape

MAX_CHALLENGES = 1 << 16
"""The most challenges one audit may hold."""


def delivery_size(model: Model, rows: int) -> int:
    """Bytes of a unit's delivery: the ``L − 1`` roots, then ``Y`` (i8 or i32 each)."""
    entry = 4 if model.int32_output else 1
    return 32 * (model.depth - 1) + rows * model.output_width * entry


def encode_delivery(model: Model, a_roots: Sequence[bytes], output: np.ndarray) -> bytes:
    """``a_root_1 ‖ … ‖ a_root_{L−1} ‖ Y`` (``Y`` as :func:`protocol.model.output_bytes`)."""
    if len(a_roots) != model.depth - 1 or any(len(root) != 32 for root in a_roots):
        raise ProtocolError(f"a delivery holds {model.depth - 1} roots of 32 bytes")
    if output.ndim != 2 or output.shape[1] != model.output_width:
        raise ProtocolError(f"the output must have {model.output_width} columns")
    return b"".join(a_roots) + output_bytes(model, output)


def decode_delivery(model: Model, rows: int, raw: bytes) -> tuple[tuple[bytes, ...], np.ndarray]:
    """The roots and the output ``Y`` (``rows × n_{L−1}``) of a delivery body."""
    want = delivery_size(model, rows)
    if len(raw) != want:
        raise ProtocolError(f"a delivery of this unit is {want} bytes, got {len(raw)}")
    count = model.depth - 1
    roots = tuple(raw[32 * i : 32 * (i + 1)] for i in range(count))
    dtype = np.dtype("<i4") if model.int32_output else np.dtype(np.int8)
    y = np.frombuffer(raw, dtype, offset=32 * count).reshape(rows, model.output_width)
    return roots, y.astype(np.int32 if model.int32_output else np.int8)


def challenges_to_json(
    unit: bytes, challenges: Sequence[Challenge], deadline: int
) -> dict[str, Any]:
    """The answer of ``GET {data}/audits/{unit}``: the pairs in draw order and the Unix
    time by which the answers must be in."""
    return {
        "unit": unit.hex(),
        "challenges": [[c.layer, c.row] for c in challenges],
        "deadline": deadline,
    }


def _uint(value: Any, what: str, bound: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise ProtocolError(f"{what} must be an integer in [0, {bound}), got {value!r:.40}")
    return value


def challenges_from_json(
    body: Any, model: Model, rows: int, unit: bytes
) -> tuple[tuple[Challenge, ...], int]:
    """The challenges (each inside the unit, no repeat) and the deadline of an audit."""
    if not isinstance(body, dict):
        raise ProtocolError("an audit must be a JSON object")
    if body.get("unit") != unit.hex():
        raise ProtocolError("the audit names another unit")
    pairs = body.get("challenges")
    if not isinstance(pairs, list) or not 1 <= len(pairs) <= MAX_CHALLENGES:
        raise ProtocolError(f"audit.challenges must be a list of 1 to {MAX_CHALLENGES} pairs")
    out: dict[Challenge, None] = {}
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ProtocolError(f"audit.challenges[{i}] must be [layer, row]")
        layer = _uint(pair[0], f"audit.challenges[{i}][0]", model.depth)
        row = _uint(pair[1], f"audit.challenges[{i}][1]", rows)
        if Challenge(layer, row) in out:
            raise ProtocolError(f"audit.challenges[{i}] repeats an earlier challenge")
        out[Challenge(layer, row)] = None
    deadline = _uint(body.get("deadline"), "audit.deadline", 1 << 63)
    return tuple(out), deadline


def _widths(model: Model, rows: int, r: int) -> tuple[list[int], int]:
    """``k'`` of every layer's padded activation and the proof length in hashes."""
    shapes = [layer_shape(model, index, rows, r) for index in range(model.depth)]
    return [s.k for s in shapes], (shapes[0].m - 1).bit_length()


def _opened(model: Model, c: Challenge) -> tuple[int | None, int | None]:
    """Which activations a challenge opens: ``A_l`` (l ≥ 1) and ``A_{l+1}`` (l < L − 1)."""
    first = c.layer if c.layer > 0 else None
    second = c.layer + 1 if c.layer < model.depth - 1 else None
    return first, second


def answers_size(model: Model, rows: int, r: int, challenges: Sequence[Challenge]) -> int:
    """The exact length of the answers to ``challenges``."""
    widths, depth = _widths(model, rows, r)
    total = 0
    for c in challenges:
        for index in _opened(model, c):
            if index is not None:
                total += widths[index] + 32 * depth
    return total


def encode_answers(
    model: Model, challenges: Sequence[Challenge], answers: Sequence[ChallengeAnswer]
) -> bytes:
    """The body of ``PUT {data}/audits/{unit}`` from ``audit.Openings.answer`` results."""
    parts: list[bytes] = []
    for c, answer in zip(challenges, answers, strict=True):
        first, second = _opened(model, c)
        for index, opening in ((first, answer.a_row), (second, answer.next_row)):
            if index is None:
                continue
            if opening is None:
                raise ProtocolError(f"challenge {c} needs the row of A_{index}")
            parts.append(opening.row)
            parts.extend(opening.proof)
    return b"".join(parts)


def decode_answers(
    model: Model, rows: int, r: int, challenges: Sequence[Challenge], raw: bytes
) -> list[ChallengeAnswer]:
    """The answers in a body of exactly :func:`answers_size` bytes, for ``audit.check_audit``."""
    want = answers_size(model, rows, r, challenges)
    if len(raw) != want:
        raise ProtocolError(f"the answers to this audit are {want} bytes, got {len(raw)}")
    widths, depth = _widths(model, rows, r)
    pos = 0
    answers = []
    for c in challenges:
        opened: list[RowOpening | None] = []
        for index in _opened(model, c):
            if index is None:
                opened.append(None)
                continue
            row = raw[pos : pos + widths[index]]
            pos += widths[index]
            proof = tuple(raw[pos + 32 * i : pos + 32 * (i + 1)] for i in range(depth))
            pos += 32 * depth
            opened.append(RowOpening(row, proof))
        answers.append(ChallengeAnswer(opened[0], opened[1]))
    return answers
