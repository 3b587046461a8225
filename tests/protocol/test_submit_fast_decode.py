"""The fast decode of ``mining.submit`` (and of a server's request frames) against the
generic codec path: the same message for every share it takes, the same refusal text for
every one it does not (the generic path decides those)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.connection import Connection, RequestReceived
from protocol.errors import ProtocolError
from protocol.framing import encode_frame
from protocol.messages import Submit

GOOD: dict[str, Any] = {"job_id": "1a", "extranonce2": bytes(8), "time": 1700, "tile": [3, 4]}

VARIANTS: list[dict[str, Any]] = [
    GOOD,
    {**GOOD, "job_id": "j" * 64},
    {**GOOD, "job_id": "j" * 65},
    {**GOOD, "job_id": ""},
    {**GOOD, "job_id": "a\nb"},
    {**GOOD, "job_id": 5},
    {**GOOD, "extranonce2": bytes(7)},
    {**GOOD, "extranonce2": bytes(9)},
    {**GOOD, "extranonce2": "00" * 8},
    {**GOOD, "time": -1},
    {**GOOD, "time": 0},
    {**GOOD, "time": (1 << 64) - 1},
    {**GOOD, "time": 1 << 64},
    {**GOOD, "time": True},
    {**GOOD, "time": 1.5},
    {**GOOD, "tile": [0, (1 << 32) - 1]},
    {**GOOD, "tile": [1 << 32, 0]},
    {**GOOD, "tile": [-1, 0]},
    {**GOOD, "tile": [1, True]},
    {**GOOD, "tile": [1, 2, 3]},
    {**GOOD, "tile": [1]},
    {**GOOD, "tile": "ab"},
    {**GOOD, "tile": (1, 2)},
    {**GOOD, "extra": "ignored"},
    {**GOOD, "layer": None},
    {**GOOD, "layer": 1},
    {**GOOD, "layer": 1, "a_root": bytes(32)},
    {**GOOD, "a_proof": bytes(32)},
    {k: v for k, v in GOOD.items() if k != "time"},
    {k: v for k, v in GOOD.items() if k != "job_id"},
    {},
]


def _generic(params: Any) -> Any:
    try:
        return Submit._from_map(params, Submit._where)
    except ProtocolError as exc:
        return ("refused", exc.code, str(exc))


def _fast(params: Any) -> Any:
    try:
        return Submit.from_params(params)
    except ProtocolError as exc:
        return ("refused", exc.code, str(exc))


@pytest.mark.parametrize("params", VARIANTS, ids=range(len(VARIANTS)))
def test_fast_submit_decode_is_the_generic_decode(params: dict[str, Any]) -> None:
    fast, generic = _fast(params), _generic(params)
    assert fast == generic
    if isinstance(fast, Submit):
        assert type(fast.tile) is tuple and fast == Submit(**vars(fast))


def test_fast_decode_takes_the_plain_share(monkeypatch: pytest.MonkeyPatch) -> None:
    def generic(*args: Any) -> Any:
        raise AssertionError("a plain share took the generic path")

    monkeypatch.setattr(Submit, "_from_map", classmethod(generic))
    share = Submit.from_params(GOOD)
    assert (share.job_id, share.extranonce2, share.time, share.tile) == (
        "1a",
        bytes(8),
        1700,
        (3, 4),
    )
    assert share.layer is share.a_root is share.a_rows is share.a_proof is None
    assert not share.is_layer_share


@pytest.mark.parametrize(
    "frame",
    [
        {"id": 9, "method": "mining.submit", "params": GOOD},
        {"id": 9, "method": "mining.submit", "params": {**GOOD, "time": -1}},
        {"id": 9, "method": "mining.ping", "params": {}},
        {"id": 9, "method": "mining.ping"},
        {"id": 9, "method": "mining.nope", "params": {}},
        {"id": 9, "method": "x" * 65, "params": {}},
        {"id": True, "method": "mining.ping", "params": {}},
        {"id": (1 << 32) - 1, "method": "mining.ping", "params": {}},
        {"method": "mining.ping", "params": {}},
    ],
)
def test_request_fast_path_is_the_envelope_path(frame: dict[str, Any]) -> None:
    conn = Connection("server")
    try:
        fast: Any = [(type(e).__name__, getattr(e, "id", None), getattr(e, "message", None),
                      str(getattr(e, "error", "")))
                     for e in conn.receive_data(encode_frame(frame))]  # fmt: skip
    except ProtocolError as exc:
        fast = str(exc)
    try:
        slow: Any = Connection("server")._slow_event(frame)
        slow = [(type(slow).__name__, getattr(slow, "id", None), getattr(slow, "message", None),
                 str(getattr(slow, "error", "")))]  # fmt: skip
    except ProtocolError as exc:
        slow = str(exc)
    assert fast == slow


def test_a_request_decoded_fast_is_a_request_event() -> None:
    (event,) = Connection("server").receive_data(
        encode_frame({"id": 3, "method": "mining.submit", "params": GOOD})
    )
    assert isinstance(event, RequestReceived) and event.id == 3
    assert event.message == Submit(job_id="1a", extranonce2=bytes(8), time=1700, tile=(3, 4))
