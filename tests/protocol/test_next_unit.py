"""The prefetch hint of a blob job (SPEC §12.7, ``next``): its wire form and its rule."""

import pytest

from protocol.errors import ProtocolError
from protocol.messages import BlobSource, NextUnit


def test_next_unit_round_trips_and_is_optional() -> None:
    nxt = NextUnit(a=b"\x03" * 32, b=b"\x04" * 32, token="next-token")
    src = BlobSource(a=b"\x01" * 32, b=b"\x02" * 32, data="http://:1/data", token="t", next=nxt)
    wire = src._to_map()
    assert wire["next"] == {"a": b"\x03" * 32, "b": b"\x04" * 32, "token": "next-token"}
    assert BlobSource._from_map(wire, "work.source") == src
    plain = BlobSource(a=b"\x01" * 32, b=b"\x02" * 32, data="http://:1/data", token="t")
    assert "next" not in plain._to_map()


def test_next_unit_needs_the_data_plane() -> None:
    nxt = NextUnit(a=b"\x03" * 32, b=b"\x04" * 32, token="n")
    with pytest.raises(ProtocolError, match=r"next needs work\.source\.data"):
        BlobSource._from_map(
            {"a": b"\x01" * 32, "b": b"\x02" * 32, "next": nxt._to_map()}, "work.source"
        )
    with pytest.raises(ProtocolError, match=r"next\.token"):
        BlobSource._from_map(
            {
                "a": b"\x01" * 32,
                "b": b"\x02" * 32,
                "data": "http://x/d",
                "token": "t",
                "next": {"a": b"\x03" * 32, "b": b"\x04" * 32},
            },
            "work.source",
        )
