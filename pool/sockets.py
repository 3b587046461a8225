"""What the socket under a miner's stream says: its peer's IP, the TCP socket itself."""

from __future__ import annotations

import trio


def tcp_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under a plain or TLS stream (None for any other stream)."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    return inner.socket if isinstance(inner, trio.SocketStream) else None


def peer_ip(stream: trio.abc.Stream) -> str:
    """The remote IP of a TCP (or TLS-over-TCP) stream."""
    sock = tcp_socket(stream)
    try:
        return "unknown" if sock is None else str(sock.getpeername()[0])
    except OSError:
        return "unknown"
