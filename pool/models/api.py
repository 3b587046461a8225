"""The HTTP model API (mounted by the pool's HTTP app as extra routes):

- ``POST /api/models?name=NAME`` — body: the model's ``.npz`` (at most the registry's
  ``max_bytes``; read in bounded pieces, refused with ``413`` as soon as it runs over)
  → ``201 {name, model_id, layers, ...}`` when registered, ``200`` when the name already
  names this model, ``409`` when it names another, ``400`` for a bad name or model (one
  line naming what is wrong).
- ``GET /api/models`` → ``{"models": [...]}``; ``GET /api/models/{name}`` → one, or ``404``.

Like the work API without tokens, it answers loopback clients only (``403`` otherwise).
Registry calls run in worker threads through ``limiter``.
"""

from __future__ import annotations

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pool.models.registry import ModelRegistry, NameTaken, RegistryError
from pool.useful.api import is_loopback


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_model_routes(registry: ModelRegistry, limiter: trio.CapacityLimiter) -> list[Route]:
    """The ``/api/models`` routes over ``registry``."""

    def refused(request: Request) -> Response | None:
        host = request.client.host if request.client else None
        if not is_loopback(host):
            return _error(403, "the model API answers loopback clients only")
        return None

    async def add(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        name = request.query_params.get("name", "")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > registry.max_bytes:
            return _error(413, f"a model file is at most {registry.max_bytes} bytes")
        body = bytearray()
        try:
            async for piece in request.stream():
                body += piece
                if len(body) > registry.max_bytes:
                    return _error(413, f"a model file is at most {registry.max_bytes} bytes")
        except ClientDisconnect:
            return _error(400, "the upload was cut off")
        try:
            info, created = await trio.to_thread.run_sync(
                registry.add, name, bytes(body), limiter=limiter
            )
        except NameTaken as exc:
            return _error(409, str(exc))
        except RegistryError as exc:
            return _error(400, str(exc))
        return JSONResponse(info.as_json(), status_code=201 if created else 200)

    async def listing(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        infos = await trio.to_thread.run_sync(registry.list, limiter=limiter)
        return JSONResponse({"models": [info.as_json() for info in infos]})

    async def one(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        name = request.path_params["name"]
        info = await trio.to_thread.run_sync(registry.get, name, limiter=limiter)
        if info is None:
            return _error(404, f"no model named {name!r}")
        return JSONResponse(info.as_json())

    return [
        Route("/api/models", add, methods=["POST"]),
        Route("/api/models", listing, methods=["GET"]),
        Route("/api/models/{name}", one, methods=["GET"]),
    ]
