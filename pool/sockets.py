"""The socket under a miner's stream: the TCP socket itself, its peer's IP, a lingering
close (our last words reach the miner instead of being lost to a reset), and the process's
open-file limit, raised at start so that every connection slot can hold a socket."""

from __future__ import annotations

import resource

import trio

FILES_BESIDES_MINERS = 256
"""Open files a pool needs besides its miners' sockets (listeners, ledger, node, HTTP)."""


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


LINGER_BYTES = 1 << 20
READ_SIZE = 65536  # one receive from a miner's stream (the session's reader too)


async def linger(stream: trio.abc.Stream, seconds: float) -> None:
    """Half-close, then drain what the miner still sends for ``seconds`` (at most
    ``LINGER_BYTES``), so that the last frame we sent is read rather than reset."""
    if not isinstance(stream, trio.SocketStream):
        return
    try:
        await stream.send_eof()
        drained = 0
        with trio.move_on_after(seconds):
            while drained < LINGER_BYTES:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def raise_open_files(connections: int) -> str | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; why it is still too low for
    ``connections`` miner sockets (one line for the log), or None when it is enough."""
    needed = connections + FILES_BESIDES_MINERS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft != hard:
        wanted = max(soft, needed) if hard == infinite else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == infinite or soft >= needed:
        return None
    return (
        f"the open-file limit is {soft} (hard limit {'unlimited' if hard == infinite else hard}),"
        f" below the {needed} that stratum.max_connections = {connections} needs: connections"
        " past it will fail; raise it (ulimit -n, systemd LimitNOFILE=)"
    )
