"""Wire framing: u32 big-endian length ‖ one msgpack map (SPEC §wire.framing).

``encode_frame`` turns a dict into one frame; ``FrameDecoder`` is a sans-IO
decoder that takes bytes in arbitrary pieces and returns whole frames. Any
framing fault raises ``ProtocolError`` (code 26) and leaves the decoder broken:
the connection must be closed.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .errors import ProtocolError

MAX_FRAME_SIZE = 1 << 20
MAX_DEPTH = 32
"""Deepest container nesting accepted in a frame (the top-level map is depth 1)."""

_LENGTH = struct.Struct(">I")


def encode_frame(obj: dict) -> bytes:
    """One frame: 4-byte big-endian body length, then ``obj`` as a msgpack map."""
    if not isinstance(obj, dict):
        raise TypeError(f"a frame holds a map, got {type(obj).__name__}")
    body = msgpack.packb(obj, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


def _check_depth(obj: Any, limit: int) -> None:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ProtocolError(f"frame nests containers deeper than {limit} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


class FrameDecoder:
    """Bytes in, decoded frames (dicts with str keys) out.

    The body length is checked as soon as its 4-byte prefix arrives, so an
    oversized frame is refused before any of its body is buffered.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        # Only a frame's unfinished part is kept, from the read that left it (whole frames
        # are decoded straight from the bytes received): an idle connection holds nothing.
        self._buffer: bytearray | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return 0 if self._buffer is None else len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[dict]:
        """Add ``data``; return every frame it completes, in order."""
        if self._error is not None:
            raise ProtocolError(f"decoder already failed: {self._error}")
        if self._buffer is not None:
            self._buffer += data
            data = self._buffer
        frames: list[dict] = []
        start = 0
        try:
            while len(data) - start >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(data, start)
                if length == 0:
                    raise ProtocolError("empty frame (length 0)")
                if length > self.max_frame_size:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}"
                    )
                end = start + _LENGTH.size + length
                if len(data) < end:
                    break
                frames.append(self._decode_body(bytes(data[start + _LENGTH.size : end])))
                start = end
        except ProtocolError as exc:
            self._error = exc
            self._buffer = None
            raise
        if start == len(data):
            self._buffer = None
        elif data is self._buffer:
            del self._buffer[:start]
        else:
            self._buffer = bytearray(data[start:])
        return frames

    def _decode_body(self, body: bytes) -> dict:
        size = len(body)
        try:
            obj = msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size,
                max_map_len=size,
                max_ext_len=0,
            )
        except msgpack.ExtraData:
            raise ProtocolError("trailing bytes after the msgpack value in a frame") from None
        except msgpack.StackError:
            raise ProtocolError("frame nests containers too deeply") from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"invalid msgpack in frame: {exc or type(exc).__name__}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"frame payload must be a map, got {type(obj).__name__}")
        for key in obj:
            if not isinstance(key, str):
                raise ProtocolError(f"frame map keys must be strings, got {key!r:.40}")
        _check_depth(obj, MAX_DEPTH)
        return obj
