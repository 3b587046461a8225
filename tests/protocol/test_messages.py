"""Typed wire messages: round trips, validation errors that name the field, the envelope."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import Message
from protocol.connection import BadRequest, Connection, NotificationReceived, RequestReceived
from protocol.envelope import ErrorInfo, Notification, Request, Response, decode_envelope
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import (
    Authorize,
    AuthorizeResult,
    BlobSource,
    Notify,
    Ping,
    PingResult,
    Reconnect,
    ShowMessage,
    Submit,
    SubmitResult,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
    SuggestDifficultyResult,
    SyntheticSource,
    WorkSpec,
)
from protocol.methods import CLIENT_METHODS, SERVER_METHODS, parse_result
from protocol.workload import Shape, Workload, work_root
from tests.support.messages_data import (
    bin32,
    client_messages,
    positive,
    server_messages,
    u32,
)
from tests.support.wire import values as wire_values


def receive(method: str, params: Any) -> Message:
    """``method`` with ``params`` as a connection receives it (the path the pool and the
    miner take): a request to a server, or a pool → miner notification to a client. A
    ``BadRequest`` raises its error."""
    if method in SERVER_METHODS:
        role, frame = "client", Notification(method, params).to_wire()
    else:
        role, frame = "server", Request(1, method, params).to_wire()
    (event,) = Connection(role).receive_data(encode_frame(frame))
    if isinstance(event, BadRequest):
        raise event.error
    assert isinstance(event, RequestReceived | NotificationReceived)
    return event.message


# --- strategies (also used by test_connection) ---------------------------------------


results = st.one_of(
    st.builds(
        SubscribeResult,
        session_id=st.binary(min_size=1, max_size=32),
        extranonce1=st.binary(min_size=1, max_size=32),
        extranonce2_size=st.just(8),
    ),
    st.builds(AuthorizeResult, ok=st.booleans()),
    st.builds(SubmitResult, difficulty=positive, block=st.none() | bin32),
    st.just(SuggestDifficultyResult()),
    st.just(PingResult()),
)
RESULT_METHOD = {
    SubscribeResult: "mining.subscribe",
    AuthorizeResult: "mining.authorize",
    SubmitResult: "mining.submit",
    SuggestDifficultyResult: "mining.suggest_difficulty",
    PingResult: "mining.ping",
}

# --- round trips ---------------------------------------------------------------------


@given(client_messages | server_messages)
def test_messages_round_trip_through_params(message: Message) -> None:
    params = message.to_params()
    assert type(message).from_params(params) == message
    assert receive(message.method, params) == message


@given(client_messages | server_messages, u32)
def test_messages_round_trip_through_frames(message: Message, request_id: int) -> None:
    frame = encode_frame(Request(request_id, message.method, message.to_params()).to_wire())
    frame += encode_frame(Notification(message.method, message.to_params()).to_wire())
    dec = FrameDecoder()
    first, second = dec.feed(frame[:7]) + dec.feed(frame[7:])
    request, notification = decode_envelope(first), decode_envelope(second)
    assert isinstance(request, Request) and request.id == request_id
    assert isinstance(notification, Notification)
    assert receive(request.method, request.params) == message
    assert receive(notification.method, notification.params) == message


@given(results)
def test_results_round_trip(result: Any) -> None:
    method = RESULT_METHOD[type(result)]
    wire = result.to_result()
    frame = encode_frame(Response(5, wire).to_wire())
    response = decode_envelope(FrameDecoder().feed(frame)[0])
    assert isinstance(response, Response)
    assert parse_result(method, response.result) == result
    assert CLIENT_METHODS[method].result_type is type(result)


def test_wire_shapes_of_the_results() -> None:
    assert AuthorizeResult(True).to_result() is True
    assert PingResult().to_result() is True
    assert SuggestDifficultyResult().to_result() is True
    assert SubmitResult(4.0).to_result() == {"difficulty": 4.0}
    assert SubmitResult(4.0, b"\x01" * 32).to_result() == {"difficulty": 4.0, "block": b"\x01" * 32}
    assert SubscribeResult(b"s", b"e1", 8).to_result() == {
        "session_id": b"s",
        "extranonce1": b"e1",
        "extranonce2_size": 8,
    }


def test_wire_shapes_of_the_messages() -> None:
    work = WorkSpec(32, 48, 256, 64, b"a" * 32, b"b" * 32, SyntheticSource(b"s" * 32))
    notify = Notify("j", False, 1, 2, b"p" * 32, b"c1", b"c2", 3, 0x1F00FFFF, 0.5, work)
    assert notify.to_params()["work"] == {
        "m": 32,
        "n": 48,
        "k": 256,
        "r": 64,
        "a_root": b"a" * 32,
        "b_root": b"b" * 32,
        "source": {"kind": "synthetic", "seed": b"s" * 32},
    }
    blob = dataclasses.replace(work, source=BlobSource(b"x" * 32, b"y" * 32))
    assert blob.source == BlobSource(b"x" * 32, b"y" * 32)
    blob_params = {**notify.to_params(), "work": {**notify.to_params()["work"]}}
    blob_params["work"]["source"] = {"kind": "blob", "a": b"x" * 32, "b": b"y" * 32}
    assert Notify.from_params(blob_params).work == blob
    assert Submit("j", bytes(8), 9, (1, 2)).to_params() == {
        "job_id": "j",
        "extranonce2": bytes(8),
        "time": 9,
        "tile": [1, 2],
    }
    assert Subscribe("a").to_params() == {"agent": "a", "protocol": 1}
    assert Ping().to_params() == {}
    assert Ping.from_params({}) == Ping()


def test_method_tables() -> None:
    core = {
        "mining.subscribe",
        "mining.authorize",
        "mining.submit",
        "mining.suggest_difficulty",
        "mining.ping",
    }
    assert core <= set(CLIENT_METHODS)
    assert all(name.startswith("work.") for name in set(CLIENT_METHODS) - core)
    assert set(SERVER_METHODS) == {"mining.notify", "client.reconnect", "client.show_message"}
    for name, cls in CLIENT_METHODS.items():
        assert cls.method == name and cls.result_type is not None
    for name, cls in SERVER_METHODS.items():
        assert cls.method == name and cls.result_type is None


def test_error_codes() -> None:
    assert [(c.name, int(c)) for c in ErrorCode] == [
        ("OTHER", 20),
        ("STALE", 21),
        ("DUPLICATE", 22),
        ("LOW_DIFFICULTY", 23),
        ("UNAUTHORIZED", 24),
        ("NOT_SUBSCRIBED", 25),
        ("MALFORMED", 26),
        ("RATE_LIMITED", 27),
        ("BAD_TIME", 28),
    ]


def test_workspec_shape_and_work_root_match_the_workload() -> None:
    shape = Shape(32, 16, 128, 32)
    seed = bytes(range(32))
    workload = Workload.synthetic(seed, shape)
    spec = WorkSpec(32, 16, 128, 32, workload.a_root, workload.b_root, SyntheticSource(seed))
    assert spec.shape == shape
    assert spec.work_root == workload.work_root == work_root(shape, spec.a_root, spec.b_root)


def test_authorize_address_and_worker() -> None:
    assert Authorize("mmd1abc.rig1").address == "mmd1abc"
    assert Authorize("mmd1abc.rig1").worker == "rig1"
    assert Authorize("mmd1abc.rig.1").worker == "rig.1"
    assert Authorize("mmd1abc").worker == "default"
    assert Authorize("mmd1abc.").worker == "default"
    assert Authorize("mmd1abc").password == ""
    # not our job to check the address checksum: the pool does it with protocol.address
    assert Authorize("not-an-address.w").address == "not-an-address"


def test_unknown_extra_fields_are_ignored() -> None:
    params = {**Submit("j", bytes(8), 1, (0, 0)).to_params(), "future": {"x": [1]}}
    assert Submit.from_params(params) == Submit("j", bytes(8), 1, (0, 0))
    notify = Notify.from_params(VALID[Notify])
    wire = notify.to_params()
    wire["work"]["source"]["hint"] = "x"
    wire["work"]["extra"] = 1
    wire["extra"] = None
    assert Notify.from_params(wire) == notify


# --- validation ----------------------------------------------------------------------

VALID: dict[type[Message], dict[str, Any]] = {
    Subscribe: {"agent": "miner/1.0", "protocol": 1, "resume": b"sess"},
    Authorize: {"login": "mmd1abc.rig", "password": "x"},
    Submit: {"job_id": "j1", "extranonce2": bytes(8), "time": 1000, "tile": [3, 4]},
    SuggestDifficulty: {"difficulty": 2.5},
    Ping: {},
    Notify: Notify(
        "j1",
        True,
        1,
        7,
        bytes(32),
        b"c1",
        b"c2",
        1000,
        0x1F00FFFF,
        1.0,
        WorkSpec(64, 64, 256, 64, bytes(32), bytes(32), BlobSource(bytes(32), bytes(32))),
    ).to_params(),
    Reconnect: {"host": "127.0.0.1", "port": 3333, "wait": 5},
    ShowMessage: {"text": "hello"},
}

ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**32,
    2**64 - 1,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 300,
    "a\x00b",
    b"",
    b"\x00" * 7,
    b"\x00" * 33,
    [],
    [1],
    [1, 2, 3],
    [-1, 0],
    {},
    {"kind": "blob"},
]


@pytest.mark.parametrize("cls", list(VALID))
def test_valid_samples_parse(cls: type[Message]) -> None:
    message = cls.from_params(VALID[cls])
    assert cls.from_params(message.to_params()) == message


@pytest.mark.parametrize(
    ("cls", "name"), [(cls, f.name) for cls in VALID for f in dataclasses.fields(cls)]
)
def test_every_field_rejects_bad_values_naming_the_field(cls: type[Message], name: str) -> None:
    path = f"{cls.method}: params.{name}"
    rejected = 0
    for odd in ODD_VALUES:
        params = {**VALID[cls], name: odd}
        try:
            message = cls.from_params(params)
        except ProtocolError as exc:
            assert str(exc).startswith(path), str(exc)
            assert exc.code == ErrorCode.MALFORMED
            rejected += 1
        else:
            assert cls.from_params(message.to_params()) == message
    assert rejected >= 5
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    missing = {key: value for key, value in VALID[cls].items() if key != name}
    if field.default is dataclasses.MISSING:
        with pytest.raises(ProtocolError, match=f"^{path} is missing$"):
            cls.from_params(missing)
    else:
        assert getattr(cls.from_params(missing), name) == field.default


@given(st.sampled_from(list(VALID)), st.data())
def test_arbitrary_values_in_any_field_never_crash(cls: type[Message], data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(cls)] or ["anything"]
    name = data.draw(st.sampled_from(names))
    params = {**VALID[cls], name: data.draw(wire_values)}
    try:
        message = cls.from_params(params)
    except ProtocolError as exc:
        assert str(exc).startswith(f"{cls.method}: params.{name}")
    else:
        assert cls.from_params(message.to_params()) == message


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (
            Submit,
            {"extranonce2": b"1234567"},
            "mining.submit: params.extranonce2 must be 8 bytes (bin)",
        ),
        (
            Submit,
            {"extranonce2": "12345678"},
            "mining.submit: params.extranonce2 must be 8 bytes (bin)",
        ),
        (Submit, {"time": 2**64}, "mining.submit: params.time must be an integer in [0, 2**64)"),
        (Submit, {"time": "1"}, "mining.submit: params.time must be an integer"),
        (
            Submit,
            {"tile": [0, -1]},
            "mining.submit: params.tile[1] must be an integer in [0, 2**32)",
        ),
        (Submit, {"tile": [2**32, 0]}, "mining.submit: params.tile[0] must be an integer"),
        (Submit, {"tile": [0, 0, 0]}, "mining.submit: params.tile must be [ti, tj]"),
        (Submit, {"job_id": ""}, "mining.submit: params.job_id must be a string of 1 to 64"),
        (
            SuggestDifficulty,
            {"difficulty": 0},
            "mining.suggest_difficulty: params.difficulty must be a finite number > 0",
        ),
        (
            SuggestDifficulty,
            {"difficulty": -2.0},
            "mining.suggest_difficulty: params.difficulty must be a finite number > 0",
        ),
        (
            SuggestDifficulty,
            {"difficulty": math.inf},
            "mining.suggest_difficulty: params.difficulty must be a finite number > 0",
        ),
        (
            SuggestDifficulty,
            {"difficulty": True},
            "mining.suggest_difficulty: params.difficulty must be a finite number > 0",
        ),
        (
            Authorize,
            {"login": "a" * 129},
            "mining.authorize: params.login must be a string of 1 to 128 printable",
        ),
        (Authorize, {"login": "addr\n.w"}, "mining.authorize: params.login must be a string"),
        (Authorize, {"login": ".worker"}, "mining.authorize: params.login must be ADDRESS.WORKER"),
        (Subscribe, {"protocol": 0}, "mining.subscribe: params.protocol must be an integer in [1,"),
        (Subscribe, {"resume": b""}, "mining.subscribe: params.resume must be 1 to 32 bytes (bin)"),
        (Reconnect, {"port": 0}, "client.reconnect: params.port must be an integer in [1, 65535]"),
        (Reconnect, {"wait": -1}, "client.reconnect: params.wait must be a finite number ≥ 0"),
        (Notify, {"clean": 1}, "mining.notify: params.clean must be a boolean"),
        (
            Notify,
            {"prev_hash": bytes(31)},
            "mining.notify: params.prev_hash must be 32 bytes (bin), got 31 bytes",
        ),
        (
            Notify,
            {"difficulty": 0.0},
            "mining.notify: params.difficulty must be a finite number > 0",
        ),
    ],
)
def test_specific_errors(cls: type[Message], params: dict, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        cls.from_params({**VALID[cls], **params})
    assert str(info.value).startswith(message), str(info.value)


def _notify_with_work(**changes: Any) -> dict:
    params = dict(VALID[Notify])
    params["work"] = {**params["work"], **changes}
    return params


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 100}, "mining.notify: params.work.k must be a multiple of r and at least 4r"),
        ({"k": 128}, "mining.notify: params.work.k must be a multiple of r and at least 4r"),
        ({"k": 65536 + 64}, "mining.notify: params.work.k must be at most 65536"),
        ({"r": 48, "k": 480}, "mining.notify: params.work.r must be one of"),
        ({"m": 40}, "mining.notify: params.work.m and work.n must be multiples of 16"),
        ({"m": 0}, "mining.notify: params.work.m must be a positive integer"),
        ({"n": -16}, "mining.notify: params.work.n must be an integer in [0, 2**32)"),
        ({"a_root": b"x"}, "mining.notify: params.work.a_root must be 32 bytes (bin)"),
        ({"source": {"kind": "torrent"}}, "mining.notify: params.work.source.kind must be one of"),
        ({"source": {"seed": bytes(32)}}, "mining.notify: params.work.source.kind must be one of"),
        ({"source": "synthetic"}, "mining.notify: params.work.source must be a map"),
        (
            {"source": {"kind": "blob", "a": bytes(32)}},
            "mining.notify: params.work.source.b is missing",
        ),
        (
            {"source": {"kind": "synthetic", "seed": bytes(16)}},
            "mining.notify: params.work.source.seed must be 32 bytes",
        ),
    ],
)
def test_workspec_errors_name_the_nested_field(changes: dict, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Notify.from_params(_notify_with_work(**changes))
    assert str(info.value).startswith(message), str(info.value)


def test_params_must_be_a_map() -> None:
    with pytest.raises(ProtocolError, match=r"^mining.submit: params must be a map"):
        Submit.from_params([1, 2])
    with pytest.raises(ProtocolError, match=r"^mining.notify: params.work must be a map"):
        Notify.from_params({**VALID[Notify], "work": [1]})


def test_messages_validate_when_built_in_python_too() -> None:
    with pytest.raises(ProtocolError, match="extranonce2 must be 8 bytes"):
        Submit("j", bytes(4), 1, (0, 0))
    with pytest.raises(ProtocolError, match=r"^work.k must be a multiple of r"):
        WorkSpec(16, 16, 100, 32, bytes(32), bytes(32), SyntheticSource(bytes(32)))
    with pytest.raises(ProtocolError, match=r"^work\.source must be one of"):
        WorkSpec(16, 16, 128, 32, bytes(32), bytes(32), bytes(32))  # type: ignore[arg-type]
    assert SuggestDifficulty(3).difficulty == 3.0 and isinstance(
        SuggestDifficulty(3).difficulty, float
    )


@pytest.mark.parametrize(
    ("method", "result", "message"),
    [
        (
            "mining.subscribe",
            {"session_id": b"s", "extranonce1": b"e"},
            "mining.subscribe: result.extranonce2_size is missing",
        ),
        (
            "mining.subscribe",
            {"session_id": b"s", "extranonce1": b"e", "extranonce2_size": 4},
            "mining.subscribe: result.extranonce2_size must be an integer in [8, 8]",
        ),
        ("mining.subscribe", True, "mining.subscribe: result must be a map"),
        ("mining.authorize", 1, "mining.authorize: result must be a boolean"),
        (
            "mining.submit",
            {"difficulty": "1"},
            "mining.submit: result.difficulty must be a finite number > 0",
        ),
        (
            "mining.submit",
            {"difficulty": 1.0, "block": b"short"},
            "mining.submit: result.block must be 32 bytes",
        ),
        ("mining.ping", None, "mining.ping: result must be true"),
        ("mining.suggest_difficulty", False, "mining.suggest_difficulty: result must be true"),
        ("mining.notify", True, "unknown method"),
        ("nope", True, "unknown method"),
    ],
)
def test_bad_results(method: str, result: Any, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_result(method, result)
    assert message in str(info.value), str(info.value)


def test_unknown_method_is_code_other() -> None:
    with pytest.raises(ProtocolError, match="unknown method") as info:
        receive("mining.set_difficulty", {})
    assert info.value.code == ErrorCode.OTHER


# --- envelope ------------------------------------------------------------------------


def test_envelope_kinds() -> None:
    assert decode_envelope({"id": 1, "method": "m", "params": {"a": 1}}) == Request(
        1, "m", {"a": 1}
    )
    assert decode_envelope({"id": 0, "method": "m"}) == Request(0, "m", {})
    assert decode_envelope({"method": "m", "params": None}) == Notification("m", {})
    assert decode_envelope({"id": 2**32 - 1, "result": None}) == Response(2**32 - 1, None)
    assert decode_envelope({"id": 3, "result": {"x": 1}, "error": None}) == Response(3, {"x": 1})
    err = decode_envelope({"id": 4, "error": {"code": 21, "message": "stale"}, "extra": 1})
    assert err == Response(4, None, ErrorInfo(21, "stale"))
    for env in (Request(1, "m", {"a": b"x"}), Notification("m", {}), Response(2, True), err):
        assert decode_envelope(env.to_wire()) == env
    assert Response(9, error=ErrorInfo(ErrorCode.STALE, "x")).to_wire() == {
        "id": 9,
        "error": {"code": 21, "message": "x"},
    }


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([], "envelope must be a map"),
        ({}, "neither a request"),
        ({"params": {}}, "neither a request"),
        ({"id": -1, "method": "m"}, "envelope: id must be an integer in"),
        ({"id": 2**32, "method": "m"}, "envelope: id must be"),
        ({"id": True, "method": "m"}, "envelope: id must be"),
        ({"id": "1", "result": 1}, "envelope: id must be"),
        ({"id": 1, "method": 5}, "envelope: method must be a string"),
        ({"id": 1, "method": ""}, "envelope: method must be a string"),
        ({"id": 1, "method": "m", "params": [1]}, "m: params must be a map"),
        ({"id": 1}, "neither a result nor an error"),
        (
            {"id": 1, "result": 1, "error": {"code": 20, "message": "x"}},
            "both a result and an error",
        ),
        ({"id": 1, "error": "bad"}, "envelope: error must be a map"),
        ({"id": 1, "error": {"code": 20}}, "error must have code and message"),
        ({"id": 1, "error": {"code": "20", "message": "x"}}, "envelope: error.code must be"),
        ({"id": 1, "error": {"code": 20, "message": b"x"}}, "envelope: error.message must be"),
    ],
)
def test_bad_envelopes(obj: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_envelope(obj)
