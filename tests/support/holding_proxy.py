"""A TCP proxy in front of the pool's HTTP port that holds the answers to chosen requests.

:class:`HoldingProxy` forwards bytes both ways. A connection whose first request line
starts with ``hold`` (e.g. ``b"PUT "``, ``b"GET /data/blobs/"``) gets its request through
to the pool at once, but the pool's answer is passed on only once :attr:`release` is set:
the request has been served (the pool acted on it), the client has not heard back yet. So a
test orders events without timing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class HoldingProxy:
    target_port: int
    hold: bytes = b"PUT "
    port: int = 0
    connections: int = 0
    held: int = 0  # connections whose answer is (or was) held
    request_lines: list[bytes] = field(default_factory=list)  # first line of each connection
    release: trio.Event = field(default_factory=trio.Event)

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
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        matched = trio.Event()  # set once the first request line is known: held or not
        held = [False]
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._up, client, upstream, matched, held, nursery.cancel_scope)
            nursery.start_soon(self._down, upstream, client, matched, held, nursery.cancel_scope)

    async def _up(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        matched: trio.Event,
        held: list[bool],
        scope: trio.CancelScope,
    ) -> None:
        head = b""
        try:
            async for data in src:
                if not matched.is_set():
                    head += data
                    if b"\r\n" in head:
                        line = head.split(b"\r\n", 1)[0]
                        self.request_lines.append(line)
                        held[0] = line.startswith(self.hold)
                        self.held += held[0]
                        matched.set()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _down(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        matched: trio.Event,
        held: list[bool],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for data in src:
                await matched.wait()
                if held[0]:
                    await self.release.wait()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
