"""Wire framing: length-prefixed msgpack maps, fed in arbitrary pieces."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.framing import MAX_DEPTH, MAX_FRAME_SIZE, FrameDecoder, encode_frame
from tests.support.wire import pieces, values

frames = st.dictionaries(st.text(max_size=12), values, min_size=1, max_size=6)


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_frame_layout_is_big_endian_length_then_msgpack_map() -> None:
    frame = encode_frame({"id": 7, "method": "mining.ping", "params": {}, "x": b"\x00\xff"})
    body = frame[4:]
    assert frame[:4] == len(body).to_bytes(4, "big")
    assert body[0] == 0x84  # fixmap of 4
    assert b"\xc4\x02\x00\xff" in body  # bytes travel as msgpack bin 8, not str or hex
    assert FrameDecoder().feed(frame) == [
        {"id": 7, "method": "mining.ping", "params": {}, "x": b"\x00\xff"}
    ]


def test_encode_frame_refuses_non_maps() -> None:
    with pytest.raises(TypeError):
        encode_frame([1, 2])  # type: ignore[arg-type]


def test_partial_frames_wait_for_the_rest() -> None:
    frame = encode_frame({"a": 1})
    dec = FrameDecoder()
    assert dec.feed(frame[:3]) == []
    assert dec.feed(frame[3:-1]) == []
    assert dec.buffered == len(frame) - 1
    assert dec.feed(frame[-1:] + frame[:2]) == [{"a": 1}]
    assert dec.buffered == 2


@given(st.lists(frames, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=12))
@pytest.mark.slow
def test_any_split_of_a_stream_decodes_to_the_same_frames(
    objs: list[dict], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(o) for o in objs)
    dec = FrameDecoder()
    out: list[dict] = []
    for piece in pieces(stream, cuts):
        out += dec.feed(piece)
    assert out == objs
    assert dec.buffered == 0


def _feed_all(chunks: list[bytes], max_frame_size: int = MAX_FRAME_SIZE) -> None:
    dec = FrameDecoder(max_frame_size)
    try:
        for chunk in chunks:
            for obj in dec.feed(chunk):
                assert isinstance(obj, dict)
                assert all(isinstance(key, str) for key in obj)
    except ProtocolError as exc:
        assert exc.code == 26
        with pytest.raises(ProtocolError):
            dec.feed(b"")


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    _feed_all(pieces(data, cuts), max_frame_size=1 << 16)


@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=4), st.data())
def test_random_bodies_in_correct_frames_only_raise_protocol_error(
    bodies: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(raw_frame(b) for b in bodies)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    _feed_all(pieces(stream, cuts))


@given(frames, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_valid_frames_only_raise_protocol_error(obj: dict, pos: int, byte: int) -> None:
    frame = bytearray(encode_frame(obj))
    frame[4 + pos % (len(frame) - 4)] = byte
    _feed_all([bytes(frame[:5]), bytes(frame[5:])])


def test_oversized_frame_raises_as_soon_as_the_length_arrives() -> None:
    dec = FrameDecoder(max_frame_size=1000)
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError, match="exceeds the maximum of 1000") as info:
        dec.feed(b"\x03\xe9")  # 1001, body never sent
    assert info.value.code == 26
    assert dec.buffered == 0
    with pytest.raises(ProtocolError, match="already failed"):
        dec.feed(raw_frame(msgpack.packb({"a": 1})))


def test_default_maximum_is_one_mebibyte() -> None:
    assert MAX_FRAME_SIZE == 1 << 20
    body = msgpack.packb({"blob": bytes(MAX_FRAME_SIZE - 20)})  # a bin just under the limit
    assert len(body) <= MAX_FRAME_SIZE
    assert FrameDecoder().feed(raw_frame(body))[0]["blob"] == bytes(MAX_FRAME_SIZE - 20)
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME_SIZE + 1))


def test_frame_of_exactly_the_maximum_is_accepted() -> None:
    body = msgpack.packb({"s": "x" * 40})
    assert FrameDecoder(max_frame_size=len(body)).feed(raw_frame(body)) == [{"s": "x" * 40}]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty frame"),
        (b"\xc1", "invalid msgpack"),  # never-used type byte
        (b"\x81\xa1a", "invalid msgpack"),  # map truncated inside the frame
        (msgpack.packb({"a": 1}) + b"\x00", "trailing bytes"),
        (msgpack.packb([1, 2]), "must be a map"),
        (msgpack.packb("text"), "must be a map"),
        (msgpack.packb({1: 2}), "invalid msgpack"),  # strict_map_key
        (msgpack.packb({b"k": 2}, use_bin_type=True), "keys must be strings"),
        (b"\x81\xa1s\xa2\xff\xfe", "invalid msgpack"),  # str that is not UTF-8
        (b"\x81\xa1e\xd4\x01\x00", "invalid msgpack"),  # ext types are refused
        (b"\x81\xa1t\xd6\xff\x00\x00\x00\x00", "invalid msgpack"),  # so is the timestamp ext
        (msgpack.packb({"a": 1})[:-1], "invalid msgpack"),  # value missing at the end
    ],
)
def test_malformed_frames_raise_protocol_error(body: bytes, match: str) -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match=match) as info:
        dec.feed(raw_frame(body))
    assert info.value.code == 26
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame({"fine": True}))


def nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return {"x": value}


def test_nesting_up_to_the_limit_is_fine_and_deeper_is_refused() -> None:
    assert FrameDecoder().feed(encode_frame(nested(MAX_DEPTH))) == [nested(MAX_DEPTH)]
    with pytest.raises(ProtocolError, match="deeper than"):
        FrameDecoder().feed(encode_frame(nested(MAX_DEPTH + 1)))
    absurd = raw_frame(b"\x81\xa1x" + b"\x91" * 5000 + b"\x90")
    with pytest.raises(ProtocolError, match="deep"):
        FrameDecoder().feed(absurd)


def test_good_frames_before_garbage_in_separate_feeds_are_kept() -> None:
    dec = FrameDecoder()
    assert dec.feed(encode_frame({"n": 1}) + encode_frame({"n": 2})) == [{"n": 1}, {"n": 2}]
    with pytest.raises(ProtocolError):
        dec.feed(raw_frame(b"\xc1"))
