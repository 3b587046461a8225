"""HTTP routes of model jobs: the customer's batches and the leases' data plane.

Customer (loopback only, like the model API):

- ``POST /api/work/infer?model=NAME`` — body: ``X.npy`` (int8, ``rows × k_0``) →
  ``201 {"id", "model", "rows", "units"}``; ``400`` one line for a bad model name or rows.
- ``GET /api/work/infer/{id}`` → ``{"id", "state": "running"|"done", "units", "done_units"}``.
- ``GET /api/work/infer/{id}/result`` → ``Y`` as ``.npy`` (``409`` while running).
- ``GET /api/work/infer/{id}/receipt`` → the batch's receipt (``pool.models.receipt``;
  fields in the README's inference API), while running too.

Data plane of model leases (SPEC §12.12.8; ``{data}`` = ``…/model-data``), bearer token:
``GET {data}/blobs/{hash}`` (one ``Range`` as §12.7's blobs),
``GET``/``PUT {data}/results/{unit}?offset=`` (``X-Result-Hash``), ``GET``/``PUT
{data}/audits/{unit}``.
"""

from __future__ import annotations

import numpy as np
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pool.models.desk import Credit, DeskError, ModelDesk
from pool.models.receipt import receipt_json
from pool.models.registry import ModelRegistry, RegistryError
from pool.models.units import ModelItem
from pool.useful.api import is_loopback
from pool.useful.data_api import CACHE_CONTROL, parse_range
from pool.useful.data_api import _Refused as RangeRefused
from pool.useful.npy import npy_array, npy_bytes
from protocol.errors import ProtocolError
from protocol.model_delivery import answers_size

DATA_PREFIX = "/model-data"
MAX_BATCH_BYTES = 256 << 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _hex32(text: str) -> bytes | None:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise DeskError(413, f"the body is at most {limit} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise DeskError(413, f"the body is at most {limit} bytes")
    return bytes(body)


def create_infer_routes(
    desk: ModelDesk, registry: ModelRegistry, limiter: trio.CapacityLimiter, credit: Credit
) -> list[Route]:
    """The customer's ``/api/work/infer`` routes and the model data plane over ``desk``."""

    def refused(request: Request) -> Response | None:
        host = request.client.host if request.client else None
        if not is_loopback(host):
            return _error(403, "the inference API answers loopback clients only")
        return None

    async def infer(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        name = request.query_params.get("model", "")
        try:
            body = await _body(request, MAX_BATCH_BYTES)
            model = await trio.to_thread.run_sync(registry.load, name, limiter=limiter)
            x = npy_array(body)
            if x.dtype != np.int8 or x.ndim != 2:
                raise ProtocolError(f"X must be a 2-d int8 array, got {x.dtype} {x.shape}")
            item = await desk.queue(name, model, np.ascontiguousarray(x))
            await desk.receipts.written()  # on disk before the 201
        except DeskError as exc:
            return _error(exc.status, str(exc))
        except (RegistryError, ProtocolError, ValueError, OSError) as exc:
            return _error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return JSONResponse(
            {"id": item.id, "model": name, "rows": int(x.shape[0]), "units": len(item.units)},
            status_code=201,
        )

    def item_of(request: Request) -> ModelItem | Response:
        """The batch the path names, or the answer that refuses the request."""
        if (denied := refused(request)) is not None:
            return denied
        text = request.path_params["item"]
        item = desk.items.get(int(text)) if text.isdigit() else None
        return item if item is not None else _error(404, f"no inference batch {text!r}")

    async def status(request: Request) -> Response:
        item = item_of(request)
        if isinstance(item, Response):
            return item
        units = item.units
        return JSONResponse(
            {
                "id": item.id,
                "state": "done" if item.done else "running",
                "units": len(units),
                "done_units": sum(unit.state == "done" for unit in units),
            }
        )

    async def result(request: Request) -> Response:
        item = item_of(request)
        if isinstance(item, Response):
            return item
        if not item.done:
            return _error(409, "the batch is still running")
        y = item.output()
        return Response(npy_bytes(y), media_type="application/octet-stream")

    async def receipt(request: Request) -> Response:
        item = item_of(request)
        if isinstance(item, Response):
            return item
        return JSONResponse(receipt_json(item, desk.receipts))

    def token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise DeskError(401, "the data plane needs Authorization: Bearer <lease token>")
        return auth[len("Bearer ") :]

    def unit_of(request: Request) -> bytes:
        unit = _hex32(request.path_params["unit"])
        if unit is None:
            raise DeskError(400, "the unit must be 64 hex digits")
        return unit

    async def blob(request: Request) -> Response:
        try:
            wanted = _hex32(request.path_params["hash"])
            if wanted is None:
                raise DeskError(400, "the blob must be 64 hex digits")
            data = desk.blob(token(request), wanted)
            span = parse_range(request.headers.get("range"), len(data))
        except DeskError as exc:
            return _error(exc.status, str(exc))
        except RangeRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)
        start, end = span if span is not None else (0, len(data))
        desk.served_bytes += end - start
        headers = {"ETag": f'"{wanted.hex()}"', "Accept-Ranges": "bytes"}
        headers["Cache-Control"] = CACHE_CONTROL
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return Response(
            data[start:end],
            status_code=200 if span is None else 206,
            headers=headers,
            media_type="application/octet-stream",
        )

    async def result_status(request: Request) -> Response:
        try:
            held = desk.received(token(request), unit_of(request))
        except DeskError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"received": held})

    async def put_result(request: Request) -> Response:
        try:
            lease_token, unit = token(request), unit_of(request)
            offset_text = request.query_params.get("offset", "0")
            digest = _hex32(request.headers.get("x-result-hash", ""))
            if not offset_text.isdigit() or digest is None:
                raise DeskError(400, "need ?offset=<bytes> and X-Result-Hash: <64 hex digits>")
            body = await _body(request, MAX_BATCH_BYTES)
            held = desk.deliver(lease_token, unit, int(offset_text), body, digest)
            lease = desk.lease_of_token(lease_token)
        except DeskError as exc:
            return _error(exc.status, str(exc))
        except ProtocolError as exc:
            return _error(422, str(exc))
        done = lease.record is not None
        return JSONResponse({"received": held, "total": held, "delivered": done})

    async def get_audit(request: Request) -> Response:
        try:
            return JSONResponse(desk.audit(token(request), unit_of(request)))
        except DeskError as exc:
            return _error(exc.status, str(exc))

    async def put_audit(request: Request) -> Response:
        try:
            lease_token, unit = token(request), unit_of(request)
            lease = desk.lease_of_token(lease_token)
            if lease.record is None:
                raise DeskError(409, "the unit's delivery is not complete")
            u = lease.unit
            limit = answers_size(u.model, u.rows, u.r, lease.challenges)
            body = await _body(request, limit)
            verified, reason = await desk.answer(lease_token, unit, body, credit)
        except DeskError as exc:
            return _error(exc.status, str(exc))
        answer: dict[str, object] = {"verified": verified}
        if not verified:
            answer["reason"] = reason
        return JSONResponse(answer)

    return [
        Route("/api/work/infer", infer, methods=["POST"]),
        Route("/api/work/infer/{item}", status, methods=["GET"]),
        Route("/api/work/infer/{item}/result", result, methods=["GET"]),
        Route("/api/work/infer/{item}/receipt", receipt, methods=["GET"]),
        Route(f"{DATA_PREFIX}/blobs/{{hash}}", blob, methods=["GET"]),
        Route(f"{DATA_PREFIX}/results/{{unit}}", result_status, methods=["GET"]),
        Route(f"{DATA_PREFIX}/results/{{unit}}", put_result, methods=["PUT"]),
        Route(f"{DATA_PREFIX}/audits/{{unit}}", get_audit, methods=["GET"]),
        Route(f"{DATA_PREFIX}/audits/{{unit}}", put_audit, methods=["PUT"]),
    ]
