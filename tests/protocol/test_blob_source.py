"""The blob source's optional data-plane fields (SPEC §12.7, bulk data plane)."""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.messages import BlobSource

A, B = b"a" * 32, b"b" * 32


def test_the_data_plane_fields_round_trip_and_are_optional():
    with_plane = BlobSource(A, B, "http://:8081/data", "7.00ff")
    assert BlobSource._from_map(with_plane._to_map(), "work.source") == with_plane
    plain = BlobSource(A, B)
    assert plain._to_map() == {"a": A, "b": B}  # what an old pool sends, and an old miner reads
    assert BlobSource._from_map({"a": A, "b": B}, "work.source") == plain


def test_an_old_miner_ignores_the_new_fields():
    wire = {"a": A, "b": B, "data": "http://pool/data", "token": "1.ab", "later": 1}
    assert BlobSource._from_map(wire, "work.source").token == "1.ab"


@pytest.mark.parametrize(
    ("data", "token", "error"),
    [
        ("http://pool/data", None, "go together"),
        (None, "1.ab", "go together"),
        ("ftp://pool/data", "1.ab", "http:// or https://"),
        ("http://" + "x" * 600, "1.ab", "work.source.data"),
    ],
)
def test_bad_data_plane_fields_are_refused_with_one_line(data, token, error):
    with pytest.raises(ProtocolError, match=error):
        BlobSource(A, B, data, token)
