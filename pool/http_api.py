"""The pool's read-only HTTP API: JSON stats, Prometheus metrics and a small dashboard.

A Starlette app (``create_app``) served by Hypercorn on trio (``serve_http``). Routes:

- ``GET /``                    the dashboard page (static HTML + a little JS)
- ``GET /static/...``          the vendored charting library (uPlot), no CDN
- ``GET /healthz``             200 ``{"status": "ok"}``, or 503 ``{"status": "degraded",
  "down": {dependency: reason}}`` while the ledger or the chain is down
- ``GET /metrics``             Prometheus exposition of the registry passed in (no
  ``_created`` series)
- ``GET /api/pool``            pool stats (``useful``: units, items, verified useful MACs
  and the useful fraction of the work accepted shares prove)
- ``GET /api/miners?limit=``   connected miners, highest hashrate first
- ``GET /api/miners/{address}`` one miner (404 JSON for a malformed or unknown address),
  with its ``work`` since start (and each worker's): accepted work, useful mined work,
  verified useful MACs and its useful fraction
- ``GET /api/blocks?limit=``   newest blocks (limit 1..500, default 50; else 400 JSON)
- ``GET /api/payments?limit=`` newest payment batches (same limit rules)
- ``GET /api/pool/history``     pool hashrate samples ``[[unix_time, MAC/s], ...]``, oldest first
- ``GET /api/miners/{address}/history`` one miner's samples (404 JSON if not tracked)
- the work API (``POST /api/work``, ``GET /api/work/{id}``, ``GET /api/work/{id}/result``)
  when the pool passes its routes (``pool.useful.api.create_work_routes``)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pool.api_data import PoolData, UnknownMiner
from pool.health import DependencyHealth
from pool.history import HashrateHistory
from toolkit.metrics import exposition

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DASHBOARD = Path(__file__).with_name("dashboard.html")
STATIC = Path(__file__).with_name("static")  # vendored uPlot (MIT, see uPlot.LICENSE)


class BadRequest(ValueError):
    """A query parameter the API cannot use."""


def parse_limit(request: Request) -> int:
    """The ``limit`` query parameter: an integer in 1..MAX_LIMIT, DEFAULT_LIMIT if absent."""
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def create_app(
    data: PoolData,
    registry: CollectorRegistry,
    extra_routes: Sequence[BaseRoute] = (),
    health: DependencyHealth | None = None,
    history: HashrateHistory | None = None,
) -> Starlette:
    """The API app over ``data`` exposing ``registry`` at /metrics, plus ``extra_routes``;
    /healthz reports ``health``; ``history`` (empty if None) backs the ``/history`` routes.
    """
    hist = HashrateHistory(capacity=1) if history is None else history
    dashboard = DASHBOARD.read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(dashboard)

    async def healthz(request: Request) -> Response:
        down = health.down_reasons() if health is not None else {}
        if down:
            return JSONResponse({"status": "degraded", "down": down}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    async def pool_stats(request: Request) -> Response:
        return JSONResponse(await data.pool())

    async def miners(request: Request) -> Response:
        return JSONResponse(data.live_miners()[: parse_limit(request)])

    async def miner(request: Request) -> Response:
        try:
            return JSONResponse(await data.miner(request.path_params["address"]))
        except UnknownMiner as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def pool_history(request: Request) -> Response:
        return JSONResponse({"window": "1m", "samples": hist.pool_series()})

    async def miner_history(request: Request) -> Response:
        series = hist.miner_series(request.path_params["address"])
        if series is None:
            return JSONResponse({"error": "no hashrate history for this address"}, status_code=404)
        return JSONResponse({"window": "1m", "samples": series})

    async def blocks(request: Request) -> Response:
        return JSONResponse(await data.blocks(parse_limit(request)))

    async def payments(request: Request) -> Response:
        return JSONResponse(await data.payments(parse_limit(request)))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/api/pool", pool_stats),
            Route("/api/pool/history", pool_history),
            Route("/api/miners", miners),
            Route("/api/miners/{address}", miner),
            Route("/api/miners/{address}/history", miner_history),
            Route("/api/blocks", blocks),
            Route("/api/payments", payments),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            *extra_routes,
        ],
        exception_handlers={BadRequest: bad_request, HTTPException: http_error},
    )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_http(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    ``port`` 0 picks a free port; the port actually bound is what ``nursery.start`` returns.
    """
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        # Hypercorn binds, then reports its binds ("http://127.0.0.1:54321"); it stops when
        # this nursery is cancelled (the shutdown trigger sleeps until then).
        binds = await nursery.start(
            partial(serve, cast(ASGIFramework, app), config, shutdown_trigger=trio.sleep_forever)
        )
        bound = urlsplit(binds[0]).port
        if bound is None:
            raise RuntimeError(f"hypercorn reported no port in {binds!r}")
        task_status.started(bound)
