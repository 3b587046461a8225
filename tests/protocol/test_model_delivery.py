"""The delivery and audit bodies of a model unit (SPEC §12.12.8): round trips into the real
audit (``protocol.audit``), exact sizes and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocol.audit import (
    AuditFailure,
    Challenge,
    Openings,
    audit_seed,
    check_audit,
    draw_challenges,
)
from protocol.errors import ProtocolError
from protocol.model import reference_pass
from protocol.model_delivery import (
    answers_size,
    challenges_from_json,
    challenges_to_json,
    decode_answers,
    decode_delivery,
    delivery_size,
    encode_answers,
    encode_delivery,
)
from protocol.model_work import UnitRecord
from tests.support.model_jobs import batch, make_model

SECRET = b"\x5a" * 32


@pytest.mark.parametrize("raw_last", [True, False])
def test_a_delivery_round_trips_into_the_units_commitments(raw_last) -> None:
    model = make_model(raw_last=raw_last)
    x = batch(20, 40)
    run = reference_pass(model, x)
    roots = (b"\x01" * 32, b"\x02" * 32)
    record = UnitRecord(model, x, 32, roots, run.output)
    body = encode_delivery(model, roots, run.output)
    assert len(body) == delivery_size(model, 20) == 64 + 20 * 10 * (4 if raw_last else 1)
    got_roots, y = decode_delivery(model, 20, body)
    assert got_roots == roots and np.array_equal(y, run.output) and y.dtype == run.output.dtype
    again = UnitRecord(model, x, 32, got_roots, y)
    assert again.digest == record.digest
    with pytest.raises(ProtocolError, match=f"is {len(body)} bytes, got {len(body) - 1}"):
        decode_delivery(model, 20, body[:-1])
    with pytest.raises(ProtocolError, match="2 roots of 32 bytes"):
        encode_delivery(model, roots[:1], run.output)


def honest_unit(depth_dims=((40, 24), (24, 20), (20, 10))):
    model = make_model(depth_dims)
    x = batch(20, 40)
    run = reference_pass(model, x)
    probe = UnitRecord(model, x, 32, (b"\x00" * 32,) * (model.depth - 1), run.output)
    openings = Openings(probe, run.activations)
    roots = tuple(tree.root for tree in openings.trees)
    record = UnitRecord(model, x, 32, roots, run.output)
    return record, Openings(record, run.activations)


def test_answers_round_trip_and_pass_the_audit() -> None:
    record, openings = honest_unit()
    seed = audit_seed(SECRET, record.digest)
    challenges = draw_challenges(record.model, record.rows, seed, 12)
    assert {c.layer for c in challenges} == {0, 1, 2}  # first, middle and last layers
    wire = json.loads(json.dumps(challenges_to_json(record.unit_id, challenges, 1_700_000_600)))
    got, deadline = challenges_from_json(wire, record.model, record.rows, record.unit_id)
    assert got == challenges and deadline == 1_700_000_600
    body = encode_answers(record.model, got, [openings.answer(c) for c in got])
    assert len(body) == answers_size(record.model, record.rows, 32, got)
    answers = decode_answers(record.model, record.rows, 32, got, body)
    check_audit(record, got, answers)
    # A flipped byte of an opened row fails the audit; a short body never reaches it.
    broken = bytearray(body)
    broken[3] ^= 1
    with pytest.raises(AuditFailure):
        check_audit(record, got, decode_answers(record.model, record.rows, 32, got, bytes(broken)))
    with pytest.raises(ProtocolError, match=f"are {len(body)} bytes, got {len(body) + 1}"):
        decode_answers(record.model, record.rows, 32, got, body + b"\x00")


def test_the_answer_sizes_follow_from_the_challenges() -> None:
    record, _ = honest_unit()
    depth = 5  # m' = 32: bitlen(31) = 5 hashes per opened row
    sizes = [answers_size(record.model, 20, 32, [Challenge(i, 3)]) for i in range(3)]
    assert sizes == [128 + 32 * depth, 2 * (128 + 32 * depth), 128 + 32 * depth]
    single, _ = honest_unit(((40, 10),))  # one layer: nothing to open, the pool has X and Y
    assert answers_size(single.model, 20, 32, [Challenge(0, 5)]) == 0


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"unit": "00" * 32}, "another unit"),
        ({"challenges": []}, "1 to 65536 pairs"),
        ({"challenges": [[0, 1], [0, 1]]}, r"challenges\[1\] repeats"),
        ({"challenges": [[3, 0]]}, r"challenges\[0\]\[0\] must be an integer in \[0, 3\)"),
        ({"challenges": [[0, 20]]}, r"challenges\[0\]\[1\] must be an integer in \[0, 20\)"),
        ({"challenges": [[0, True]]}, r"challenges\[0\]\[1\] must be an integer"),
        ({"challenges": [[0]]}, r"challenges\[0\] must be \[layer, row\]"),
        ({"deadline": -1}, "audit.deadline"),
    ],
)
def test_bad_challenges_are_refused(change, error) -> None:
    record, _ = honest_unit()
    body = {**challenges_to_json(record.unit_id, [Challenge(1, 2)], 10), **change}
    with pytest.raises(ProtocolError, match=error) as caught:
        challenges_from_json(body, record.model, record.rows, record.unit_id)
    assert "\n" not in str(caught.value)
