"""Prometheus metrics and the read-only JSON summary, on one port (hypercorn + starlette, trio).

``/metrics``: ``matmine_worker_hashrate_macs_per_second{device}`` (60 s MAC/s; ``device="total"``
too), ``matmine_worker_work_macs_total{device}`` (MACs computed: ``rate()`` it),
``matmine_worker_shares_total{result}``, ``matmine_worker_hw_errors_total{device}``,
``matmine_worker_pool_connected``, ``matmine_worker_blob_bytes_total``,
``matmine_worker_blobs_rejected_total``, ``matmine_worker_useful_results_total{outcome}``,
``matmine_worker_best_share_difficulty``, ``matmine_worker_scanned_macs_total{kind}``
(``useful``: a unit's headers before its product was taken and model layers' headers;
``synthetic``: the rest),
``matmine_worker_useful_bytes_total{direction}`` (operands ``in``, results ``out``); the
app adds ``matmine_worker_build_info`` and ``process_*`` (:mod:`toolkit.metrics`).
No ``_created`` series. Values are read from ``WorkerStats`` at scrape time.
``/api/summary``: ``WorkerStats.summary()`` as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolkit.metrics import exposition

from .stats import DIRECTIONS, SCAN_KINDS, SHARE_RESULTS, WorkerStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HASHRATE_WINDOW = 60.0


class WorkerCollector(Collector):
    """Reads ``WorkerStats`` on every scrape."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        rate = GaugeMetricFamily(
            "matmine_worker_hashrate_macs_per_second",
            "Multiply-accumulates per second over the last 60 s",
            labels=["device"],
        )
        for name in stats.devices:
            rate.add_metric([name], stats.hashrate(HASHRATE_WINDOW, name))
        rate.add_metric(["total"], stats.hashrate(HASHRATE_WINDOW))
        yield rate
        work = CounterMetricFamily(
            "matmine_worker_work_macs",
            "Multiply-accumulates computed, by device (rate() of it is the hashrate)",
            labels=["device"],
        )
        for name, dev in stats.devices.items():
            work.add_metric([name], dev.macs)
        yield work
        shares = CounterMetricFamily(
            "matmine_worker_shares", "Shares submitted, by outcome", labels=["result"]
        )
        for result in SHARE_RESULTS:
            shares.add_metric([result], stats.shares[result])
        yield shares
        hw = CounterMetricFamily(
            "matmine_worker_hw_errors",
            "Candidates that failed the CPU re-check (not submitted)",
            labels=["device"],
        )
        for name, dev in stats.devices.items():
            hw.add_metric([name], dev.hw_errors)
        yield hw
        yield GaugeMetricFamily(
            "matmine_worker_pool_connected",
            "1 while a pool session is up",
            value=int(stats.pool_connected),
        )
        yield CounterMetricFamily(
            "matmine_worker_blob_bytes",
            "Operand blob bytes downloaded with work.get_blob",
            value=stats.blob_bytes,
        )
        yield CounterMetricFamily(
            "matmine_worker_blobs_rejected",
            "Blob jobs dropped: an operand failed verification",
            value=stats.blobs_rejected,
        )
        results = CounterMetricFamily(
            "matmine_worker_useful_results",
            "Unit results by outcome (verified by the pool, "
            "rejected by its check, failed to deliver)",
            labels=["outcome"],
        )
        for outcome, count in stats.useful_results.items():
            results.add_metric([outcome], count)
        yield results
        scanned = CounterMetricFamily(
            "matmine_worker_scanned_macs",
            "Multiply-accumulates scanned, by kind (useful: a unit's headers before its "
            "product was taken, and model layers; synthetic: everything else)",
            labels=["kind"],
        )
        for kind in SCAN_KINDS:
            scanned.add_metric([kind], stats.scanned_macs[kind])
        yield scanned
        moved = CounterMetricFamily(
            "matmine_worker_useful_bytes",
            "Useful-work bytes moved, by direction (in: operand blobs, out: results)",
            labels=["direction"],
        )
        for direction in DIRECTIONS:
            moved.add_metric([direction], stats.useful_bytes[direction])
        yield moved
        yield GaugeMetricFamily(
            "matmine_worker_best_share_difficulty",
            "Highest difficulty of a checked share since start",
            value=stats.best.difficulty,
        )


def register_metrics(registry: CollectorRegistry, stats: WorkerStats) -> WorkerCollector:
    """Register the worker's collector in ``registry`` (one per worker instance)."""
    collector = WorkerCollector(stats)
    registry.register(collector)
    return collector


def metrics_app(registry: CollectorRegistry, stats: WorkerStats) -> Starlette:
    """The ASGI app: ``GET /metrics`` and ``GET /api/summary``."""

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE)

    async def summary(request: Request) -> JSONResponse:
        return JSONResponse(stats.summary())

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/summary", summary, methods=["GET"]),
        ]
    )


async def serve_metrics(
    registry: CollectorRegistry,
    stats: WorkerStats,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound URLs."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # Starlette is an ASGI app; its annotations and hypercorn's do not line up
    await serve(cast(ASGIFramework, metrics_app(registry, stats)), config, task_status=task_status)
