"""The miner ports: a TCP accept loop (and optionally TLS), one task per connection.

:func:`serve_stratum` opens the listeners and reports them through ``task_status`` (so
port 0 gives a free port, as the tests use), then serves every connection with a
:class:`~pool.session.Session` in its own task. Banned IPs are closed at once. Slots are
kept for miners that prove work (SPEC §12.9): when ``max_connections`` (or the IP's
``max_connections_per_ip``) are taken, the oldest connection (from that IP) without an
acknowledged share is closed to make room, preferring those not yet authorized; only when
every slot holds a miner with an acknowledged share is the new connection refused.
"""

from __future__ import annotations

import gc
import logging
import ssl

import trio

from pool.config import StratumConfig
from pool.context import PoolContext
from pool.session import Session
from pool.sockets import peer_ip
from protocol import messages
from protocol.connection import Connection

log = logging.getLogger("pool.server")

REFUSE_TIMEOUT = 1.0
COLLECTOR_THRESHOLDS = (50_000, 20, 10)
"""``gc.set_threshold`` for a pool: a session keeps ~100 objects the cyclic collector tracks,
so with thousands of miners a full collection stops every session for a noticeable time
(hundreds of ms at 10,000); the default (700, 10, 10) starts one every few seconds under
load, because shares still in flight at a young collection get promoted. Collecting the
youngest generation only every 50,000 allocations promotes few of them (each young
collection scans at most those 50,000 objects), so full collections become rare."""


def collect_less_often() -> None:
    """Set :data:`COLLECTOR_THRESHOLDS` for this process (the pool does at start)."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def refuse(stream: trio.abc.Stream, reason: str) -> None:
    """Tell a refused miner why (one ``client.show_message``), then close."""
    frame = Connection("server").send_notification(messages.ShowMessage(text=reason))
    with trio.move_on_after(REFUSE_TIMEOUT):
        try:
            if not isinstance(stream, trio.SSLStream):  # no TLS handshake for the refused
                await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


class StratumServer:
    """Accepts miner connections and runs a session for each (see the module doc)."""

    def __init__(self, config: StratumConfig, ctx: PoolContext) -> None:
        self.config = config
        self.ctx = ctx
        self.connections = 0
        self.evicting: set[Session] = set()  # closed to make room, not yet gone

    def make_room(self, ip: str) -> bool:
        """Whether a new connection from ``ip`` fits, evicting an unproven one if needed."""
        from_ip = sum(1 for s in self.evicting if s.peer == ip)
        ip_full = self.ctx.bans.connections(ip) - from_ip >= self.config.max_connections_per_ip
        if not ip_full and self.connections - len(self.evicting) < self.config.max_connections:
            return True
        unproven = [
            s
            for s in self.ctx.sessions
            if not s.accepted and s not in self.evicting and (s.peer == ip or not ip_full)
        ]
        if not unproven:
            return False
        victim = min(unproven, key=lambda s: (s.authorized, s.connected_at))
        self.evicting.add(victim)
        log.info(
            "closing %s (no share yet) to make room for a new connection from %s", victim.login, ip
        )
        if self.ctx.metrics is not None:
            self.ctx.metrics.evictions.inc()
        victim.kick(
            "closed to make room for another miner: the pool is full and this "
            "connection had not submitted a share yet"
        )
        return True

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection to its end."""
        ip = peer_ip(stream)
        now = trio.current_time()
        bans = self.ctx.bans
        if bans.is_banned(ip, now):
            log.info("refused connection from banned %s", ip)
            await refuse(stream, "banned for a while: too many invalid shares")
            return
        if not self.make_room(ip) or not bans.connect(ip):
            log.warning("refused connection from %s: connection limit reached", ip)
            await refuse(stream, "connection limit reached, try again later")
            return
        self.connections += 1
        metrics = self.ctx.metrics
        if metrics is not None:
            metrics.connections.inc()
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.move_on_after(self.config.handshake_timeout) as scope:
                    await stream.do_handshake()
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError("TLS handshake timed out")
            session = Session(stream, ip, self.ctx)
            try:
                await session.run()
            finally:
                self.evicting.discard(session)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            log.info("connection from %s failed: %s", ip, exc)
            await trio.aclose_forcefully(stream)
        except Exception:  # a bug in one session must not take the pool down
            log.exception("session from %s failed unexpectedly", ip)
            await trio.aclose_forcefully(stream)
        finally:
            self.connections -= 1
            bans.disconnect(ip)
            if metrics is not None:
                metrics.connections.dec()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the plain port (and the TLS port); ``started`` gets the bound ports."""
        cfg = self.config
        plain = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        listeners: list[trio.abc.Listener] = list(plain)
        ports = [plain[0].socket.getsockname()[1]]
        if cfg.tls:
            context = tls_context(cfg.tls_cert, cfg.tls_key)
            tcp = await trio.open_tcp_listeners(cfg.tls_port, host=cfg.host)
            ports.append(tcp[0].socket.getsockname()[1])
            listeners += [trio.SSLListener(t, context, https_compatible=False) for t in tcp]
        for port in ports:
            log.info("listening for miners on %s:%d", cfg.host, port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            task_status.started(ports)
