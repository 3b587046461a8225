"""Model jobs on the wire (SPEC §12.12.8): the model source, a layer share's fields, the
layer blobs; round trips through real frames, bounds and one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.connection import BadRequest, Connection, NotificationReceived, RequestReceived
from protocol.envelope import Notification, Request
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.hashing import H
from protocol.messages import Notify, Submit, WorkSpec
from protocol.model import MAX_LAYERS, canonical_bytes, model_arrays
from protocol.model_messages import (
    MAX_A_PROOF,
    MAX_TILE_ROWS,
    MIN_TILE_ROWS,
    LayerSpec,
    ModelSource,
    layer_blob,
    layer_blobs,
    layer_submit_bytes,
    model_from_blobs,
    model_id_of_blobs,
)
from protocol.model_work import layer_shape
from tests.support.model_jobs import Unit, batch, make_model

ROOT = b"\x07" * 32
MISSING = object()


def through_a_frame(params: dict) -> dict:
    (body,) = FrameDecoder(1 << 20).feed(encode_frame({"method": "x", "params": params}))
    return body["params"]


def received(message: Notify | Submit):
    """``message`` as a real connection receives it: a job by a miner, a share by the pool."""
    if isinstance(message, Notify):
        role, frame = "client", Notification(message.method, message.to_params()).to_wire()
    else:
        role, frame = "server", Request(7, message.method, message.to_params()).to_wire()
    (event,) = Connection(role).receive_data(encode_frame(frame))
    if isinstance(event, BadRequest):
        raise event.error
    assert isinstance(event, RequestReceived | NotificationReceived)
    return event.message


@pytest.fixture(scope="module")
def unit() -> Unit:
    return Unit(make_model(), batch(20, 40))


def test_a_model_job_round_trips_through_a_frame(unit) -> None:
    job = unit.job(0.5)
    params = through_a_frame(job.to_params())
    source = params["work"]["source"]
    assert source["kind"] == "model" and len(source["layers"]) == 3
    assert set(source["layers"][0]) == {"blob", "k", "n", "b_root"}
    assert Notify.from_params(params) == job
    assert received(job) == job
    assert job.work.work_root == unit.workloads[0].work_root  # the job's work is layer 0's


def test_an_old_miner_cannot_read_a_model_source(unit) -> None:
    params = unit.job(0.5).to_params()
    params["work"]["source"]["kind"] = "modelx"
    with pytest.raises(ProtocolError, match="kind must be one of 'synthetic', 'blob', 'model'"):
        Notify.from_params(params)


def test_the_layer_shapes_are_model_works(unit) -> None:
    model = make_model(((300, 17), (17, 1), (1, 4096)))
    source = dataclasses.replace(unit.source(), layers=tuple(
        LayerSpec(ROOT, layer.k, layer.n, ROOT) for layer in model.layers
    ))  # fmt: skip
    for m in (1, 16, 33):
        for r in (32, 64, 512):
            src = dataclasses.replace(source, m=m, r=r)
            assert [src.shape(i) for i in range(3)] == [
                layer_shape(model, i, m, r) for i in range(3)
            ]


def bad_source(unit: Unit, error: str, **changes) -> None:
    wire = {"kind": "model", **unit.source()._to_map(), **changes}
    wire = {key: value for key, value in wire.items() if value is not MISSING}
    with pytest.raises(ProtocolError, match=error) as caught:
        ModelSource._from_map(wire, "work.source")
    assert "\n" not in str(caught.value)


def test_bad_model_sources_are_refused(unit) -> None:
    layers = unit.source()._to_map()["layers"]
    bad_source(unit, r"work.source.r must be one of", r=48)
    bad_source(unit, r"layers\[1\].k must be layer 0's n \(24\), got 23", layers=[
        layers[0], {**layers[1], "k": 23}, layers[2]
    ])  # fmt: skip
    bad_source(unit, r"layers must be an array of 1 to 64 maps", layers=[])
    bad_source(unit, r"array of 1 to 64", layers=[layers[0]] * (MAX_LAYERS + 1))
    bad_source(unit, r"layers\[2\].b_root must be 32 bytes", layers=[
        layers[0], layers[1], {**layers[2], "b_root": b"x"}
    ])  # fmt: skip
    bad_source(unit, r"layers\[0\].k must be an integer in \[1, 65536\]", layers=[
        {**layers[0], "k": 0}
    ])  # fmt: skip
    bad_source(unit, r"work.source.m must be", m=0)
    bad_source(unit, r"http:// or https://", data="ftp://pool/data")
    bad_source(unit, r"work.source.token is missing", token=MISSING)
    bad_source(unit, r"work.source.x must be 32 bytes", x=b"short")


def test_the_work_of_a_model_job_must_be_layer_0s(unit) -> None:
    work = unit.job(0.5).work
    w1 = unit.workloads[1]
    with pytest.raises(ProtocolError, match="must be layer 0's shape m=32 n=32 k=128 r=32"):
        WorkSpec(32, 16, 128, 32, work.a_root, work.b_root, work.source)
    with pytest.raises(ProtocolError, match=r"work\.b_root of a model job must be layer 0's"):
        dataclasses.replace(work, b_root=w1.b_root)
    with pytest.raises(ProtocolError, match=r"source\.unit is not the unit id"):
        dataclasses.replace(work, a_root=w1.a_root)  # a_root must be the unit's a_root_0
    with pytest.raises(ProtocolError, match=r"source\.unit is not the unit id"):
        dataclasses.replace(work, source=dataclasses.replace(work.source, m=21))


def test_a_layer_share_round_trips_and_an_old_share_is_unchanged() -> None:
    share = Submit("j", bytes(8), 9, (1, 0), 2, ROOT, bytes(MIN_TILE_ROWS), ROOT * 3)
    params = through_a_frame(share.to_params())
    assert {"layer": 2, "a_root": ROOT, "a_rows": bytes(MIN_TILE_ROWS)}.items() <= params.items()
    assert Submit.from_params(params) == share
    assert received(share) == share
    old = Submit("j", bytes(8), 9, (1, 0))
    assert old.to_params() == {"job_id": "j", "extranonce2": bytes(8), "time": 9, "tile": [1, 0]}
    assert not old.is_layer_share and share.is_layer_share
    layer_0 = Submit("j", bytes(8), 9, (1, 0), 0, ROOT)  # the pool has A_0's rows
    assert Submit.from_params(through_a_frame(layer_0.to_params())) == layer_0


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"layer": 1}, r"params.layer needs mining.submit: params.a_root"),
        ({"a_root": ROOT}, r"params.a_root needs mining.submit: params.layer"),
        ({"layer": 64, "a_root": ROOT}, r"params.layer must be an integer in \[0, 63\]"),
        ({"layer": 1, "a_root": b"x"}, r"params.a_root must be 32 bytes"),
        ({"layer": 1, "a_root": ROOT, "a_rows": bytes(MIN_TILE_ROWS)}, r"a_rows needs .*a_proof"),
        ({"layer": 1, "a_root": ROOT, "a_proof": ROOT}, r"a_proof needs .*a_rows"),
        ({"a_rows": bytes(MIN_TILE_ROWS), "a_proof": b""}, "a_rows needs"),
        (
            {"layer": 1, "a_root": ROOT, "a_rows": bytes(MIN_TILE_ROWS - 1), "a_proof": b""},
            r"a_rows must be 2048 to 1048576 bytes",
        ),
        (
            {"layer": 1, "a_root": ROOT, "a_rows": bytes(MAX_TILE_ROWS + 1), "a_proof": b""},
            r"a_rows must be 2048 to 1048576 bytes",
        ),
        (
            {"layer": 1, "a_root": ROOT, "a_rows": bytes(2048), "a_proof": bytes(MAX_A_PROOF + 32)},
            r"a_proof must be 0 to 896 bytes",
        ),
        (
            {"layer": 1, "a_root": ROOT, "a_rows": bytes(2048), "a_proof": bytes(33)},
            "whole 32-byte hashes",
        ),
    ],
)
def test_bad_layer_share_fields_are_refused(changes, error) -> None:
    params = {"job_id": "j", "extranonce2": bytes(8), "time": 9, "tile": [0, 0], **changes}
    with pytest.raises(ProtocolError, match=error) as caught:
        Submit.from_params(params)
    assert caught.value.code == 26 and "\n" not in str(caught.value)


def test_a_layer_share_fits_the_frames_a_pool_must_have(unit) -> None:
    share = Submit("j" * 64, bytes(8), 2**64 - 1, (2**32 - 1, 2**32 - 1), 63, ROOT,
                   bytes(16 * 65536), bytes(MAX_A_PROOF))  # fmt: skip
    shape = layer_shape(make_model(((65536, 16),)), 0, 2**32 - 16, 512)
    frame = encode_frame({"id": 2**32 - 1, "method": "mining.submit", "params": share.to_params()})
    assert len(frame) - 4 <= layer_submit_bytes(shape)


def test_layer_blobs_are_the_canonical_records(unit) -> None:
    for model in (unit.model, make_model(raw_last=False, seed=4)):
        blobs = layer_blobs(model)
        assert model_id_of_blobs(blobs) == model.model_id
        assert b"".join(blobs) == canonical_bytes(model)[len(b"matmine/model1") + 4 :]
        again = model_from_blobs(blobs)
        assert again.model_id == model.model_id
        for key, array in model_arrays(model).items():
            assert np.array_equal(model_arrays(again)[key], array), key
    assert unit.source().layers[1].blob == H(layer_blob(unit.model.layers[1]))


def test_bad_layer_blobs_are_refused(unit) -> None:
    blobs = list(layer_blobs(unit.model))
    cases = [
        ([blobs[0][:5]], "shorter than its header"),
        ([blobs[0][:-1], *blobs[1:]], "layer blob 0 is"),
        ([blobs[0] + b"\x00", *blobs[1:]], "its header says"),
        ([blobs[0][:8] + b"\x07" + blobs[0][9:]], "bad header"),
        ([blobs[0], blobs[2]], "w1 has 20 rows, layer 0 gives 24"),
        ([blobs[2], blobs[0]], "layer 0 has no scale0"),  # a raw layer that is not the last
        ([], "1 to 64 layer blobs"),
    ]
    w_entry = bytearray(blobs[0])
    w_entry[9] = 100  # the first weight
    cases.append(([bytes(w_entry), *blobs[1:]], r"w0 has entries outside \[-64, 64\]"))
    for given, error in cases:
        with pytest.raises(ProtocolError, match=error):
            model_from_blobs(given)
