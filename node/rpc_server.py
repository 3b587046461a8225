"""The devnet node's RPC server: loopback TCP, framed like the wire (SPEC §12.1).

Request ``{"id", "method", "params"}`` → ``{"id", "result"}`` or
``{"id", "error": {"code", "message"}}``. Requests on one connection are answered in
order. Every method runs in a worker thread under a ``CapacityLimiter`` (SQLite and
ticket verification block). A request that is not understood gets an error and the
connection stays open; a broken frame gets an error with ``"id": None`` and the
connection is closed (the framing cannot resync). Nothing a client sends stops the
server.

Methods: node.template, node.tip, node.submit_block, node.block_status, node.send_many
{key, outputs, from_address}, node.payment {key}, node.balance {address},
node.new_address, node.info, and the devnet/test facility devnet.advance {count}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from protocol.address import new_address
from protocol.chain import (
    ERR_MALFORMED,
    ERR_OTHER,
    ERR_UNKNOWN_METHOD,
    BlockSubmission,
    ChainError,
    rpc_error,
    rpc_result,
    tip_to_wire,
)
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame

from .chain import Chain
from .config import NodeConfig
from .metrics import serve_metrics

log = logging.getLogger("node.rpc")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18444
DEFAULT_MAX_FRAME_SIZE = 8 << 20
RECEIVE_SIZE = 1 << 16

Handler = Callable[[Chain, dict[str, Any]], Any]


def _param(params: dict[str, Any], name: str, kind: type) -> Any:
    if name not in params:
        raise ProtocolError(f"missing parameter {name!r}")
    value = params[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(
            f"parameter {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _template(chain: Chain, params: dict[str, Any]) -> Any:
    return chain.template().to_wire()


def _tip(chain: Chain, params: dict[str, Any]) -> Any:
    return tip_to_wire(*chain.tip())


def _submit_block(chain: Chain, params: dict[str, Any]) -> Any:
    return chain.submit_block(BlockSubmission.from_wire(params)).to_wire()


def _block_status(chain: Chain, params: dict[str, Any]) -> Any:
    return chain.block_status(_param(params, "hash", bytes)).to_wire()


def _send_many(chain: Chain, params: dict[str, Any]) -> Any:
    txid = chain.send_many(
        _param(params, "key", str),
        _param(params, "outputs", dict),
        _param(params, "from_address", str),
    )
    return {"txid": txid}


def _payment(chain: Chain, params: dict[str, Any]) -> Any:
    return {"txid": chain.payment(_param(params, "key", str))}


def _balance(chain: Chain, params: dict[str, Any]) -> Any:
    address = _param(params, "address", str)
    spendable, immature = chain.balances(address)
    return {"address": address, "balance": spendable, "immature": immature}


def _new_address(chain: Chain, params: dict[str, Any]) -> Any:
    return {"address": new_address()}


def _info(chain: Chain, params: dict[str, Any]) -> Any:
    return chain.info()


def _devnet_advance(chain: Chain, params: dict[str, Any]) -> Any:
    hashes = chain.devnet_advance(_param(params, "count", int))
    height, _ = chain.tip()
    return {"hashes": hashes, "height": height}


METHODS: dict[str, Handler] = {
    "node.template": _template,
    "node.tip": _tip,
    "node.submit_block": _submit_block,
    "node.block_status": _block_status,
    "node.send_many": _send_many,
    "node.payment": _payment,
    "node.balance": _balance,
    "node.new_address": _new_address,
    "node.info": _info,
    "devnet.advance": _devnet_advance,
}


class NodeRpcServer:
    """Serves one :class:`Chain` to any number of loopback connections."""

    def __init__(
        self,
        chain: Chain,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.chain = chain
        self.max_frame_size = max_frame_size
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(2)

    async def serve(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``started`` gets the listeners."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await trio.serve_listeners(self.handle_connection, listeners, task_status=task_status)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Answer requests on ``stream`` until the peer leaves or sends a broken frame."""
        decoder = FrameDecoder(self.max_frame_size)
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                except ProtocolError as exc:
                    log.info("closing an RPC connection after a malformed frame: %s", exc)
                    await self._send(stream, rpc_error(None, exc.code, f"malformed frame: {exc}"))
                    return
                for frame in frames:
                    response = await self.answer(frame)
                    if response is not None and not await self._send(stream, response):
                        return

    async def answer(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """The response to one decoded frame (None for a notification)."""
        request_id = frame.get("id")
        notification = "id" not in frame
        if not notification and (
            not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0
        ):
            return rpc_error(
                None,
                ERR_MALFORMED,
                f"request id must be an unsigned integer, got {request_id!r:.40}",
            )
        method = frame.get("method")
        params = frame.get("params", {})
        if not isinstance(method, str):
            response = rpc_error(request_id, ERR_MALFORMED, "request has no method name")
        elif not isinstance(params, dict):
            response = rpc_error(request_id, ERR_MALFORMED, "params must be a map")
        elif method not in METHODS:
            response = rpc_error(
                request_id,
                ERR_UNKNOWN_METHOD,
                f"unknown method {method!r:.60}; known: {', '.join(METHODS)}",
            )
        else:
            response = await self._call(request_id, method, params)
        return None if notification else response

    async def _call(
        self, request_id: int | None, method: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        handler = METHODS[method]
        try:
            result = await trio.to_thread.run_sync(
                partial(handler, self.chain, params), limiter=self.limiter
            )
        except ChainError as exc:
            return rpc_error(request_id, exc.code, str(exc))
        except ProtocolError as exc:
            return rpc_error(request_id, exc.code, f"bad params for {method}: {exc}")
        except Exception as exc:
            log.exception("RPC %s failed", method)
            return rpc_error(request_id, ERR_OTHER, f"internal error in {method}: {exc}")
        return rpc_result(request_id, result)

    async def _send(self, stream: trio.abc.Stream, message: dict[str, Any]) -> bool:
        try:
            await stream.send_all(encode_frame(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


async def run_node(
    data_dir: str | Path,
    config: NodeConfig,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    verify_threads: int = 2,
    metrics_port: int = -1,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the chain in ``data_dir`` and serve it until cancelled (``matmine-node serve``);
    with ``metrics_port`` ≥ 0 also ``/metrics`` on ``host`` (0: any free port)."""
    chain = await trio.to_thread.run_sync(Chain.open, data_dir, config)
    try:
        limiter = trio.CapacityLimiter(verify_threads)
        server = NodeRpcServer(chain, max_frame_size=max_frame_size, limiter=limiter)
        info = await trio.to_thread.run_sync(chain.info)
        log.info(
            "chain in %s at height %d, difficulty %.4g",
            data_dir,
            info["height"],
            info["next_difficulty"],
        )
        async with trio.open_nursery() as nursery:
            if metrics_port >= 0:
                bound = await nursery.start(serve_metrics, chain, limiter, host, metrics_port)
                log.info("metrics on http://%s:%d/metrics", host, bound)
            listeners = await trio.open_tcp_listeners(port, host=host)
            for listener in listeners:
                bound_host, bound_port = listener.socket.getsockname()[:2]
                log.info("matmine-node listening on %s:%d", bound_host, bound_port)
            await trio.serve_listeners(server.handle_connection, listeners, task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(chain.close)
