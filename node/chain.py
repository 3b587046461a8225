"""The devnet chain: its state, maturity, orphans and the wallet ledger.

The rules a block must meet (header, coinbase, work, ticket, retarget) are
:mod:`node.rules`; this module applies them to the chain kept in :class:`NodeStore`.

Synchronous and free of trio: every public method of :class:`Chain` may be called from
a worker thread (the adapters use ``trio.to_thread.run_sync``). State changes are
serialised by one lock; the expensive part of ``submit_block`` (re-deriving the work
root and recomputing the winning ticket) runs outside it.

Conventions:
- ``confirmations`` of a main-chain block = blocks built on top of it (a new tip has 0).
  A block is "confirmed", and its coinbase spendable, once ``confirmations ≥ maturity``.
- Difficulty retargets every block: the mean target of the last ``retarget_window``
  blocks scaled by (their actual span / expected span), the span clamped to
  ``[expected / max_adjust, expected · max_adjust]``, never easier than ``min_difficulty``.
  While the chain is younger than the window, the missing intervals count as on time at
  the tip's target, so one lucky early block moves the difficulty only a little.
- The wallet is a block-less ledger: ``send_many`` moves mature funds at once, recorded
  under its idempotency key; balances are derived from blocks and payments on demand.
  The sender is named by the caller (``from_address``; the adapters pass the pool's
  coinbase address, their ``wallet_address``), so a pool spends only what matured to its
  own address. The devnet has no keys: any loopback client could name any sender.
- Orphan simulation (tests): with ``orphan_probability`` p, an accepted block whose
  ``H(orphan_seed ‖ hash)`` draw falls under p is at once beaten by a node-made branch
  (a sibling at its height plus one block on top): it is reported accepted, then
  "orphaned", and its reward never matures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.address import validate_address
from protocol.chain import (
    ERR_MALFORMED,
    BlockState,
    BlockStatus,
    BlockSubmission,
    BlockTemplate,
    ChainError,
    InsufficientFunds,
    PaymentKeyConflict,
    SubmitResult,
)
from protocol.errors import ProtocolError
from protocol.hashing import H
from protocol.header import HEADER_VERSION, Coinbase, Header, coinbase_hash, coins
from protocol.target import (
    difficulty_from_bits,
)

from .config import NodeConfig
from .rules import (
    Rejected,
    WorkloadRoots,
    check_coinbase,
    check_payment,
    check_work,
    decode_header,
    height_of,
    retarget,
)
from .store import NodeStore, StoredBlock, StoredPayment

log = logging.getLogger("node")

MEDIAN_TIME_SPAN = 11
FORGED_WORK_ROOT = H(b"matmine-node/devnet-forged-block")
DB_FILE = "node.sqlite3"


def short(address: str) -> str:
    return address[:12] + "…"


class Chain:
    """The devnet node's chain state over a :class:`NodeStore`."""

    def __init__(
        self, store: NodeStore, config: NodeConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._roots = WorkloadRoots(config.workload_cache)
        with self._lock:
            self._ensure_genesis()

    @classmethod
    def open(
        cls, data_dir: str | Path, config: NodeConfig, clock: Callable[[], float] = time.time
    ) -> Chain:
        """Open (or create) the chain kept in ``data_dir``."""
        return cls(NodeStore(Path(data_dir) / DB_FILE), config, clock)

    def close(self) -> None:
        with self._lock:
            self.store.close()

    # reading ---------------------------------------------------------------------------

    def tip(self) -> tuple[int, bytes]:
        with self._lock:
            tip = self._tip()
            return tip.height, tip.hash

    def template(self) -> BlockTemplate:
        with self._lock:
            tip = self._tip()
            now = int(self._clock())
            return BlockTemplate(
                height=tip.height + 1,
                prev_hash=tip.hash,
                bits=self._next_bits(tip),
                time=max(now, self._median_time(tip) + 1),
                reward=self.config.block_reward,
            )

    def block_status(self, block_hash: bytes) -> BlockStatus:
        with self._lock:
            block = self.store.block(block_hash)
            if block is None:
                return BlockStatus("unknown", 0, -1)
            if not block.main:
                return BlockStatus("orphaned", 0, block.height)
            confirmations = self._tip().height - block.height
            state: BlockState = "confirmed" if confirmations >= self.config.maturity else "pending"
            return BlockStatus(state, confirmations, block.height)

    def balance(self, address: str) -> int:
        """Spendable balance: mature coinbase rewards + payments received − sent."""
        return self.balances(address)[0]

    def balances(self, address: str) -> tuple[int, int]:
        """(spendable, immature) of ``address``."""
        try:
            validate_address(address)
        except ProtocolError as exc:
            raise ChainError(str(exc), ERR_MALFORMED) from None
        with self._lock:
            return self._balances(address)

    def payment(self, key: str) -> str | None:
        with self._lock:
            p = self.store.payment(key)
            return None if p is None else p.txid

    def info(self) -> dict[str, Any]:
        """A summary for operators and ``node.info``."""
        with self._lock:
            tip = self._tip()
            genesis = self.store.main_chain(0, 0)[0]
            return {
                "network": "devnet",
                "height": tip.height,
                "tip": tip.hash,
                "genesis": genesis.hash,
                "difficulty": difficulty_from_bits(tip.bits),
                "next_difficulty": difficulty_from_bits(self._next_bits(tip)),
                "block_time": self.config.block_time,
                "maturity": self.config.maturity,
                "block_reward": self.config.block_reward,
                "node_address": self.config.node_address,
                "orphan_probability": self.config.orphan_probability,
            }

    # submitting ------------------------------------------------------------------------

    def submit_block(self, sub: BlockSubmission) -> SubmitResult:
        """Fully verify ``sub``; on success append it to the main chain."""
        block_hash: bytes | None = None
        try:
            header = decode_header(sub.header)
            block_hash = header.hash()
            with self._lock:
                coinbase = self._check_context(header, block_hash, sub.coinbase)
            check_work(header, sub, self._roots)
            with self._lock:
                # The tip may have moved while the ticket was being checked.
                self._check_context(header, block_hash, sub.coinbase)
                next_bits = self._accept(header, block_hash, sub.coinbase, coinbase.address)
        except Rejected as exc:
            log.info("block %s rejected: %s (%s)", height_of(sub.header), exc.reason, exc.detail)
            return SubmitResult(False, block_hash, exc.reason)
        log.info(
            "block %d accepted from %s, reward %s, next difficulty %.4g",
            header.height,
            short(coinbase.address),
            coins(coinbase.reward),
            difficulty_from_bits(next_bits),
        )
        return SubmitResult(True, block_hash, "accepted")

    def devnet_advance(self, count: int) -> list[bytes]:
        """DEVNET/TEST FACILITY: append ``count`` node-forged blocks without proof of work.

        They pay ``node_address`` and are spaced ``block_time`` apart, so they move
        maturity along on a quiet devnet without pushing the difficulty around.
        """
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 10_000:
            raise ChainError("advance count must be an integer in 0..10000", ERR_MALFORMED)
        hashes = []
        with self._lock, self.store.transaction():
            tip = self._tip()
            for _ in range(count):
                tip = self._forge(tip)
                hashes.append(tip.hash)
        if count:
            log.info(
                "devnet: forged %d block(s) without proof of work, tip now %d", count, tip.height
            )
        return hashes

    # wallet ----------------------------------------------------------------------------

    def send_many(self, key: str, outputs: dict[str, int], from_address: str) -> str:
        """Pay ``outputs`` from ``from_address``'s spendable balance; idempotent by ``key``.

        The same key with the same sender and outputs returns the first txid and debits
        nothing; the same key with anything else raises :class:`PaymentKeyConflict`.
        """
        check_payment(key, outputs, from_address)
        with self._lock, self.store.transaction():
            earlier = self.store.payment(key)
            if earlier is not None:
                if earlier.from_address == from_address and earlier.outputs == outputs:
                    return earlier.txid
                raise PaymentKeyConflict(
                    f"payment key {key!r} was already used for different outputs "
                    f"(txid {earlier.txid})"
                )
            total = sum(outputs.values())
            spendable, immature = self._balances(from_address)
            if total > spendable:
                raise InsufficientFunds(
                    f"{from_address} has {coins(spendable)} spendable "
                    f"({coins(immature)} immature), payment {key!r} needs {coins(total)}"
                )
            txid = H(
                b"matmine-node/tx",
                key.encode(),
                from_address.encode(),
                repr(sorted(outputs.items())).encode(),
            ).hex()
            self.store.insert_payment(
                StoredPayment(key, txid, from_address, dict(outputs), total, self._clock())
            )
        log.info(
            "payment %s sent: %s to %d address(es) from %s, txid %s",
            key,
            coins(total),
            len(outputs),
            short(from_address),
            txid[:16],
        )
        return txid

    # internals -------------------------------------------------------------------------

    def _tip(self) -> StoredBlock:
        tip = self.store.tip()
        assert tip is not None, "the chain always has a genesis block"
        return tip

    def _ensure_genesis(self) -> None:
        genesis = self.store.main_chain(0, 0)
        if genesis:
            if genesis[0].bits != self.config.start_bits:
                log.warning(
                    "chain in %s started at difficulty %.4g; --start-difficulty %.4g only "
                    "applies to a new data dir",
                    self.store.path,
                    difficulty_from_bits(genesis[0].bits),
                    self.config.start_difficulty,
                )
            return
        cb = Coinbase(0, 0, self.config.node_address, "genesis", bytes(4), bytes(8)).encode()
        header = Header(
            HEADER_VERSION,
            0,
            bytes(32),
            coinbase_hash(cb),
            FORGED_WORK_ROOT,
            int(self._clock()),
            self.config.start_bits,
        )
        with self.store.transaction():
            self.store.insert_block(
                StoredBlock(
                    header.hash(),
                    0,
                    bytes(32),
                    header.encode(),
                    cb,
                    self.config.node_address,
                    0,
                    header.bits,
                    header.time,
                    True,
                    True,
                    self._clock(),
                )
            )
        log.info(
            "new devnet chain: genesis %s, start difficulty %.4g",
            header.hash().hex()[:16],
            self.config.start_difficulty,
        )

    def _median_time(self, tip: StoredBlock) -> int:
        window = self.store.main_chain(max(0, tip.height - MEDIAN_TIME_SPAN + 1), tip.height)
        times = sorted(b.time for b in window)
        return times[len(times) // 2]

    def _next_bits(self, tip: StoredBlock) -> int:
        """Compact target of the block after ``tip`` (see the module doc)."""
        window = self.store.main_chain(max(0, tip.height - self.config.retarget_window), tip.height)
        return retarget(window, tip.bits, self.config)

    def _balances(self, address: str) -> tuple[int, int]:
        mature_height = self._tip().height - self.config.maturity
        mature = self.store.coinbase_total(address, 0, mature_height)
        immature = self.store.coinbase_total(address, mature_height + 1, 1 << 62)
        received = self.store.received_total(address)
        sent = self.store.sent_total(address)
        return mature + received - sent, immature

    def _check_context(self, header: Header, block_hash: bytes, raw_coinbase: bytes) -> Coinbase:
        """Rules that depend on the chain: parent, height, bits, time, coinbase."""
        if self.store.block(block_hash) is not None:
            raise Rejected("duplicate", f"block {block_hash.hex()[:16]} is already known")
        tip = self._tip()
        if header.prev_hash != tip.hash:
            raise Rejected(
                "stale",
                f"builds on {header.prev_hash.hex()[:16]}, tip is "
                f"{tip.hash.hex()[:16]} at height {tip.height}",
            )
        if header.height != tip.height + 1:
            raise Rejected("bad-height", f"height {header.height}, expected {tip.height + 1}")
        expected_bits = self._next_bits(tip)
        if header.bits != expected_bits:
            raise Rejected("bad-bits", f"bits {header.bits:#010x}, expected {expected_bits:#010x}")
        median = self._median_time(tip)
        if header.time <= median:
            raise Rejected("time-too-old", f"time {header.time} not after median {median}")
        now = int(self._clock())
        if header.time > now + self.config.max_future_time:
            raise Rejected("time-too-new", f"time {header.time} is {header.time - now} s ahead")
        return check_coinbase(header, raw_coinbase, self.config.block_reward)

    def _accept(self, header: Header, block_hash: bytes, raw_coinbase: bytes, address: str) -> int:
        """Append a verified block (and maybe simulate a reorg); returns the next bits."""
        block = StoredBlock(
            block_hash,
            header.height,
            header.prev_hash,
            header.encode(),
            raw_coinbase,
            address,
            self.config.block_reward,
            header.bits,
            header.time,
            False,
            True,
            self._clock(),
        )
        with self.store.transaction():
            parent = self._tip()
            self.store.insert_block(block)
            if self._doomed(block_hash):
                self.store.set_main(block_hash, False)
                sibling = self._forge(parent)
                tip = self._forge(sibling)
                log.warning(
                    "devnet: block %d %s orphaned by a simulated reorg (node blocks %s, %s)",
                    header.height,
                    block_hash.hex()[:16],
                    sibling.hash.hex()[:16],
                    tip.hash.hex()[:16],
                )
        return self._next_bits(self._tip())

    def _doomed(self, block_hash: bytes) -> bool:
        """Deterministic orphan lottery: H(seed ‖ hash) against ``orphan_probability``."""
        p = self.config.orphan_probability
        if p <= 0:
            return False
        draw = int.from_bytes(
            H(b"matmine-node/orphan", self.config.orphan_seed.encode(), block_hash)[:8], "little"
        )
        return draw < p * 2**64

    def _forge(self, parent: StoredBlock) -> StoredBlock:
        """A node block on ``parent`` paying ``node_address``, no proof of work (devnet)."""
        height = parent.height + 1
        cfg = self.config
        cb = Coinbase(
            height, cfg.block_reward, cfg.node_address, "node", bytes(4), bytes(8)
        ).encode()
        when = max(self._median_time(parent) + 1, parent.time + cfg.block_time)
        header = Header(
            HEADER_VERSION,
            height,
            parent.hash,
            coinbase_hash(cb),
            FORGED_WORK_ROOT,
            when,
            self._next_bits(parent),
        )
        block = StoredBlock(
            header.hash(),
            height,
            parent.hash,
            header.encode(),
            cb,
            cfg.node_address,
            cfg.block_reward,
            header.bits,
            when,
            True,
            True,
            self._clock(),
        )
        self.store.insert_block(block)
        return block
