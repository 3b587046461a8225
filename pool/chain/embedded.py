"""``EmbeddedChain``: the devnet node running inside the pool process (the default).

Wraps :class:`node.chain.Chain`; every call (SQLite, ticket verification) runs in
a worker thread under a ``CapacityLimiter`` so the pool's event loop never blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from node.chain import Chain
from node.config import NodeConfig
from protocol.chain import BlockStatus, BlockSubmission, BlockTemplate, ChainError, SubmitResult

T = TypeVar("T")

__all__ = ["EmbeddedChain", "NodeConfig"]  # NodeConfig: the [chain.node] settings


class EmbeddedChain:
    """A :class:`~pool.chain.base.ChainAdapter` over an in-process devnet node.

    ``wallet_address`` is the pool's coinbase address; ``send_many`` spends from it.
    Opening reads or creates ``data_dir/node.sqlite3`` (blocking, once, at startup).
    """

    def __init__(
        self,
        data_dir: str | Path,
        config: NodeConfig | None = None,
        *,
        wallet_address: str | None = None,
        limiter: trio.CapacityLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chain = Chain.open(data_dir, config or NodeConfig(), clock)
        self.wallet_address = wallet_address
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(2)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._run(self.chain.close)

    async def __aenter__(self) -> EmbeddedChain:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ChainAdapter -----------------------------------------------------------------------

    async def template(self) -> BlockTemplate:
        return await self._run(self.chain.template)

    async def tip(self) -> tuple[int, bytes]:
        return await self._run(self.chain.tip)

    async def submit_block(self, sub: BlockSubmission) -> SubmitResult:
        return await self._run(self.chain.submit_block, sub)

    async def block_status(self, block_hash: bytes) -> BlockStatus:
        return await self._run(self.chain.block_status, block_hash)

    async def send_many(self, key: str, outputs: dict[str, int]) -> str:
        if self.wallet_address is None:
            raise ChainError("EmbeddedChain was built without a wallet_address to send from")
        return await self._run(self.chain.send_many, key, outputs, self.wallet_address)

    async def payment(self, key: str) -> str | None:
        return await self._run(self.chain.payment, key)

    async def balance(self, address: str) -> int:
        return await self._run(self.chain.balance, address)

    # extras (same as RpcChain) ----------------------------------------------------------

    async def balances(self, address: str) -> tuple[int, int]:
        """(spendable, immature) of ``address``."""
        return await self._run(self.chain.balances, address)

    async def info(self) -> dict[str, Any]:
        return await self._run(self.chain.info)

    async def devnet_advance(self, count: int) -> list[bytes]:
        """DEVNET/TEST FACILITY: append ``count`` node blocks without proof of work."""
        return await self._run(self.chain.devnet_advance, count)
