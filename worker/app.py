"""The worker program: failover + pool client, miner, checker, watchdog, metrics and console,
all in one nursery; SIGINT/SIGTERM cancel it for a clean shutdown. When no device is left to
mine with, it stops by itself and ``run_until_signal`` returns 1."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from functools import partial

import trio
from prometheus_client import CollectorRegistry
from rich.console import Console

from protocol.model_messages import MODEL_CAPABILITY
from protocol.version import package_version
from protocol.work_messages import USEFUL_CAPABILITY
from toolkit.metrics import add_program_metrics

from .backends.base import Backend
from .checker import Checker
from .client import Job, PoolClient
from .config import PoolEndpoint, WorkerConfig
from .console import StatusConsole
from .device_slot import DeviceSlot
from .failover import Failover, WorkerStopped
from .jobfeed import JobFeed
from .metrics import register_metrics, serve_metrics
from .miner import Miner
from .model_work import ModelWork
from .stats import WorkerStats
from .useful import UsefulWork
from .watchdog import Watchdog

log = logging.getLogger(__name__)


class WorkerApp:
    """One worker instance. ``backends`` are opened already; ``reopen(i)`` opens device i
    anew (for the watchdog), or is ``None`` if devices cannot be reopened."""

    def __init__(
        self,
        config: WorkerConfig,
        backends: Sequence[Backend],
        registry: CollectorRegistry,
        *,
        reopen: Callable[[int], Backend] | None = None,
        console: Console | None = None,
        status: bool = True,
    ) -> None:
        self.config = config.validate()
        self.stats = WorkerStats()
        self.feed = JobFeed()
        self.checker = Checker(self.stats, config.mining.check_threads)
        self.useful: UsefulWork | None = None
        if config.useful.enabled:
            self.useful = UsefulWork(
                self.stats,
                config.useful.cache_path(),
                config.useful.cache_max_bytes,
                wait_after_product=config.useful.wait_after_product,
            )
        self.models = ModelWork(config.model) if self.useful and config.model.enabled else None
        self.failover = Failover(
            list(config.pools),
            self._make_client,
            config.connection,
            agent=config.agent,
            on_connected=self._connected,
        )
        slots = [
            DeviceSlot(i, backend, None if reopen is None else partial(reopen, i))
            for i, backend in enumerate(backends)
        ]
        self.miner = Miner(
            slots,
            self.feed,
            self.failover.submit,
            self.checker,
            self.stats,
            roll_time=config.mining.roll_time,
            useful=self.useful,
            models=self.models,
        )
        stall = config.watchdog.stall_timeout
        self.watchdog = Watchdog(self.miner, self.stats, stall) if stall > 0 else None
        self.registry = registry
        register_metrics(registry, self.stats)
        add_program_metrics(registry, "worker", package_version())
        self.console = (
            StatusConsole(self.stats, config.console.status_interval, config.console.live, console)
            if status
            else None
        )
        self.metrics_urls: list[str] = []
        self.failure: str | None = None  # why the app stopped by itself (None: it did not)

    async def _mine(self, scope: trio.CancelScope) -> None:
        """The miner; when it returns (every device retired) the whole app stops."""
        await self.miner.run()
        reasons = "; ".join(f"{name}: {why}" for name, why in self.miner.retired().items())
        self.failure = f"no device left to mine with ({reasons})"
        scope.cancel()

    def _make_client(self, endpoint: PoolEndpoint, resume: bytes | None) -> PoolClient:
        c = self.config
        return PoolClient(
            endpoint,
            login=c.login,
            password=c.password,
            agent=c.agent,
            settings=c.connection,
            on_job=self._on_job,
            resume=resume,
            suggest_difficulty=c.mining.suggest_difficulty,
            capabilities=((USEFUL_CAPABILITY,) if self.useful else ())
            + ((MODEL_CAPABILITY,) if self.models else ()),
        )

    def _on_job(self, job: Job) -> None:
        self.feed.publish(job)

    def _connected(self, client: PoolClient | None) -> None:
        self.stats.pool_connected = client is not None
        if client is None:
            self.feed.withdraw()
        else:
            self.stats.pool = client.endpoint.label

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerApp] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled. ``task_status.started`` once the metrics port is bound."""
        async with trio.open_nursery() as nursery:
            metrics = self.config.metrics
            if metrics.port >= 0:
                try:
                    self.metrics_urls = await nursery.start(
                        serve_metrics, self.registry, self.stats, metrics.host, metrics.port
                    )
                except* OSError as group:
                    why = "; ".join(
                        getattr(e, "strerror", None) or str(e) for e in group.exceptions
                    )
                    raise WorkerStopped(
                        f"metrics port {metrics.port} on {metrics.host}: {why}"
                        " (another worker running? --metrics-port)"
                    ) from None
                log.info("metrics and /api/summary on %s", ", ".join(self.metrics_urls))
            nursery.start_soon(self.failover.run)
            if self.useful is not None:  # result delivery and prefetch, in the background
                nursery.start_soon(self.useful.run)
            nursery.start_soon(self._mine, nursery.cancel_scope)
            if self.watchdog is not None:
                nursery.start_soon(self.watchdog.run)
            if self.console is not None:
                nursery.start_soon(self.console.run)
            log.info(
                "mining with %s on %s",
                ", ".join(s.name for s in self.miner.slots),
                ", ".join(p.label for p in self.config.pools),
            )
            task_status.started(self)


async def run_until_signal(app: WorkerApp) -> int:
    """Run ``app`` until SIGINT or SIGTERM (exit status 0); until it stops by itself because
    no device is left (1); or until it cannot go on (2: every pool refused the login, the
    metrics port is taken). The reason is logged as one line."""
    stopped: WorkerStopped | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def run_app() -> None:
                    await app.run()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(run_app)
                async for signum in signals:
                    log.info("%s received; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        except* WorkerStopped as group:
            stopped = first_leaf(group)
    if stopped is not None:
        log.error("cannot go on: %s", stopped)
        return 2
    s = app.stats.shares
    log.info(
        "stopped: accepted %d rejected %d stale %d lost %d, hw errors %d",
        s["accepted"],
        s["rejected"],
        s["stale"],
        s["lost"],
        app.stats.hw_errors,
    )
    if app.failure is not None:
        log.error("%s", app.failure)
        return 1
    return 0


def first_leaf(group: BaseExceptionGroup[WorkerStopped]) -> WorkerStopped:
    """The first ``WorkerStopped`` of a group (nurseries nest groups in groups)."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, WorkerStopped)
    return leaf
