"""A TCP proxy in front of the pool's HTTP port that breaks or spoils its first exchanges.

:class:`FaultyProxy` forwards bytes both ways. For the first ``faulty`` connections it
can cut the connection once ``cut_after`` body bytes went one way (``"down"``: pool →
client, ``"up"``: client → pool), or flip one byte ``flip_at`` bytes into that body;
connections after those pass untouched; with ``cut_limit`` no more than that many cuts in
all. Body bytes are counted from the end of the first ``\\r\\n\\r\\n`` (the HTTP head) of
that direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

HEAD_END = b"\r\n\r\n"


@dataclass
class FaultyProxy:
    target_port: int
    direction: str = "down"
    cut_after: int | None = None
    flip_at: int | None = None
    faulty: int = 1
    cut_limit: int | None = None
    port: int = 0
    connections: int = 0
    cuts: int = 0
    flips: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        faulty = self.connections <= self.faulty
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, upstream, trio.open_nursery() as nursery:
            up_fault = faulty and self.direction == "up"
            down_fault = faulty and self.direction == "down"
            nursery.start_soon(self._pipe, client, upstream, up_fault, nursery.cancel_scope)
            nursery.start_soon(self._pipe, upstream, client, down_fault, nursery.cancel_scope)

    async def _pipe(
        self, src: trio.SocketStream, dst: trio.SocketStream, fault: bool, scope: trio.CancelScope
    ) -> None:
        head = b""
        body = -1  # body bytes passed so far; -1 while the head is still coming
        try:
            async for data in src:
                if fault and body < 0:
                    head += data
                    at = head.find(HEAD_END)
                    if at < 0:
                        await dst.send_all(data)
                        continue
                    rest = head[at + len(HEAD_END) :]
                    await dst.send_all(data[: len(data) - len(rest)])
                    data, body = rest, 0
                if fault and body >= 0:
                    data = self._spoil(bytearray(data), body)
                    if (
                        self.cut_after is not None
                        and (self.cut_limit is None or self.cuts < self.cut_limit)
                        and body + len(data) >= self.cut_after
                    ):
                        await dst.send_all(bytes(data[: self.cut_after - body]))
                        self.cuts += 1
                        break
                    body += len(data)
                await dst.send_all(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _spoil(self, data: bytearray, body: int) -> bytearray:
        at = self.flip_at
        if at is not None and body <= at < body + len(data) and not self.flips:
            data[at - body] ^= 0x01
            self.flips += 1
        return data
