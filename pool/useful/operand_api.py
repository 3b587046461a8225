"""The work API's registered operands (SPEC §12.7, work API): B uploaded once, used often.

- ``POST /api/work/operands`` — body ``B.npy`` (``application/x-npy``; int8 k×n in
  [-64, 64]) → ``201 {"id", "shape": {"k", "n"}, "created"}``; the id is BLAKE3 of B's
  row-major bytes (registering the same B again answers the same id);
- ``GET /api/work/operands`` — ``{"operands": [...]}``, the customer's own only;
- ``GET /api/work/operands/{id}``, ``DELETE /api/work/operands/{id}`` — one operand
  (another customer's is ``404``); products queued on it go on after a delete;
- ``POST /api/work?b_operand={id}`` — body ``A.npy`` alone: the product ``A·B`` on the
  registered B (A's k must be B's k), answered as any submission.

Bodies are read as ``pool.useful.api`` reads them: streamed to a spool, the ``.npy`` header
judged first (shape and limits), entries checked on the way, within the upload budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from starlette.requests import ClientDisconnect, Request

from pool.useful.npy import NpyReader, Operand
from pool.useful.queue import ItemStatus, OperandInfo, WorkInputError, WorkLimitError, WorkQueue
from pool.useful.queue_operands import parse_operand_id
from pool.useful.upload import BODY_DONE, FLUSH_BYTES, Spool, UploadBudget

HeaderCheck = Callable[[Operand], Awaitable[None]]


class OperandApi:
    """Registered operands over a queue; ``budget`` and ``limiter`` are the work API's."""

    def __init__(
        self,
        queue: WorkQueue,
        budget: UploadBudget,
        limiter: trio.CapacityLimiter,
        max_body: int,
    ) -> None:
        self.queue = queue
        self.budget = budget
        self.limiter = limiter
        self.max_body = max_body

    async def _thread(self, fn: Callable[..., object], *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _read_npy(
        self, request: Request, name: str, declared: int | None, on_header: HeaderCheck
    ) -> tuple[Spool, Operand]:
        """One ``.npy`` body into a spool (the caller closes it); ``on_header`` judges its
        shape before any data byte is taken."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/x-npy", "application/npy"):
            raise WorkInputError(
                f"unsupported Content-Type {ctype!r:.60}: send {name}.npy as application/x-npy"
            )
        reader = NpyReader(name, self.queue.config)
        spool = Spool(self.queue.blobs.upload_dir)
        try:
            with self.budget.reserve(self.max_body if declared is None else declared):
                received = 0
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self.max_body:
                        raise WorkLimitError(
                            f"the upload is over the limit of {self.max_body} bytes"
                        )
                    view = memoryview(chunk)
                    had_header = reader.operand is not None
                    used, data = reader.feed(view)
                    if not had_header and reader.operand is not None:
                        await on_header(reader.operand)
                    if used < len(view):
                        raise WorkInputError(f"{len(view) - used} or more bytes after {name}.npy")
                    if data:
                        spool.add([(name, data)])
                    if spool.pending_bytes >= FLUSH_BYTES:
                        await spool.flush()
                request.scope[BODY_DONE] = True  # a refusal from here on drains nothing
                operand = reader.finish()
                await spool.flush()
        except ClientDisconnect:
            request.scope[BODY_DONE] = True
            spool.close()
            raise WorkInputError("the client closed the connection mid-upload") from None
        except BaseException:
            spool.close()
            raise
        return spool, operand

    async def register(self, request: Request, customer: str, declared: int | None) -> OperandInfo:
        """Register the body's ``B.npy`` for ``customer``."""

        async def check(op: Operand) -> None:
            k, n = op.shape
            await self._thread(self.queue.check_operand_shape, customer, k, n)

        spool, operand = await self._read_npy(request, "B", declared, check)
        with spool:
            b = spool.array(operand)
            try:
                info = await self._thread(self.queue.register, customer, b)
            finally:
                del b
        assert isinstance(info, OperandInfo)
        return info

    async def submit_on(
        self, request: Request, customer: str, operand_text: str, declared: int | None
    ) -> ItemStatus:
        """Queue the body's ``A.npy`` times ``customer``'s registered operand."""
        operand_id = parse_operand_id(operand_text)
        info = await self._thread(self.queue.operand, customer, operand_id)
        assert isinstance(info, OperandInfo)

        async def check(op: Operand) -> None:
            m, k = op.shape
            if k != info.k:
                raise WorkInputError(
                    f"inner dimensions differ: A is {m}x{k}, operand B is {info.k}x{info.n}"
                )
            await self._thread(self.queue.admit, customer, m, k, info.n)

        spool, operand = await self._read_npy(request, "A", declared, check)
        with spool:
            a = spool.array(operand)
            try:
                status = await self._thread(self.queue.submit_on_operand, customer, a, operand_id)
            finally:
                del a
        assert isinstance(status, ItemStatus)
        return status

    async def listed(self, customer: str) -> list[OperandInfo]:
        found = await self._thread(self.queue.operands, customer)
        assert isinstance(found, list)
        return found

    async def one(self, customer: str, operand_text: str) -> OperandInfo:
        info = await self._thread(self.queue.operand, customer, parse_operand_id(operand_text))
        assert isinstance(info, OperandInfo)
        return info

    async def delete(self, customer: str, operand_text: str) -> None:
        await self._thread(self.queue.delete_operand, customer, parse_operand_id(operand_text))
