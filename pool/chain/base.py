"""The chain adapter interface: what the pool needs from an upstream chain.

The pool's server, unlocker and payouts code against :class:`ChainAdapter` only; the
devnet node runs behind it in-process (:mod:`pool.chain.embedded`) or over loopback RPC
(:mod:`pool.chain.rpc`). Money is integer base units. The types it speaks in, and the
:class:`~protocol.chain.ChainError` every adapter raises, are :mod:`protocol.chain`'s.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from protocol.chain import BlockStatus, BlockSubmission, BlockTemplate, SubmitResult


@runtime_checkable
class ChainAdapter(Protocol):
    """The pool's view of its upstream chain."""

    async def template(self) -> BlockTemplate:
        """The template for the next block on the current tip."""
        ...

    async def tip(self) -> tuple[int, bytes]:
        """(height, hash) of the current tip; polled by the pool to notice new blocks."""
        ...

    async def submit_block(self, sub: BlockSubmission) -> SubmitResult:
        """Fully verify and, if valid, append a block."""
        ...

    async def block_status(self, block_hash: bytes) -> BlockStatus:
        """pending / confirmed / orphaned / unknown, with confirmations."""
        ...

    async def send_many(self, key: str, outputs: dict[str, int]) -> str:
        """Pay ``outputs`` from the pool's wallet; idempotent by ``key``; returns the txid."""
        ...

    async def payment(self, key: str) -> str | None:
        """The txid of an earlier ``send_many`` with ``key``, or None if never sent."""
        ...

    async def balance(self, address: str) -> int:
        """Spendable (mature) balance of ``address`` in base units."""
        ...
