"""protocol/useful.py and protocol/work_messages.py: units, padding, reassembly, chunks, wire."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.connection import BadRequest, Connection, RequestReceived, ResponseReceived
from protocol.denoise import denoise, freivalds
from protocol.envelope import Request
from protocol.errors import ProtocolError
from protocol.framing import encode_frame
from protocol.merkle import rows_root
from protocol.methods import CLIENT_METHODS
from protocol.ticket import mine_header
from protocol.useful import (
    ChunkAssembler,
    assemble,
    blob_id,
    check_operands,
    choose_r,
    chunks,
    decode_result,
    padded_k,
    plan_product,
    unit_id,
    unit_operands,
)
from protocol.work_messages import GetBlob, GetBlobResult, WorkResult, WorkResultAck
from protocol.workload import Shape, Workload, work_root


def operands(rng, m, k, n):
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


def product_via_units(a, b, plan):
    """C from the plan's padded units, each multiplied exactly, then cut and placed."""
    bt = np.ascontiguousarray(b.T)
    out = np.full((plan.m, plan.n), -1, dtype=np.int32)
    for unit in plan.units:
        ua, ub = unit_operands(a, bt, unit)
        c = (ua.astype(np.int64) @ ub.astype(np.int64).T).astype("<i4")
        assemble(out, unit, decode_result(c.tobytes(), unit))
    return out


def test_plan_splits_along_m_and_n_with_full_k():
    plan = plan_product(2500, 1100, 300, r=64, unit_m=1024, unit_n=1024)
    assert [(u.row0, u.rows, u.col0, u.cols) for u in plan.units] == [
        (0, 1024, 0, 1024),
        (0, 1024, 1024, 76),
        (1024, 1024, 0, 1024),
        (1024, 1024, 1024, 76),
        (2048, 452, 0, 1024),
        (2048, 452, 1024, 76),
    ]
    # k = 300 with r ≤ 64: r = 32 pads to 320 (r = 64 would pad to 320 too, but 4r = 256 ok):
    assert plan.r == 64 and plan.k_padded == 320
    shapes = {u.shape for u in plan.units}
    assert Shape(1024, 1024, 320, 64) in shapes
    assert Shape(464, 80, 320, 64) in shapes  # 452 → 464, 76 → 80: multiples of 16
    for u in plan.units:
        assert u.shape.k == 320
        assert u.macs == u.rows * u.cols * 300
    assert sum(u.macs for u in plan.units) == plan.macs == 2500 * 1100 * 300


@pytest.mark.parametrize(
    ("k", "preferred", "r", "kp"),
    [
        (1, 64, 32, 128),  # tiny k: the smallest r, padded to 4r
        (128, 64, 32, 128),
        (200, 64, 32, 224),
        (256, 64, 64, 256),  # exact for r = 64: ties go to the larger r
        (1000, 64, 64, 1024),
        (1000, 512, 256, 1024),  # 512 would pad to 2048; 32..256 all pad to 1024: the largest
        (4096, 512, 512, 4096),
    ],
)
def test_choose_r_minimises_padding(k, preferred, r, kp):
    chosen = choose_r(k, preferred)
    assert padded_k(k, chosen) == kp
    assert chosen == r
    Shape(16, 16, padded_k(k, chosen), chosen)  # a legal mmpow-1 shape


def test_plan_rejects_bad_dimensions():
    with pytest.raises(ProtocolError, match="m must be a positive integer"):
        plan_product(0, 16, 16)
    with pytest.raises(ProtocolError, match="unit_n must be a positive multiple of 16"):
        plan_product(16, 16, 16, unit_n=100)
    with pytest.raises(ProtocolError, match="more than the largest k"):
        plan_product(16, 16, 65537)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 80),
    k=st.integers(1, 300),
    n=st.integers(1, 80),
    unit_m=st.sampled_from([16, 32, 48]),
    unit_n=st.sampled_from([16, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_units_reassemble_to_the_exact_product(m, k, n, unit_m, unit_n, seed):
    a, b = operands(np.random.default_rng(seed), m, k, n)
    plan = plan_product(m, n, k, r=64, unit_m=unit_m, unit_n=unit_n)
    for unit in plan.units:
        s = unit.shape
        assert s.m % 16 == 0 and s.n % 16 == 0 and s.k % s.r == 0 and s.k >= 4 * s.r
        assert unit.rows <= s.m < unit.rows + 16 and unit.cols <= s.n < unit.cols + 16
    expected = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(product_via_units(a, b, plan), expected)


def test_unit_operands_are_zero_padded_and_ids_are_content_hashes():
    rng = np.random.default_rng(5)
    a, b = operands(rng, 20, 50, 30)
    bt = np.ascontiguousarray(b.T)
    plan = plan_product(20, 30, 50, r=32, unit_m=16, unit_n=16)
    last = plan.units[-1]
    ua, ub = unit_operands(a, bt, last)
    assert ua.shape == (16, 128) and ub.shape == (16, 128)
    np.testing.assert_array_equal(ua[:4, :50], a[16:20])
    assert not ua[4:].any() and not ua[:, 50:].any()
    np.testing.assert_array_equal(ub[:14, :50], bt[16:30])
    assert not ub[14:].any()
    uid = unit_id(last.shape, rows_root(ua), rows_root(ub))
    assert uid == Workload(last.shape, ua, ub).work_root
    ua2 = ua.copy()
    ua2[0, 0] ^= 1
    assert unit_id(last.shape, rows_root(ua2), rows_root(ub)) != uid
    assert blob_id(ua.tobytes()) != blob_id(ua2.tobytes())


def test_denoised_noisy_product_of_a_unit_passes_freivalds_and_one_off_fails():
    """A unit as a miner sees it: mine one header, denoise, check; then break one entry."""
    rng = np.random.default_rng(9)
    a, b = operands(rng, 40, 100, 24)
    plan = plan_product(40, 24, 100, r=32, unit_m=32, unit_n=32)
    unit = plan.units[1]  # rows 32..40: padded from 8 to 16 rows
    ua, ub = unit_operands(a, np.ascontiguousarray(b.T), unit)
    work = mine_header(bytes(range(128)), Workload(unit.shape, ua, ub))
    c = denoise(work.noisy_product, ua, ub, work.seed, unit.shape.r)
    expected = a[32:40].astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(c[: unit.rows, : unit.cols], expected)
    assert freivalds(ua, ub, c, 3, np.random.default_rng(1))
    bad = c.copy()
    bad[3, 7] += 1
    assert not freivalds(ua, ub, bad, 3, np.random.default_rng(2))


def test_check_operands_errors():
    a = np.zeros((4, 5), np.int8)
    with pytest.raises(ProtocolError, match="inner dimensions differ"):
        check_operands(a, np.zeros((6, 3), np.int8))
    with pytest.raises(ProtocolError, match="B must be int8"):
        check_operands(a, np.zeros((5, 3), np.int16))
    with pytest.raises(ProtocolError, match=r"A has entries outside \[-64, 64\]"):
        check_operands(np.full((4, 5), -65, np.int8), np.zeros((5, 3), np.int8))
    with pytest.raises(ProtocolError, match="2-D"):
        check_operands(np.zeros(5, np.int8), np.zeros((5, 3), np.int8))


def test_decode_result_checks_size():
    unit = plan_product(16, 16, 128, r=32).units[0]
    with pytest.raises(ProtocolError, match="must be 1024 bytes, got 1020"):
        decode_result(bytes(1020), unit)


def test_chunk_assembler_in_order_only():
    data = bytes(range(256)) * 5
    pieces = list(chunks(data, 300))
    assert [len(p[1]) for p in pieces] == [300, 300, 300, 300, 80]
    assert [p[2] for p in pieces] == [False] * 4 + [True]
    asm = ChunkAssembler(len(data), "test")
    assert asm.next_request(300) == (0, 300)
    for offset, chunk, final in pieces:
        asm.feed(offset, chunk, final)
    assert asm.done and asm.value() == data and asm.next_request(300) is None
    with pytest.raises(ProtocolError, match="after the final"):
        asm.feed(len(data), b"x", True)

    asm = ChunkAssembler(len(data), "test")
    with pytest.raises(ProtocolError, match="offset 300, expected offset 0"):
        asm.feed(300, data[300:600], False)
    asm.feed(0, data[:300], False)
    with pytest.raises(ProtocolError, match="past the total"):
        asm.feed(300, data[300:] + b"!", True)
    with pytest.raises(ProtocolError, match="marked not final"):
        asm.feed(300, data[300:], False)
    with pytest.raises(ProtocolError, match="marked final"):
        asm.feed(300, data[300:600], True)
    with pytest.raises(ProtocolError, match=r"incomplete \(300/1280"):
        asm.value()


def test_work_messages_round_trip_and_name_the_bad_field():
    msg = GetBlob(hash=bytes(32), offset=8192, length=8192)
    assert GetBlob.from_params(msg.to_params()) == msg
    frame = encode_frame(Request(1, "work.get_blob", msg.to_params()).to_wire())
    (event,) = Connection("server").receive_data(frame)
    assert isinstance(event, RequestReceived) and event.message == msg
    with pytest.raises(ProtocolError, match=r"work.get_blob: params.hash must be 32 bytes"):
        GetBlob.from_params({"hash": b"x", "offset": 0, "length": 1})
    with pytest.raises(ProtocolError, match=r"work.get_blob: params.length must be"):
        GetBlob.from_params({"hash": bytes(32), "offset": 0, "length": 0})
    with pytest.raises(ProtocolError, match=r"work.get_blob: params.offset is missing"):
        GetBlob.from_params({"hash": bytes(32), "length": 1})

    res = WorkResult(job_id="j1", unit=bytes(range(32)), offset=0, data=b"abc", final=False)
    assert WorkResult.from_params(res.to_params()) == res
    with pytest.raises(ProtocolError, match=r"work.result: params.final must be a boolean"):
        WorkResult.from_params({**res.to_params(), "final": 1})
    ack = WorkResultAck(accepted=True, received=3)
    assert WorkResultAck.from_result(ack.to_result()) == ack
    assert "verified" not in ack.to_result()
    done = WorkResultAck(accepted=False, received=0, verified=False, reason="wrong product")
    assert WorkResultAck.from_result(done.to_result()) == done
    blob = GetBlobResult(data=b"\x01" * 10, total=100)
    assert GetBlobResult.from_result(blob.to_result()) == blob
    assert CLIENT_METHODS["work.get_blob"] is GetBlob
    assert CLIENT_METHODS["work.result"] is WorkResult


def test_work_methods_travel_over_a_real_connection_pair():
    client, server = Connection("client"), Connection("server")
    request_id, data = client.send_request(GetBlob(hash=bytes(32), offset=0, length=16))
    (event,) = server.receive_data(data)
    assert isinstance(event, RequestReceived)
    assert event.message == GetBlob(hash=bytes(32), offset=0, length=16)
    reply = server.send_result(request_id, GetBlobResult(data=b"\x00" * 16, total=64))
    (answer,) = client.receive_data(reply)
    assert isinstance(answer, ResponseReceived)
    assert answer.result == GetBlobResult(data=b"\x00" * 16, total=64)

    result_id, data = client.send_request(
        WorkResult(job_id="j", unit=bytes(32), offset=0, data=b"\x01" * 8, final=True)
    )
    (event,) = server.receive_data(data)
    assert isinstance(event.message, WorkResult) and event.message.final
    (answer,) = client.receive_data(
        server.send_result(result_id, WorkResultAck(accepted=True, received=8, verified=True))
    )
    assert answer.result == WorkResultAck(accepted=True, received=8, verified=True)

    # a well-framed request with broken params is a BadRequest the server answers
    (event,) = server.receive_data(
        encode_frame(
            {"id": 9, "method": "work.result", "params": {"job_id": "j", "unit": b"short"}}
        )
    )
    assert isinstance(event, BadRequest) and "params.unit must be 32 bytes" in str(event.error)


def test_unit_id_is_the_work_root():
    shape = Shape(16, 16, 128, 32)
    assert unit_id(shape, b"a" * 32, b"b" * 32) == work_root(shape, b"a" * 32, b"b" * 32)
