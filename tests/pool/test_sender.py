"""A session's frame sender (issue 12): a submit answer is written at once from the callback
that made it when no send is under way; what the socket does not take now goes out with
the next send, first; a TLS stream (or any stream but a plain socket) always waits its turn.

Real socket pairs, read on the other end."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pool.inbox import Replies
from pool.sender import FrameSender


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def _read(stream: trio.SocketStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await stream.receive_some(1 << 16)
    return bytes(got)


async def test_a_frame_is_written_at_once_while_no_send_is_under_way() -> None:
    ours, theirs = await _pair()
    sender = FrameSender(ours)
    assert sender.direct
    assert sender.send_now(b"ack-1") == 5
    assert await sender.send(b"job")
    assert await _read(theirs, 8) == b"ack-1job"


async def test_nothing_is_written_at_once_while_a_send_waits_for_the_socket() -> None:
    ours, theirs = await _pair()
    sender = FrameSender(ours)
    big = bytes(8 << 20)  # more than the socket buffers hold: the send waits for a reader
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send, big)
        await trio.testing.wait_all_tasks_blocked()
        assert sender.send_now(b"ack") == 0  # (it would land inside the big frame)
        assert await _read(theirs, len(big)) == big


async def test_a_frame_written_in_part_is_finished_first_by_the_next_send() -> None:
    ours, theirs = await _pair()
    sender = FrameSender(ours)
    big = bytes(range(256)) * (32 << 10)  # 8 MiB: the socket takes only a part now
    sent = sender.send_now(big)
    assert 0 < sent < len(big)
    assert sender.send_now(b"ack") == 0  # the tail is still due: nothing jumps it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send, b"job")
        assert await _read(theirs, len(big) + 3) == big + b"job"


async def test_replies_write_at_once_only_to_a_parked_writer_and_never_a_follow_up() -> None:
    ours, theirs = await _pair()
    sender = FrameSender(ours)
    replies = Replies(sender.send_now)
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)
        await sender.send(data)

    async def follow_up() -> None:
        sent.append(b"<follow-up>")

    async def writer() -> None:
        with pytest.raises(trio.ClosedResourceError):  # how the writer ends: closed
            await replies.write(send)

    replies.post(b"a")  # no writer parked yet: queued
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a"]
        replies.post(b"b")  # the writer is parked: written at once, not through it
        replies.post(b"c", follow_up)  # a follow-up: through the writer, in order
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a", b"c", b"<follow-up>"]
        assert await _read(theirs, 3) == b"abc"
        replies.close()


async def test_a_stream_that_is_not_a_plain_socket_is_never_written_at_once() -> None:
    ours, _theirs = trio.testing.memory_stream_pair()
    sender = FrameSender(ours)
    assert not sender.direct
    assert sender.send_now(b"ack") == 0
