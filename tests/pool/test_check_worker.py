"""What a check process answers per share (``pool.check_worker.CheckCaches``): the reference
digest and the share and network verdicts of ``protocol.target``, whatever the difficulty
and bits, and an error for the one share whose fields are refused, not for its batch."""

from __future__ import annotations

import math

import numpy as np

from pool.check_worker import CheckCaches, ProcRequest
from protocol.target import meets_target, target_from_bits, target_from_difficulty
from protocol.ticket import verify_ticket
from protocol.workload import Shape, synthetic_rows

SHAPE = Shape(64, 48, 512, 64)
SEED = bytes(range(32))
EASY_BITS = 0x2100FFFF  # a network every ticket meets
HARD_BITS = 0x03000001  # one no ticket meets


def request(header: bytes, tile: tuple[int, int], difficulty: float, bits: int) -> ProcRequest:
    s = SHAPE
    return (("seed", SEED), (s.m, s.n, s.k, s.r), tile, header, difficulty, bits)


def reference(header: bytes, tile: tuple[int, int]) -> bytes:
    a = synthetic_rows(SEED, "A", 16 * tile[0], 16, SHAPE.k)
    bt = synthetic_rows(SEED, "B", 16 * tile[1], 16, SHAPE.k)
    return verify_ticket(header, SHAPE, tile, a, bt)


def test_answers_are_the_reference_verdicts_for_any_difficulty_and_bits() -> None:
    rng = np.random.default_rng(5)
    headers = [rng.bytes(128) for _ in range(3)]
    cases = []
    for i in range(40):
        digest_of = (headers[i % 3], (i % SHAPE.tiles_m, (3 * i) % SHAPE.tiles_n))
        difficulty = float(2.0 ** rng.uniform(-40, 8)) if i % 4 else 1e-9
        bits = (EASY_BITS, HARD_BITS, 0x1D010000, 0x1F00FFFF)[i % 4]
        cases.append((digest_of, difficulty, bits))
    caches = CheckCaches()
    for batch in (cases[:7], cases[7:8], cases[8:]):  # caches kept from batch to batch
        answers = caches.check([request(*d, diff, bits) for d, diff, bits in batch])
        for ((header, tile), difficulty, bits), answer in zip(batch, answers, strict=True):
            digest = reference(header, tile)
            share = meets_target(digest, target_from_difficulty(difficulty), SHAPE.k)
            network = meets_target(digest, target_from_bits(bits), SHAPE.k)
            assert answer == (digest, share, network)


def test_a_refused_field_answers_an_error_for_its_share_only() -> None:
    header = bytes(128)
    good = request(header, (1, 2), 1e-9, EASY_BITS)
    bad_dims = (good[0], (64, 48, 500, 64), *good[2:])
    outside = request(header, (SHAPE.tiles_m, 0), 1e-9, EASY_BITS)
    batch = [good, request(header, (0, 0), math.nan, EASY_BITS), bad_dims, outside]
    batch.append(request(header, (2, 1), 1e-9, 0x00800000))  # a negative network target
    answers = CheckCaches().check([*batch, good])
    assert answers[0] == answers[-1] == (reference(header, (1, 2)), True, True)
    for answer in answers[1:-1]:
        message, code = answer
        assert isinstance(message, str) and isinstance(code, int) and code >= 0
