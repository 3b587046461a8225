"""The worker's side of the socket: open TCP or TLS to a pool, and say why it failed.

:func:`open_stream` connects within ``connect_timeout`` (TLS verified against the
configured CA file or the system's); every failure is a :class:`Dropped` with a short
reason (:func:`why` turns an ``OSError`` or ``SSLError`` into one).
"""

from __future__ import annotations

import ssl

import trio

from protocol.messages import Reconnect

from .config import ConnectionConfig, PoolEndpoint


class Dropped(Exception):
    """This connection is finished, for ``reason``."""

    def __init__(
        self, reason: str, reconnect: Reconnect | None = None, *, login_refused: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reconnect = reconnect
        self.login_refused = login_refused


async def open_stream(endpoint: PoolEndpoint, settings: ConnectionConfig) -> trio.abc.Stream:
    """TCP (or TLS over TCP) to ``endpoint`` within ``connect_timeout``; raises ``Dropped``."""
    try:
        with trio.fail_after(settings.connect_timeout):
            if endpoint.tls:
                context = tls_context(settings.tls_ca)
                tls = await trio.open_ssl_over_tcp_stream(
                    endpoint.host, endpoint.port, ssl_context=context
                )
                stream: trio.abc.Stream = tls
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    await trio.aclose_forcefully(stream)
                    trusted = (
                        f"CA file {settings.tls_ca}" if settings.tls_ca else "the system's CAs"
                    )
                    raise Dropped(
                        f"TLS handshake failed: {why(exc)} (trusting {trusted})"
                    ) from None
            else:
                stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    except trio.TooSlowError:
        raise Dropped(f"connect timed out after {settings.connect_timeout:g}s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise Dropped(f"cannot connect: {why(exc)}") from None
    return stream


def tls_context(cafile: str) -> ssl.SSLContext:
    """Verify the pool's certificate against ``cafile`` ("" = the system's CAs)."""
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:  # missing or unreadable CA file
        raise Dropped(f"cannot use TLS CA file {cafile!r}: {why(exc)}") from None


def why(exc: BaseException) -> str:
    """A short reason for a connection failure (the SSL reason for a TLS one)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if exc.__cause__ is not None:
        return why(exc.__cause__)
    return str(exc) or type(exc).__name__
