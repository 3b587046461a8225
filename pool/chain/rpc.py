"""``RpcChain``: the chain adapter that talks to ``matmine-node serve`` over loopback RPC.

One connection, one request at a time (a ``trio.Lock``); it is opened on first use and
reopened after any connection fault, with a few jittered retries before
:class:`ChainUnavailable` is raised. Errors the node answers with are raised as the
matching :class:`ChainError` subclass and are never retried.

Every method is safe to retry: template/tip/status/balance/payment are reads,
``send_many`` is idempotent by key, and a ``submit_block`` that is answered "duplicate"
only after a retry means the first try got through, so it is reported as accepted.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from protocol.chain import (
    ERR_OTHER,
    BlockStatus,
    BlockSubmission,
    BlockTemplate,
    ChainError,
    ChainUnavailable,
    SubmitResult,
    chain_error_from_code,
    rpc_request,
    tip_from_wire,
)
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.header import block_hash

log = logging.getLogger("matmine.chain.rpc")

DEFAULT_MAX_FRAME_SIZE = 8 << 20
RECEIVE_SIZE = 1 << 16


class _ConnectionLost(Exception):
    """Internal: the node closed the connection or sent something unreadable."""


class RpcChain:
    """A :class:`~pool.chain.base.ChainAdapter` backed by a node at ``host:port``.

    ``wallet_address`` is the pool's coinbase address; ``send_many`` spends from it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 18444,
        *,
        wallet_address: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 0.2,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.host = host
        self.port = port
        self.wallet_address = wallet_address
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_frame_size = max_frame_size
        self._stream: trio.SocketStream | None = None
        self._decoder = FrameDecoder(max_frame_size)
        self._lock = trio.Lock()
        self._next_id = 1

    async def __aenter__(self) -> RpcChain:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (a later call opens a new one)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # ChainAdapter -----------------------------------------------------------------------

    async def template(self) -> BlockTemplate:
        return BlockTemplate.from_wire(await self.call("node.template"))

    async def tip(self) -> tuple[int, bytes]:
        result = await self.call("node.tip")
        try:
            return tip_from_wire(result)
        except ProtocolError:
            raise ChainError(f"node.tip answered {result!r:.80}") from None

    async def submit_block(self, sub: BlockSubmission) -> SubmitResult:
        result, tries = await self._call_counting("node.submit_block", sub.to_wire())
        verdict = SubmitResult.from_wire(result)
        if tries > 1 and verdict.reason == "duplicate":
            # Our first try reached the node before the connection broke.
            return SubmitResult(True, block_hash(sub.header), "accepted")
        return verdict

    async def block_status(self, block_hash: bytes) -> BlockStatus:
        return BlockStatus.from_wire(await self.call("node.block_status", {"hash": block_hash}))

    async def send_many(self, key: str, outputs: dict[str, int]) -> str:
        if self.wallet_address is None:
            raise ChainError("RpcChain was built without a wallet_address to send from")
        result = await self.call(
            "node.send_many",
            {"key": key, "outputs": outputs, "from_address": self.wallet_address},
        )
        return str(result["txid"])

    async def payment(self, key: str) -> str | None:
        result = await self.call("node.payment", {"key": key})
        return result["txid"]

    async def balance(self, address: str) -> int:
        return int((await self.call("node.balance", {"address": address}))["balance"])

    # extras -----------------------------------------------------------------------------

    async def balances(self, address: str) -> tuple[int, int]:
        """(spendable, immature) of ``address``."""
        result = await self.call("node.balance", {"address": address})
        return int(result["balance"]), int(result["immature"])

    async def info(self) -> dict[str, Any]:
        return await self.call("node.info")

    async def new_address(self) -> str:
        return str((await self.call("node.new_address"))["address"])

    async def devnet_advance(self, count: int) -> list[bytes]:
        """DEVNET/TEST FACILITY: the node appends ``count`` blocks without proof of work."""
        return list((await self.call("devnet.advance", {"count": count}))["hashes"])

    # transport --------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One RPC; returns its ``result`` or raises a :class:`ChainError`."""
        result, _ = await self._call_counting(method, params)
        return result

    async def _call_counting(self, method: str, params: dict[str, Any] | None) -> tuple[Any, int]:
        async with self._lock:
            last: BaseException | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    await trio.sleep(self.retry_delay * 2 ** (attempt - 1) * random.uniform(1, 1.5))
                try:
                    with trio.fail_after(self.timeout):
                        return await self._roundtrip(method, params or {}), attempt + 1
                except (
                    OSError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    trio.TooSlowError,
                    _ConnectionLost,
                ) as exc:
                    last = exc
                    log.debug("node RPC %s failed (try %d): %r", method, attempt + 1, exc)
                    await self.aclose()
            raise ChainUnavailable(
                f"node at {self.host}:{self.port} did not answer {method} after "
                f"{self.retries + 1} tries: {last!r}"
            )

    async def _roundtrip(self, method: str, params: dict[str, Any]) -> Any:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._decoder = FrameDecoder(self.max_frame_size)
        stream = self._stream
        request_id = self._next_id
        self._next_id += 1
        await stream.send_all(encode_frame(rpc_request(request_id, method, params)))
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise _ConnectionLost("the node closed the connection")
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                raise _ConnectionLost(f"unreadable answer from the node: {exc}") from None
            for frame in frames:
                if frame.get("id") != request_id:
                    if frame.get("id") is None and "error" in frame:
                        raise _ConnectionLost(f"node refused the frame: {frame['error']}")
                    continue  # an answer to a request abandoned by a cancelled call
                if "error" in frame:
                    error = frame["error"]
                    if not isinstance(error, dict):
                        raise ChainError(f"malformed error from the node: {error!r:.80}")
                    raise chain_error_from_code(
                        int(error.get("code", ERR_OTHER)), str(error.get("message", ""))
                    )
                if "result" not in frame:
                    raise ChainError(f"node answered {method} with neither result nor error")
                return frame["result"]
