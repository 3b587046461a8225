"""The HTTP work API: customers submit products, poll them and fetch the result.

Routes (mounted by the pool's HTTP app; :func:`create_work_routes`):

- ``POST /api/work`` — a product ``A·B`` (A m×k, B k×n, int8, entries in [-64, 64]) as one of
  - ``multipart/form-data`` with file fields ``a`` and ``b``, each a ``.npy``;
  - ``application/x-npy``: the body is ``A.npy`` followed by ``B.npy``;
  - ``application/octet-stream`` with query ``m``, ``k``, ``n`` and ``dtype=int8``: the
    body is A's bytes then B's bytes, both row-major.

  → ``201 {"id", "state", "units", ...}`` with ``Location``; ``400`` malformed input,
  ``413`` too large, ``429`` too many unfinished items, ``401``/``403`` not allowed.
- ``GET /api/work/{id}`` — status and progress (``state``: queued, running, done, failed).
- ``GET /api/work/{id}/result`` — the product as ``.npy`` (int32, m×n) once ``done``;
  ``409`` before.

Customers authenticate with ``Authorization: Bearer TOKEN`` (tokens from the pool's
config). With no tokens configured the API answers loopback clients only. A customer
sees only their own items. Parsing and splitting run in worker threads (``limiter``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import trio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from pool.useful.blobstore import BlobStore
from pool.useful.queue import ItemStatus, WorkError, WorkInputError, WorkLimitError, WorkQueue

LOCAL_CUSTOMER = "local"
UPLOAD_SLACK = 64 * 1024
"""Bytes allowed beyond the operand limit for .npy headers and multipart framing."""


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


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkApi:
    """Request handlers over a queue and blob store; see the module text for the routes."""

    def __init__(self, queue: WorkQueue, blobs: BlobStore,
                 tokens: Mapping[str, str] | Iterable[str] | None,
                 limiter: trio.CapacityLimiter) -> None:
        self.queue = queue
        self.blobs = blobs
        self.customers = customers_from_tokens(tokens)
        self.limiter = limiter
        self.max_body = queue.config.max_upload_bytes + UPLOAD_SLACK

    def customer(self, request: Request) -> str:
        """The customer behind ``request``; raises ``_Denied`` (401/403)."""
        if not self.customers:
            host = request.client.host if request.client else None
            if not is_loopback(host):
                raise _Denied(403, "the work API answers loopback clients only "
                                   "(no API tokens are configured)")
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

    def _check_declared_size(self, request: Request) -> None:
        """Refuse an upload whose ``Content-Length`` is over the limit before reading it."""
        declared = request.headers.get("content-length")
        if declared is None:
            return
        size = _decimal(declared)
        if size is None:
            raise WorkInputError("Content-Length is not a number")
        if size > self.max_body:
            raise WorkLimitError(f"the upload is {size} bytes, over the limit of "
                                 f"{self.max_body}")

    async def _body(self, request: Request) -> bytes:
        self._check_declared_size(request)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                raise WorkLimitError(f"the upload is over the limit of {self.max_body} bytes")
        return bytes(body)

    async def _operands(self, request: Request) -> tuple[np.ndarray, np.ndarray]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await self._multipart(request)
        if ctype in ("application/x-npy", "application/npy"):
            body = await self._body(request)
            return await trio.to_thread.run_sync(_npy_pair, body, limiter=self.limiter)
        if ctype in ("application/octet-stream", ""):
            dims = _raw_dims(request.query_params)
            body = await self._body(request)
            return await trio.to_thread.run_sync(_raw_pair, body, *dims, limiter=self.limiter)
        raise WorkInputError(
            f"unsupported Content-Type {ctype!r:.60}: use multipart/form-data (fields a, b), "
            "application/x-npy (A.npy then B.npy) or application/octet-stream with "
            "?m=&k=&n=&dtype=int8"
        )

    async def _multipart(self, request: Request) -> tuple[np.ndarray, np.ndarray]:
        self._check_declared_size(request)
        parts: dict[str, bytes] = {}
        try:
            async with request.form(max_files=2, max_fields=4,
                                    max_part_size=self.max_body) as form:
                for name in ("a", "b"):
                    value = form.get(name)
                    if value is None:
                        raise WorkInputError(f"multipart field {name!r} (a .npy file) is missing")
                    if isinstance(value, UploadFile):
                        parts[name] = await value.read()
                    else:
                        parts[name] = value.encode()
        except WorkError:
            raise
        except Exception as exc:  # starlette's MultiPartException / HTTPException
            raise WorkInputError(f"malformed multipart body: {exc}") from None
        total = len(parts["a"]) + len(parts["b"])
        if total > self.max_body:
            raise WorkLimitError(f"the upload is {total} bytes, over the limit of "
                                 f"{self.max_body}")
        a = await trio.to_thread.run_sync(_npy_one, parts["a"], "A", limiter=self.limiter)
        b = await trio.to_thread.run_sync(_npy_one, parts["b"], "B", limiter=self.limiter)
        return a, b

    async def submit(self, request: Request) -> Response:
        try:
            customer = self.customer(request)
            a, b = await self._operands(request)
            status = await trio.to_thread.run_sync(
                self.queue.submit, customer, a, b, limiter=self.limiter
            )
        except _Denied as exc:
            return _error(exc.status, str(exc))
        except WorkError as exc:
            return _error(exc.http_status, str(exc))
        return JSONResponse(status.to_json(), status_code=201,
                            headers={"Location": f"/api/work/{status.id}"})

    async def _item_status(self, request: Request) -> ItemStatus | Response:
        """The status of the work item a request names, or the error response."""
        try:
            customer = self.customer(request)
            return await trio.to_thread.run_sync(
                self.queue.status, request.path_params["work_id"], customer,
                limiter=self.limiter,
            )
        except _Denied as exc:
            return _error(exc.status, str(exc))
        except WorkError as exc:
            return _error(exc.http_status, str(exc))

    async def status(self, request: Request) -> Response:
        status = await self._item_status(request)
        return status if isinstance(status, Response) else JSONResponse(status.to_json())

    async def result(self, request: Request) -> Response:
        status = await self._item_status(request)
        if isinstance(status, Response):
            return status
        if status.state != "done" or status.result_blob is None:
            done = status.unit_states.get("done", 0)
            why = f": {status.error}" if status.error else ""
            return _error(409, f"work item {status.id} is {status.state} "
                               f"({done}/{status.units} units done){why}", state=status.state)
        return FileResponse(self.blobs.path(status.result_blob),
                            media_type="application/octet-stream",
                            filename=f"{status.id}.npy")


def create_work_routes(queue: WorkQueue, blobstore: BlobStore,
                       tokens: Mapping[str, str] | Iterable[str] | None,
                       limiter: trio.CapacityLimiter) -> list[Route]:
    """The work API's routes, to mount in the pool's starlette app.

    ``tokens``: ``{token: customer name}`` or a list of tokens; empty or None means
    loopback clients only.
    """
    api = WorkApi(queue, blobstore, tokens, limiter)
    return [
        Route("/api/work", api.submit, methods=["POST"]),
        Route("/api/work/{work_id}", api.status, methods=["GET"]),
        Route("/api/work/{work_id}/result", api.result, methods=["GET"]),
    ]


# --- parsing (worker threads) --------------------------------------------------------


def _read_npy(f: io.BytesIO, name: str) -> np.ndarray:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise WorkInputError(f"{name} is not a valid .npy: {exc}") from None
    if dtype != np.int8:
        raise WorkInputError(f"{name} must be int8, got {dtype}")
    if len(shape) != 2:
        raise WorkInputError(f"{name} must be 2-D, got shape {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    data = f.read(count)
    if len(data) != count:
        raise WorkInputError(f"{name}.npy is cut short: {len(data)} of {count} data bytes")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=np.int8).reshape(shape, order=order)


def _npy_one(raw: bytes, name: str) -> np.ndarray:
    f = io.BytesIO(raw)
    array = _read_npy(f, name)
    if f.tell() != len(raw):
        raise WorkInputError(f"{name}: {len(raw) - f.tell()} bytes after the array")
    return array


def _npy_pair(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    f = io.BytesIO(raw)
    a = _read_npy(f, "A")
    if f.tell() == len(raw):
        raise WorkInputError("the body holds only A: send A.npy followed by B.npy")
    b = _read_npy(f, "B")
    if f.tell() != len(raw):
        raise WorkInputError(f"{len(raw) - f.tell()} bytes after B.npy")
    return a, b


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
            raise WorkInputError(f"query parameter {name} must be a positive integer, "
                                 f"got {value!r:.20}")
        dims.append(number)
    return dims[0], dims[1], dims[2]


def _raw_pair(raw: bytes, m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    want = m * k + k * n
    if len(raw) != want:
        raise WorkInputError(f"the body is {len(raw)} bytes; A ({m}x{k}) and B ({k}x{n}) "
                             f"int8 need {want}")
    data = np.frombuffer(raw, dtype=np.int8)
    return data[: m * k].reshape(m, k), data[m * k :].reshape(k, n)
