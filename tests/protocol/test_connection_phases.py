"""The handshake phase table of the sans-IO connection, for both roles."""

from __future__ import annotations

from protocol.connection import REFUSALS, Connection, Phase, RequestReceived, ResponseReceived
from protocol.errors import ErrorCode
from protocol.messages import (
    Authorize,
    AuthorizeResult,
    Message,
    Ping,
    Submit,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
)
from protocol.work_messages import GetBlob

SUB = SubscribeResult(b"session1", b"\x00\x01\x02\x03", 8)
SHARE = Submit("j1", bytes(8), 1_700_000_030, (2, 3))
AUTH = Authorize("mmd1abc.rig0", "x")
ALWAYS = [Ping(), SuggestDifficulty(8.0), GetBlob(b"h" * 32, 0, 16)]


def refusal(server: Connection, message: Message) -> tuple[int, str] | None:
    refused = server.refusal(message)
    return None if refused is None else (refused.code, str(refused))


def test_server_refuses_by_phase_with_the_wire_errors() -> None:
    server = Connection("server")
    assert server.phase is Phase.NEW
    assert refusal(server, Subscribe("w/1")) is None
    assert refusal(server, AUTH) == (ErrorCode.NOT_SUBSCRIBED, "subscribe first")
    assert refusal(server, SHARE) == (ErrorCode.NOT_SUBSCRIBED, "subscribe first")
    assert all(refusal(server, m) is None for m in ALWAYS)

    server.send_result(1, SUB)
    assert server.phase is Phase.SUBSCRIBED
    assert refusal(server, Subscribe("w/1")) == (ErrorCode.OTHER, "already subscribed")
    assert refusal(server, AUTH) is None
    assert refusal(server, SHARE) == (ErrorCode.UNAUTHORIZED, "authorize first")

    server.send_result(2, AuthorizeResult(False))  # a refused login moves nothing
    assert server.phase is Phase.SUBSCRIBED
    server.send_result(3, AuthorizeResult(True))
    assert server.phase is Phase.AUTHORIZED
    assert refusal(server, SHARE) is None
    assert refusal(server, AUTH) is None  # a second login is answered, not refused
    assert refusal(server, Subscribe("w/1")) == (ErrorCode.OTHER, "already subscribed")
    assert all(refusal(server, m) is None for m in ALWAYS)

    server.send_result(4, SUB)  # a subscribe result never goes back
    assert server.phase is Phase.AUTHORIZED


def test_errors_and_other_results_move_no_phase() -> None:
    server = Connection("server")
    server.send_error(1, ErrorCode.OTHER, "no")
    server.send_result(2, True)
    server.send_result(3, AuthorizeResult(True))  # authorize before subscribe: no effect
    assert server.phase is Phase.NEW
    assert set(REFUSALS) == {"mining.subscribe", "mining.authorize", "mining.submit"}


def test_client_moves_on_the_responses_it_receives() -> None:
    client, server = Connection("client"), Connection("server")

    def ask(message: Message, answer: object = None, error: int | None = None) -> ResponseReceived:
        request_id, data = client.send_request(message)
        (event,) = server.receive_data(data)
        assert isinstance(event, RequestReceived)
        frame = (
            server.send_error(request_id, error, "refused")
            if error is not None
            else server.send_result(request_id, answer)
        )
        (response,) = client.receive_data(frame)
        assert isinstance(response, ResponseReceived)
        return response

    ask(Subscribe("w/1"), error=ErrorCode.OTHER)
    assert client.phase is Phase.NEW and server.phase is Phase.NEW
    ask(AUTH, error=ErrorCode.NOT_SUBSCRIBED)
    assert client.phase is Phase.NEW
    ask(Subscribe("w/1"), SUB)
    assert client.phase is server.phase is Phase.SUBSCRIBED
    ask(AUTH, error=ErrorCode.UNAUTHORIZED)
    assert client.phase is Phase.SUBSCRIBED
    ask(AUTH, AuthorizeResult(False))
    assert client.phase is server.phase is Phase.SUBSCRIBED
    ask(Ping(), True)
    assert client.phase is Phase.SUBSCRIBED
    ask(AUTH, AuthorizeResult(True))
    assert client.phase is server.phase is Phase.AUTHORIZED
    ask(SHARE, error=ErrorCode.STALE)
    assert client.phase is Phase.AUTHORIZED
