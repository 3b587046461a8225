"""The HTTP data plane of useful work (SPEC §12.7, bulk data plane): starlette routes.

- ``GET /data/blobs/{hash}`` — an operand of the bearer token's lease, streamed from the
  blob store in ``READ_CHUNK`` pieces (never read whole), with one ``Range``;
- ``GET /data/results/{unit}`` — how many bytes of the lease's result the pool holds;
- ``PUT /data/results/{unit}?offset=o`` — result bytes from ``o``, written as they arrive
  through the lease's :class:`~pool.useful.judge.ResultStream` (spooled, hashed, and
  judged row by row: Freivalds' vectors drawn when the upload starts, after
  ``X-Result-Hash`` committed C); the request that brings the last byte has the hash
  checked, then the lease delivered (its session gets new work) and its verdict, ready
  by then, applied exactly as a final ``work.result`` chunk's is.

Memory is bounded: each upload holds at most ``SPOOL_BATCH`` bytes before they are
written (and judged), and at most ``MAX_UPLOADS`` uploads stream at once (503 beyond);
no result is ever read back whole.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pool.useful.judge import ResultStream, sweep_spools
from pool.useful.queue import Lease, LeaseError
from pool.useful.service import Credit, UsefulWork
from protocol.errors import ProtocolError

READ_CHUNK = 1 << 20
SPOOL_BATCH = 1 << 20
MAX_UPLOADS = 8
MAX_KEPT_UPLOADS = 64  # partial uploads remembered (the oldest is dropped first)
RETRY_AFTER = "2"
STATUS_WAIT = 5.0  # seconds a result status waits for a PUT of it that still streams
CACHE_CONTROL = "public, max-age=31536000, immutable"
HEX32 = re.compile(r"[0-9a-f]{64}")
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _error(exc: _Refused) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of one ``Range: bytes=…``; None: the whole blob.

    Raises ``_Refused`` 416 for a range that cannot be served."""
    if header is None:
        return None
    match = RANGE.fullmatch(header.strip())
    unsatisfiable = _Refused(
        416, f"range {header[:40]!r} is not satisfiable", {"Content-Range": f"bytes */{total}"}
    )
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable
    first, last = match.groups()
    if first == "":  # a suffix: the last n bytes
        start, end = max(0, total - int(last)), total
    else:
        start = int(first)
        end = total if last == "" else min(total, int(last) + 1)
    if start >= total or end <= start:
        raise unsatisfiable
    return start, end


@dataclass
class _Upload:
    """One lease's result upload in progress: its ``X-Result-Hash`` and its stream."""

    digest: str
    stream: ResultStream
    busy: bool = False

    @property
    def total(self) -> int:
        return self.stream.total

    @property
    def received(self) -> int:
        return self.stream.received


class DataApi:
    """The data plane's handlers over the pool's :class:`UsefulWork`."""

    def __init__(self, useful: UsefulWork, credit: Credit) -> None:
        self.useful = useful
        self.credit = credit
        self.uploads: OrderedDict[int, _Upload] = OrderedDict()
        self._putting: dict[str, list[trio.Event]] = {}  # unit (path) -> its PUTs in progress
        self.streaming = 0
        sweep_spools(useful.blobs)  # a restart released every lease: their spools are void

    async def _lease(self, request: Request, blob: bool = False) -> Lease:
        """The open lease of the request's bearer token (for a ``blob`` GET, also a live
        reservation's stand-in: SPEC §12.7 prefetch); ``_Refused`` 401/403."""
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused(
                401,
                "this needs Authorization: Bearer <the job's token>",
                {"WWW-Authenticate": "Bearer"},
            )
        lease = await self.useful.token_lease(token.strip(), blob=blob)
        if lease is None:
            self._drop(self.useful.tokens.lease_id(token.strip()))
            raise _Refused(403, "the token is not one of an active lease of this pool")
        return lease

    @staticmethod
    def _hash(request: Request, name: str) -> bytes:
        text = request.path_params[name]
        if not HEX32.fullmatch(text):
            raise _Refused(400, f"{name} must be 64 lowercase hex digits")
        return bytes.fromhex(text)

    # -- blobs ----------------------------------------------------------------------------

    async def blob(self, request: Request) -> Response:
        try:
            bid = self._hash(request, "hash")
            lease = await self._lease(request, blob=True)
            if bid not in (lease.unit.a_blob, lease.unit.b_blob):
                raise _Refused(403, "this blob is not an operand of the token's lease")
            path = self.useful.blobs.path(bid)
            total = (await trio.Path(path).stat()).st_size
            span = parse_range(request.headers.get("range"), total)
            start, end = span if span is not None else (0, total)
            if request.method == "GET":
                try:
                    self.useful.charge_served(lease, end - start)
                except ProtocolError as exc:
                    raise _Refused(429, str(exc), {"Retry-After": "60"}) from None
        except _Refused as exc:
            return _error(exc)
        headers = {
            "ETag": f'"{bid.hex()}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": CACHE_CONTROL,
            "Content-Length": str(end - start),
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        status = 206 if span is not None else 200
        if request.method == "HEAD":  # the headers only; nothing is read
            return Response(status_code=status, headers=headers)
        return StreamingResponse(
            self._stream(path, start, end, lambda sent: self._served(lease, bid, sent, total)),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    def _served(self, lease: Lease, bid: bytes, sent: int, total: int) -> None:
        """Bytes of a blob that reached the lease's worker (affinity: who holds what)."""
        self.useful.note_served(lease, bid, sent, total)

    async def _stream(
        self, path: os.PathLike[str], start: int, end: int, done: Callable[[int], None]
    ) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async with await trio.open_file(path, "rb") as f:
                await f.seek(start)
                left = end - start
                while left > 0:
                    data = await f.read(min(READ_CHUNK, left))
                    if not data:
                        return
                    left -= len(data)
                    self.useful.metrics.data_bytes("out", "http", len(data))
                    yield data
                    sent += len(data)
        finally:
            done(sent)

    # -- results --------------------------------------------------------------------------

    async def _unit_lease(self, request: Request) -> Lease:
        unit = self._hash(request, "unit")
        lease = await self._lease(request)
        if unit != lease.unit.unit_id:
            raise _Refused(403, "this unit is not the token's lease's unit")
        return lease

    def _drop(self, lease_id: int | None) -> None:
        upload = self.uploads.pop(lease_id, None) if lease_id is not None else None
        if upload is not None and not upload.busy:
            upload.stream.close()

    async def result_status(self, request: Request) -> Response:
        try:
            lease = await self._unit_lease(request)
        except _Refused as exc:
            return _error(exc)
        # A PUT of this result still in the pool's hands (cut, but its end not handled yet)
        # may still spool bytes: answer once it is done, so a resume starts at the final
        # count and no byte comes twice.
        with trio.move_on_after(STATUS_WAIT):
            for done in list(self._putting.get(request.path_params["unit"], ())):
                await done.wait()
        upload = self.uploads.get(lease.id)
        received = 0 if upload is None else upload.received
        return JSONResponse({"received": received, "total": lease.unit.plan.result_bytes})

    def _open(self, lease: Lease, offset: int, digest: str) -> _Upload:
        """The lease's upload to continue at ``offset`` (or a new one at 0)."""
        upload = self.uploads.get(lease.id)
        if upload is not None and upload.busy:
            raise _Refused(409, "another upload of this result is streaming", {})
        if offset == 0 or (upload is not None and upload.digest != digest):
            self._drop(lease.id)
            upload = None
        received = 0 if upload is None else upload.received
        if offset != received:
            raise _Refused(409, f"the pool holds {received} bytes of this result: resume there")
        if upload is None:
            upload = _Upload(digest, self.useful.desk.open_stream(lease))
            self.uploads[lease.id] = upload
            while len(self.uploads) > MAX_KEPT_UPLOADS:
                self._drop(next(iter(self.uploads)))
        return upload

    async def put_result(self, request: Request) -> Response:
        unit, done = request.path_params["unit"], trio.Event()
        self._putting.setdefault(unit, []).append(done)
        try:
            return await self._put_result(request)
        finally:
            done.set()
            putting = self._putting[unit]
            putting.remove(done)
            if not putting:
                del self._putting[unit]

    async def _put_result(self, request: Request) -> Response:
        try:
            lease = await self._unit_lease(request)
            digest = request.headers.get("x-result-hash", "").lower()
            if not HEX32.fullmatch(digest):
                raise _Refused(400, "X-Result-Hash must be the BLAKE3 of the result (64 hex)")
            raw_offset = request.query_params.get("offset", "0")
            if not raw_offset.isdigit():
                raise _Refused(400, f"offset must be a byte count, got {raw_offset[:20]!r}")
            if self.streaming >= MAX_UPLOADS:
                raise _Refused(
                    503,
                    f"{MAX_UPLOADS} result uploads are streaming: retry later",
                    {"Retry-After": RETRY_AFTER},
                )
            if int(raw_offset) == 0:
                await self._upload_starts(lease)
            upload = self._open(lease, int(raw_offset), digest)
            self.streaming += 1
            upload.busy = True
            try:
                await self._receive(request, lease, upload)
            finally:
                upload.busy = False
                self.streaming -= 1
                if self.uploads.get(lease.id) is not upload:  # dropped while it streamed
                    upload.stream.close()
            if self.uploads.get(lease.id) is not upload:
                raise _Refused(409, "this upload was dropped meanwhile: start again at 0")
            if upload.received < upload.total:
                return JSONResponse({"received": upload.received, "total": upload.total})
            return await self._finish(lease, upload)
        except _Refused as exc:
            return _error(exc)

    async def _upload_starts(self, lease: Lease) -> None:
        """SPEC §12.7 overlap: a PUT at 0 ends the lease's mining (the session's next job
        goes out now); ``_Refused`` 409 while another result of the session uploads."""
        try:
            await self.useful.upload_started(lease)
        except LeaseError as exc:
            raise _Refused(409, str(exc)) from None

    async def _receive(self, request: Request, lease: Lease, upload: _Upload) -> None:
        """Spool the body; ``_Refused`` 413 (the upload dropped) past the result's end."""
        batch: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                if upload.received + size + len(chunk) > upload.total:
                    upload.busy = False
                    self._drop(lease.id)
                    raise _Refused(
                        413, f"the result is {upload.total} bytes; this body runs past it"
                    )
                batch.append(chunk)
                size += len(chunk)
                if size >= SPOOL_BATCH:
                    await self._spool(lease, upload, batch)
                    self.useful.metrics.data_bytes("in", "http", size)
                    batch, size = [], 0
        except ClientDisconnect:
            pass  # what came in is kept: the worker resumes at ``received``
        finally:
            if batch and lease.id in self.uploads:
                with trio.CancelScope(shield=True):
                    await self._spool(lease, upload, batch)
                self.useful.metrics.data_bytes("in", "http", size)

    async def _spool(self, lease: Lease, upload: _Upload, batch: list[bytes]) -> None:
        """Write a batch through the upload's stream; ``_Refused`` 503 (the upload dropped)
        if the spool cannot take it."""
        try:
            await trio.to_thread.run_sync(upload.stream.write, batch)
        except (OSError, ValueError) as exc:
            upload.busy = False
            self._drop(lease.id)
            raise _Refused(
                503,
                f"the pool could not spool the result ({exc}): upload again from 0",
                {"Retry-After": RETRY_AFTER},
            ) from None

    async def _finish(self, lease: Lease, upload: _Upload) -> Response:
        """The whole result is in, judged on the way: check its hash, deliver, apply the
        verdict."""
        self.uploads.pop(lease.id, None)
        stream = upload.stream
        try:
            if stream.digest().hex() != upload.digest:
                raise _Refused(
                    422, "the result's bytes do not match X-Result-Hash: upload again from 0"
                )
            try:
                delivery = await self.useful.deliver(lease, stream)
            except ProtocolError as exc:
                raise _Refused(403, str(exc)) from None
            self.useful.announce(delivery.lease)
            try:
                ack, verdict = await self.useful.judge(delivery, self.credit)
            except ProtocolError as exc:
                raise _Refused(403, str(exc)) from None
            self.useful.rejected(verdict)  # a wrong product counts against the miner
        finally:
            stream.close()
        answer: dict[str, object] = {
            "received": ack.received,
            "total": upload.total,
            "verified": bool(ack.verified),
        }
        if ack.reason is not None:
            answer["reason"] = ack.reason
        return JSONResponse(answer)


def data_url(bind_host: str, port: int, public_host: str | None = None) -> str:
    """The data plane's URL base for jobs: ``public_host`` if set, else the bound host, or
    an empty host (the worker's stratum host) for a wildcard bind."""
    host = public_host or ("" if bind_host in ("", "0.0.0.0", "::") else bind_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/data"


def create_data_routes(useful: UsefulWork, credit: Credit) -> list[Route]:
    """The data plane's routes (under ``/data``), to mount in the pool's starlette app;
    ``credit`` writes a verified unit's held shares to the ledger."""
    api = DataApi(useful, credit)
    return [
        Route("/data/blobs/{hash}", api.blob, methods=["GET", "HEAD"]),
        Route("/data/results/{unit}", api.result_status, methods=["GET"]),
        Route("/data/results/{unit}", api.put_result, methods=["PUT"]),
    ]
