"""The HTTP work API: customers submit products, poll them and fetch the result.

Routes (mounted by the pool's HTTP app; :func:`create_work_routes`):

- ``POST /api/work`` — a product ``A·B`` (A m×k, B k×n, int8, entries in [-64, 64]) as one of
  - ``multipart/form-data`` with file fields ``a`` and ``b``, each a ``.npy``;
  - ``application/x-npy``: the body is ``A.npy`` followed by ``B.npy``;
  - ``application/octet-stream`` with query ``m``, ``k``, ``n`` and ``dtype=int8``: the
    body is A's bytes then B's bytes, both row-major.

  → ``201 {"id", "state", "units", ...}`` with ``Location``; ``400`` malformed input,
  ``413`` too large, ``429`` too many unfinished items, ``401``/``403`` not allowed.
- ``GET /api/work`` — what a customer may submit and whether anyone can compute it:
  ``{"limits": {...}, "capable_sessions": N}`` (N: connected miners that announced
  ``useful-1``; absent when the pool does not say).
- ``GET /api/work/{id}`` — status and progress (``state``: queued, running, done, failed),
  with ``capable_sessions`` as above.
- ``GET /api/work/{id}/result`` — the product as ``.npy`` (int32, m×n) once ``done``;
  ``409`` before.
- ``/api/work/operands`` — registered operands B, and ``POST /api/work?b_operand=ID`` with
  A alone (:mod:`pool.useful.operand_api`).

Customers authenticate with ``Authorization: Bearer TOKEN`` (tokens from the pool's
config). With no tokens configured the API answers loopback clients only. A customer
sees only their own items. Parsing and splitting run in worker threads (``limiter``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from pool.useful.blobstore import BlobStore
from pool.useful.operand_api import OperandApi
from pool.useful.queue import ItemStatus, WorkError, WorkInputError, WorkLimitError, WorkQueue
from pool.useful.upload import (
    BODY_DONE,
    FLUSH_BYTES,
    MultipartBody,
    NpyPairBody,
    RawPairBody,
    Spool,
    UploadBudget,
    WorkBusyError,
)
from protocol.workload import ENTRY_MAX, ENTRY_MIN

LOCAL_CUSTOMER = "local"
UPLOAD_SLACK = 64 * 1024
"""Bytes allowed beyond the operand limit for .npy headers and multipart framing."""
DRAIN_SECONDS = 60.0
Body = MultipartBody | NpyPairBody | RawPairBody


def customers_from_tokens(tokens: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """``{token: customer}``; a bare list of tokens names customers by a token digest."""
    if not tokens:
        return {}
    if isinstance(tokens, Mapping):
        return {str(t): str(c) for t, c in tokens.items()}
    return {t: "token-" + hashlib.sha256(t.encode()).hexdigest()[:12] for t in tokens}


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkApi:
    """Request handlers over a queue and blob store; see the module text for the routes."""

    def __init__(
        self,
        queue: WorkQueue,
        blobs: BlobStore,
        tokens: Mapping[str, str] | Iterable[str] | None,
        limiter: trio.CapacityLimiter,
        capable: Callable[[], int] | None = None,
    ) -> None:
        self.queue = queue
        self.capable = capable
        self.blobs = blobs
        self.customers = customers_from_tokens(tokens)
        self.limiter = limiter
        self.max_body = queue.config.max_upload_bytes + UPLOAD_SLACK
        self.budget = UploadBudget(queue.config.max_inflight_upload_bytes)
        self.operands = OperandApi(queue, self.budget, limiter, self.max_body)

    def customer(self, request: Request) -> str:
        """The customer behind ``request``; raises ``_Denied`` (401/403)."""
        if not self.customers:
            host = request.client.host if request.client else None
            if not is_loopback(host):
                raise _Denied(
                    403, "the work API answers loopback clients only (no API tokens are configured)"
                )
            return LOCAL_CUSTOMER
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Denied(401, "an API token is required: Authorization: Bearer TOKEN")
        token = token.strip()
        found = None
        for known, name in self.customers.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = name
        if found is None:
            raise _Denied(403, "unknown API token")
        return found

    def _declared_size(self, request: Request) -> int | None:
        """The body's ``Content-Length``; an upload over the limit is refused unread (413)."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        size = _decimal(declared)
        if size is None:
            raise WorkInputError("Content-Length is not a number")
        if size > self.max_body:
            raise WorkLimitError(f"the upload is {size} bytes, over the limit of {self.max_body}")
        return size

    def _body_parser(self, request: Request, declared: int | None) -> Body:
        """The streaming parser for the request's Content-Type (refusing bad query/type)."""
        content_type = request.headers.get("content-type", "")
        ctype = content_type.split(";")[0].strip().lower()
        config = self.queue.config
        if ctype == "multipart/form-data":
            return MultipartBody(content_type, config)
        if ctype in ("application/x-npy", "application/npy"):
            return NpyPairBody(config, declared)
        if ctype in ("application/octet-stream", ""):
            return RawPairBody(*_raw_dims(request.query_params), config, declared)
        raise WorkInputError(
            f"unsupported Content-Type {ctype!r:.60}: use multipart/form-data (fields a, b), "
            "application/x-npy (A.npy then B.npy) or application/octet-stream with "
            "?m=&k=&n=&dtype=int8"
        )

    async def _admit(self, customer: str, body: Body) -> None:
        shapes = body.shapes()
        assert shapes is not None
        (m, k), (_, n) = shapes
        await trio.to_thread.run_sync(self.queue.admit, customer, m, k, n, limiter=self.limiter)

    async def _receive(self, request: Request, customer: str) -> ItemStatus:
        """Stream the body to a spool, refusing it at the first bad byte, then queue it."""
        declared = self._declared_size(request)
        body = self._body_parser(request, declared)
        admitted = body.shapes() is not None
        if admitted:  # raw bytes: the query gave the shape
            await self._admit(customer, body)
        with (
            self.budget.reserve(self.max_body if declared is None else declared),
            Spool(self.blobs.upload_dir) as spool,
        ):
            received = 0
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self.max_body:
                        raise WorkLimitError(
                            f"the upload is over the limit of {self.max_body} bytes"
                        )
                    spool.add(body.feed(chunk))
                    if not admitted and body.shapes() is not None:
                        admitted = True
                        await self._admit(customer, body)
                    if spool.pending_bytes >= FLUSH_BYTES:
                        await spool.flush()
                request.scope[BODY_DONE] = True
            except ClientDisconnect:
                request.scope[BODY_DONE] = True
                raise WorkInputError("the client closed the connection mid-upload") from None
            a_op, b_op = body.finish()
            await spool.flush()
            a, b = spool.array(a_op), spool.array(b_op)
            try:
                return await trio.to_thread.run_sync(
                    self.queue.submit, customer, a, b, limiter=self.limiter
                )
            finally:
                del a, b  # unmap before the spool is closed

    async def _drain(self, request: Request) -> None:
        """Read and drop what is left of a refused body (at most ``max_body`` bytes, 60 s),
        so that the client, still sending, reads the answer; nothing of it is kept."""
        if request.scope.get(BODY_DONE):
            return
        left = self.max_body
        with trio.move_on_after(DRAIN_SECONDS):
            while left > 0:
                message = await request.receive()
                if message["type"] != "http.request":
                    return
                left -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

    async def submit(self, request: Request) -> Response:
        try:
            customer = self.customer(request)
            b_operand = request.query_params.get("b_operand")
            if b_operand is None:
                status = await self._receive(request, customer)
            else:
                declared = self._declared_size(request)
                status = await self.operands.submit_on(request, customer, b_operand, declared)
        except _Denied as exc:  # the body may be unread: close the connection after
            return _error(exc.status, str(exc), headers={"Connection": "close"})
        except WorkBusyError as exc:
            return _error(
                exc.http_status,
                str(exc),
                headers={"Retry-After": str(exc.retry_after), "Connection": "close"},
            )
        except WorkError as exc:
            await self._drain(request)
            return _error(exc.http_status, str(exc), headers={"Connection": "close"})
        return JSONResponse(
            status.to_json(), status_code=201, headers={"Location": f"/api/work/{status.id}"}
        )

    async def operand_add(self, request: Request) -> Response:
        try:
            customer = self.customer(request)
            declared = self._declared_size(request)
            info = await self.operands.register(request, customer, declared)
        except _Denied as exc:
            return _error(exc.status, str(exc), headers={"Connection": "close"})
        except WorkBusyError as exc:
            return _error(exc.http_status, str(exc), headers={"Retry-After": str(exc.retry_after)})
        except WorkError as exc:
            await self._drain(request)
            return _error(exc.http_status, str(exc), headers={"Connection": "close"})
        return JSONResponse(
            info.to_json(),
            status_code=201,
            headers={"Location": f"/api/work/operands/{info.id.hex()}"},
        )

    async def operand_list(self, request: Request) -> Response:
        try:
            found = await self.operands.listed(self.customer(request))
        except _Denied as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"operands": [info.to_json() for info in found]})

    async def operand_one(self, request: Request) -> Response:
        try:
            customer = self.customer(request)
            operand_id = request.path_params["operand_id"]
            if request.method == "DELETE":
                await self.operands.delete(customer, operand_id)
                return JSONResponse({"deleted": operand_id})
            info = await self.operands.one(customer, operand_id)
        except _Denied as exc:
            return _error(exc.status, str(exc))
        except WorkError as exc:
            return _error(exc.http_status, str(exc))
        return JSONResponse(info.to_json())

    async def _item_status(self, request: Request) -> ItemStatus | Response:
        """The status of the work item a request names, or the error response."""
        try:
            customer = self.customer(request)
            return await trio.to_thread.run_sync(
                self.queue.status,
                request.path_params["work_id"],
                customer,
                limiter=self.limiter,
            )
        except _Denied as exc:
            return _error(exc.status, str(exc))
        except WorkError as exc:
            return _error(exc.http_status, str(exc))

    def _capable(self) -> dict[str, int]:
        return {} if self.capable is None else {"capable_sessions": self.capable()}

    def limits(self) -> dict[str, Any]:
        """The published limits of one product (what ``POST /api/work`` refuses beyond)."""
        cfg = self.queue.config
        return {
            "dtype": "int8",
            "entry_min": ENTRY_MIN,
            "entry_max": ENTRY_MAX,
            "max_dim": cfg.max_dim,
            "max_k": cfg.max_k,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_active_items": cfg.max_active_items,
            "max_queued_bytes": cfg.max_queued_bytes,
            "max_operands": cfg.max_operands,
        }

    async def info(self, request: Request) -> Response:
        try:
            self.customer(request)
        except _Denied as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"limits": self.limits(), **self._capable()})

    async def status(self, request: Request) -> Response:
        status = await self._item_status(request)
        if isinstance(status, Response):
            return status
        return JSONResponse({**status.to_json(), **self._capable()})

    async def result(self, request: Request) -> Response:
        status = await self._item_status(request)
        if isinstance(status, Response):
            return status
        if status.state != "done" or status.result_blob is None:
            done = status.unit_states.get("done", 0)
            why = f": {status.error}" if status.error else ""
            return _error(
                409,
                f"work item {status.id} is {status.state} ({done}/{status.units} units done){why}",
                state=status.state,
            )
        return FileResponse(
            self.blobs.path(status.result_blob),
            media_type="application/octet-stream",
            filename=f"{status.id}.npy",
        )


def create_work_routes(
    queue: WorkQueue,
    blobstore: BlobStore,
    tokens: Mapping[str, str] | Iterable[str] | None,
    limiter: trio.CapacityLimiter,
    capable: Callable[[], int] | None = None,
) -> list[Route]:
    """The work API's routes, to mount in the pool's starlette app.

    ``tokens``: ``{token: customer name}`` or a list of tokens; empty or None means
    loopback clients only. ``capable()``: how many connected sessions can take useful
    work now (reported to customers; None: not reported).
    """
    api = WorkApi(queue, blobstore, tokens, limiter, capable)
    return [
        Route("/api/work", api.submit, methods=["POST"]),
        Route("/api/work", api.info, methods=["GET"]),
        Route("/api/work/operands", api.operand_add, methods=["POST"]),
        Route("/api/work/operands", api.operand_list, methods=["GET"]),
        Route("/api/work/operands/{operand_id}", api.operand_one, methods=["GET", "DELETE"]),
        Route("/api/work/{work_id}", api.status, methods=["GET"]),
        Route("/api/work/{work_id}/result", api.result, methods=["GET"]),
    ]


# --- parsing (worker threads) --------------------------------------------------------


def _decimal(text: str) -> int | None:
    """``text`` as a plain ASCII decimal number, or None (``str.isdigit`` alone also takes
    "²", and ``int`` refuses over 4300 digits: both would escape as a server error)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        return None
    return int(text)


def _raw_dims(query: Mapping[str, str]) -> tuple[int, int, int]:
    dtype = query.get("dtype", "int8")
    if dtype not in ("int8", "i1", "|i1"):
        raise WorkInputError(f"dtype must be int8, got {dtype!r:.20}")
    dims = []
    for name in ("m", "k", "n"):
        value = query.get(name)
        number = None if value is None else _decimal(value)
        if number is None or number < 1:
            raise WorkInputError(
                f"query parameter {name} must be a positive integer, got {value!r:.20}"
            )
        dims.append(number)
    return dims[0], dims[1], dims[2]
