"""The node's Prometheus ``/metrics`` (``matmine-node serve --metrics-port``).

``matmine_node_height`` (tip height), ``matmine_node_difficulty`` (the next block's),
``matmine_node_build_info{version}`` and ``process_*``, on a registry of the node's own,
without ``_created`` series (:mod:`toolkit.metrics`). Served by hypercorn + starlette on
trio; the chain is read in a worker thread at each scrape.
"""

from __future__ import annotations

from functools import partial
from typing import cast
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.version import package_version
from toolkit.metrics import add_program_metrics, exposition

from .chain import Chain


def metrics_app(chain: Chain, limiter: trio.CapacityLimiter) -> Starlette:
    """``GET /metrics`` over ``chain``."""
    registry = CollectorRegistry()
    add_program_metrics(registry, "node", package_version())
    height = Gauge("matmine_node_height", "Height of the chain's tip.", registry=registry)
    difficulty = Gauge(
        "matmine_node_difficulty", "Difficulty of the next block.", registry=registry
    )

    async def metrics(request: Request) -> Response:
        info = await trio.to_thread.run_sync(chain.info, limiter=limiter)
        height.set(info["height"])
        difficulty.set(info["next_difficulty"])
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


async def serve_metrics(
    chain: Chain,
    limiter: trio.CapacityLimiter,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``host:port`` (0: any free port) until cancelled;
    ``task_status.started(bound_port)``."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve,
                cast(ASGIFramework, metrics_app(chain, limiter)),
                config,
                shutdown_trigger=trio.sleep_forever,
            )
        )
        bound = urlsplit(binds[0]).port
        if bound is None:
            raise RuntimeError(f"hypercorn reported no port in {binds!r}")
        task_status.started(bound)
