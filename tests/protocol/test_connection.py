"""The sans-IO connection: a client and a server talking through bytes only."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import Message
from protocol.connection import (
    BadRequest,
    Connection,
    NotificationReceived,
    RequestReceived,
    ResponseReceived,
)
from protocol.envelope import ErrorInfo
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import encode_frame
from protocol.messages import (
    Authorize,
    AuthorizeResult,
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
    SyntheticSource,
    WorkSpec,
)
from tests.support.messages_data import client_messages, server_messages
from tests.support.wire import pieces

WORK = WorkSpec(64, 64, 256, 64, b"a" * 32, b"b" * 32, SyntheticSource(b"s" * 32))
NOTIFY = Notify("j1", True, 1, 10, b"p" * 32, b"cb1", b"cb2", 1_700_000_000, 0x1F00FFFF, 2.0, WORK)


def one(events: list) -> object:
    assert len(events) == 1, events
    return events[0]


def exchange(client: Connection, server: Connection, message: Message, answer: object) -> object:
    """Client sends ``message``; the server sees it and answers; return the client's event."""
    request_id, data = client.send_request(message)
    assert client.pending[request_id] == message.method
    event = one(server.receive_data(data))
    assert event == RequestReceived(request_id, message)
    response = one(client.receive_data(server.send_result(request_id, answer)))
    assert request_id not in client.pending
    return response


def test_subscribe_authorize_notify_submit_round_trip() -> None:
    client, server = Connection("client"), Connection("server")

    sub = SubscribeResult(b"session1", b"\x00\x01\x02\x03", 8)
    got = exchange(client, server, Subscribe("matmine-worker/0.1"), sub)
    assert got == ResponseReceived(1, "mining.subscribe", sub, None)

    got = exchange(client, server, Authorize("mmd1abc.rig0", "x"), AuthorizeResult(True))
    assert got == ResponseReceived(2, "mining.authorize", AuthorizeResult(True), None)

    assert one(client.receive_data(server.send_notification(NOTIFY))) == NotificationReceived(
        NOTIFY
    )

    share = Submit("j1", b"\x00" * 7 + b"\x05", 1_700_000_030, (2, 3))
    got = exchange(client, server, share, SubmitResult(2.0))
    assert got == ResponseReceived(3, "mining.submit", SubmitResult(2.0), None)

    block = SubmitResult(2.0, b"\xaa" * 32)
    got = exchange(client, server, share, block)
    assert isinstance(got, ResponseReceived) and got.result.block == b"\xaa" * 32

    got = exchange(client, server, SuggestDifficulty(8.0), True)  # a plain result works too
    assert isinstance(got, ResponseReceived) and got.error is None
    got = exchange(client, server, Ping(), PingResult())
    assert got == ResponseReceived(6, "mining.ping", PingResult(), None)

    for note in (Reconnect("127.0.0.1", 3334, 1.5), ShowMessage("maintenance at noon")):
        assert one(client.receive_data(server.send_notification(note))) == NotificationReceived(
            note
        )
    assert client.pending == {}


def test_error_responses_reach_the_client_typed() -> None:
    client, server = Connection("client"), Connection("server")
    request_id, data = client.send_request(Submit("old", bytes(8), 1, (0, 0)))
    one(server.receive_data(data))
    event = one(client.receive_data(server.send_error(request_id, ErrorCode.STALE, "job old")))
    assert event == ResponseReceived(
        request_id, "mining.submit", None, ErrorInfo(ErrorCode.STALE, "job old")
    )
    assert event.error.code == 21


def test_bad_params_are_a_bad_request_and_the_connection_lives_on() -> None:
    client, server = Connection("client"), Connection("server")
    request_id, _ = client.send_request(Submit("j", bytes(8), 1, (0, 0)))
    raw = encode_frame(  # what a buggy client sends in its place
        {
            "id": request_id,
            "method": "mining.submit",
            "params": {"job_id": "j", "extranonce2": b"short", "time": 1, "tile": [0, 0]},
        }
    )
    event = one(server.receive_data(raw))
    assert isinstance(event, BadRequest) and event.id == request_id
    assert event.error.code == ErrorCode.MALFORMED
    assert "mining.submit: params.extranonce2 must be 8 bytes (bin)" in str(event.error)

    answer = one(
        client.receive_data(server.send_error(request_id, event.error.code, str(event.error)))
    )
    assert isinstance(answer, ResponseReceived) and answer.error.code == 26
    assert "extranonce2" in answer.error.message

    # the same connections keep working
    got = exchange(client, server, Ping(), PingResult())
    assert isinstance(got, ResponseReceived) and got.result == PingResult()


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        ({"id": 1, "method": "mining.set_difficulty", "params": {}}, 20, "unknown method"),
        ({"id": 2, "method": "mining.notify", "params": {}}, 20, "unknown method"),
        ({"id": 3, "method": 42}, 26, "envelope: method"),
        ({"id": 4, "method": "mining.ping", "params": "x"}, 26, "params must be a map"),
        ({"id": 5, "method": "mining.authorize", "params": {}}, 26, "params.login is missing"),
    ],
)
def test_server_bad_requests(frame: dict, code: int, text: str) -> None:
    server = Connection("server")
    event = one(server.receive_data(encode_frame(frame)))
    assert isinstance(event, BadRequest)
    assert event.id == frame["id"] and event.error.code == code and text in str(event.error)
    assert isinstance(
        one(server.receive_data(encode_frame({"id": 9, "method": "mining.ping"}))), RequestReceived
    )


def test_bad_notification_has_no_id_and_is_not_fatal() -> None:
    client = Connection("client")
    event = one(client.receive_data(encode_frame({"method": "mining.notify", "params": {}})))
    assert isinstance(event, BadRequest) and event.id is None
    assert "mining.notify: params.job_id is missing" in str(event.error)
    event = one(client.receive_data(encode_frame({"method": "mining.set_extranonce"})))
    assert isinstance(event, BadRequest) and event.error.code == ErrorCode.OTHER


def test_client_accepts_no_requests_but_may_answer_them() -> None:
    client = Connection("client")
    data = encode_frame({"id": 5, "method": "client.show_message", "params": {"text": "hi"}})
    event = one(client.receive_data(data))
    assert isinstance(event, BadRequest) and event.id == 5
    assert event.error.code == ErrorCode.OTHER
    client.send_error(5, event.error.code, str(event.error))


def test_server_accepts_client_methods_as_notifications() -> None:
    server = Connection("server")
    data = encode_frame({"method": "mining.suggest_difficulty", "params": {"difficulty": 4}})
    assert one(server.receive_data(data)) == NotificationReceived(SuggestDifficulty(4.0))


def test_response_to_an_unknown_id_is_fatal() -> None:
    client = Connection("client")
    with pytest.raises(ProtocolError, match="response to id 99, which has no request pending"):
        client.receive_data(encode_frame({"id": 99, "result": True}))
    with pytest.raises(ProtocolError, match="already failed"):
        client.receive_data(encode_frame({"method": "client.show_message", "params": {"text": ""}}))


def test_second_response_to_the_same_id_is_fatal() -> None:
    client, server = Connection("client"), Connection("server")
    exchange(client, server, Ping(), PingResult())
    with pytest.raises(ProtocolError, match="no request pending"):
        client.receive_data(server.send_result(1, True))


def test_a_server_takes_no_responses() -> None:
    with pytest.raises(ProtocolError, match="no request pending"):
        Connection("server").receive_data(encode_frame({"id": 1, "result": True}))


def test_malformed_result_is_fatal() -> None:
    client = Connection("client")
    request_id, _ = client.send_request(Submit("j", bytes(8), 1, (0, 0)))
    bad = encode_frame({"id": request_id, "result": {"difficulty": "lots"}})
    with pytest.raises(ProtocolError, match=r"mining\.submit: result\.difficulty"):
        client.receive_data(bad)


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 1) + b"\xc1",
        struct.pack(">I", 3) + msgpack.packb([1, 2]),
        encode_frame({"id": -5, "method": "mining.ping"}),
        encode_frame({"hello": "world"}),
        struct.pack(">I", (1 << 20) + 1),
    ],
)
def test_garbage_is_fatal(garbage: bytes) -> None:
    server = Connection("server")
    with pytest.raises(ProtocolError) as info:
        server.receive_data(garbage)
    assert info.value.code == 26
    with pytest.raises(ProtocolError):
        server.receive_data(encode_frame({"id": 1, "method": "mining.ping"}))


def test_max_frame_size_is_enforced() -> None:
    server = Connection("server", max_frame_size=64)
    with pytest.raises(ProtocolError, match="exceeds the maximum of 64"):
        server.receive_data(
            encode_frame({"id": 1, "method": "client.show_message", "params": {"text": "x" * 100}})[
                :4
            ]
        )


def test_ids_are_distinct_and_responses_may_come_out_of_order() -> None:
    client, server = Connection("client"), Connection("server")
    sent = [client.send_request(m) for m in (Ping(), SuggestDifficulty(1.0), Ping())]
    ids = [request_id for request_id, _ in sent]
    assert len(set(ids)) == 3
    events = server.receive_data(b"".join(data for _, data in sent))
    assert [e.id for e in events] == ids
    answers = server.send_result(ids[2], True) + server.send_result(ids[0], True)
    answers += server.send_result(ids[1], True)
    got = client.receive_data(answers)
    assert [(e.id, e.method) for e in got] == [
        (ids[2], "mining.ping"),
        (ids[0], "mining.ping"),
        (ids[1], "mining.suggest_difficulty"),
    ]


def test_id_allocation_wraps_and_skips_pending_ids() -> None:
    client = Connection("client")
    client._next_id = 2**32 - 1
    first, _ = client.send_request(Ping())
    second, _ = client.send_request(Ping())
    assert (first, second) == (2**32 - 1, 1)
    client._next_id = 2**32 - 1
    assert client.send_request(Ping())[0] == 2  # 2**32 - 1 and 1 still pending


def test_wrong_direction_and_wrong_kind_sends_are_refused() -> None:
    client, server = Connection("client"), Connection("server")
    with pytest.raises(ValueError, match="does not send"):
        client.send_notification(NOTIFY)
    with pytest.raises(ValueError, match="does not send"):
        server.send_request(Ping())
    with pytest.raises(ValueError, match="notification, not a request"):
        server.send_request(NOTIFY)
    with pytest.raises(ValueError):
        server.send_result(-1, True)
    with pytest.raises(ValueError):
        Connection("peer")  # type: ignore[arg-type]


@given(st.lists(client_messages, min_size=1, max_size=6), st.lists(st.integers(0, 5000)))
def test_client_stream_in_any_split_reaches_the_server_intact(
    messages: list[Message], cuts: list[int]
) -> None:
    client, server = Connection("client"), Connection("server")
    sent = [client.send_request(m) for m in messages]
    stream = b"".join(data for _, data in sent)
    events = []
    for piece in pieces(stream, cuts):
        events += server.receive_data(piece)
    assert events == [RequestReceived(i, m) for (i, _), m in zip(sent, messages, strict=True)]


@given(st.lists(server_messages, min_size=1, max_size=4))
def test_server_notifications_reach_the_client_intact(messages: list[Message]) -> None:
    client, server = Connection("client"), Connection("server")
    stream = b"".join(server.send_notification(m) for m in messages)
    events = [e for i in range(len(stream)) for e in client.receive_data(stream[i : i + 1])]
    assert events == [NotificationReceived(m) for m in messages]
