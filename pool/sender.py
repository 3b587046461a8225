"""How a session's frames reach its stream: one send at a time, each within a timeout, and
an answer written at once when the socket takes it without waiting.

:meth:`FrameSender.send` is every send of a session (its reader's answers, the job feed's
jobs, notices, the writer of the submit answers): after any other send, within
``SEND_TIMEOUT``. :meth:`FrameSender.send_now` is the submit pipeline's shortcut
(``pool.inbox.Replies``): while no send is under way, a frame goes straight to a plain TCP
socket's buffer from the callback that made it, with no writer task to wake; what the
socket does not take now is left to :meth:`send` (a TLS stream always takes that path).
"""

from __future__ import annotations

import os

import trio

SEND_TIMEOUT = 10.0


class FrameSender:
    """Sends the frames of one stream (see the module doc)."""

    __slots__ = ("_lock", "_unsent", "direct", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.direct = isinstance(stream, trio.SocketStream)  # whether send_now may write
        self._lock = trio.Lock()
        self._unsent = b""  # the tail of a frame send_now wrote in part: sent first

    async def send(self, data: bytes) -> bool:
        """Send ``data`` (after the tail ``send_now`` left, if any); False when the miner
        did not read it within ``SEND_TIMEOUT``."""
        try:
            self._lock.acquire_nowait()  # the usual case: no other send in progress
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await self.stream.send_all(data)
        finally:
            self._lock.release()
        return not scope.cancelled_caught

    def send_now(self, frame: bytes) -> int:
        """Write what the socket takes of ``frame`` now, without waiting, if no send is
        under way: the bytes written (0: nothing, also when the socket fails; a send meets
        the failure then). A frame written in part is finished by the next :meth:`send`,
        before its own data."""
        if not self.direct or self._unsent or self._lock.locked():
            return 0
        assert isinstance(self.stream, trio.SocketStream)
        fd = self.stream.socket.fileno()
        if fd < 0:
            return 0
        try:
            sent = os.write(fd, frame)
        except OSError:  # BlockingIOError among them
            return 0
        if sent < len(frame):
            self._unsent = frame[sent:]
        return sent
