"""The ledger interface: shares, blocks, credits, balances and payment batches.

All methods are synchronous; the pool calls them from a worker thread through
``trio.to_thread.run_sync(..., limiter=CapacityLimiter(1))``. Money is integer base units.

Block life cycle::

    record_block(submission=...) -> "submitting" --reject_block--> "rejected"
                                          |
                                   block_submitted
                                          v
    record_block -> "found" --credit_block--> "credited" --confirm_block--> "confirmed"
                        \\                          \\
                         `-------orphan_block--------`--> "orphaned"

A block recorded with its submission is "submitting" until the node answers it: accepted
(``block_submitted``: "found", the submission dropped) or refused (``reject_block``:
"rejected", with the node's reason). While it waits, ``pending_submissions`` hands the
stored submission back for another try, across restarts too.

Credits are written by ``credit_block`` as "pending" (immature), become balances on
``confirm_block`` and are voided by ``orphan_block``. Payments are two-phase: a batch is
written "pending" (balances debited) before it is sent, and marked "completed" with the
txid afterwards; after a crash the pending batches are reconciled against the node by key.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Block states.
SUBMITTING = "submitting"  # recorded with its submission; the node has not answered yet
REJECTED = "rejected"  # the node refused it (stale, invalid): never on chain, no credits
FOUND = "found"
CREDITED = "credited"
CONFIRMED = "confirmed"
ORPHANED = "orphaned"

# Payment batch states.
PENDING = "pending"
COMPLETED = "completed"
CANCELLED = "cancelled"


class LedgerError(Exception):
    """A ledger operation that cannot be done (unknown block, bad state, short balance)."""


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached now; the same call may succeed later."""


@dataclass(frozen=True)
class ShareRecord:
    """One accepted share. ``digest`` (the ticket digest) is the unique key."""

    digest: bytes
    time: float
    address: str
    worker: str
    job_id: str
    height: int
    difficulty: float
    network_difficulty: float
    session_id: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-able values (bytes as hex), as the work queue holds a share."""
        return {**asdict(self), "digest": self.digest.hex(), "session_id": self.session_id.hex()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShareRecord:
        """The inverse of :meth:`to_json`."""
        digest, session_id = bytes.fromhex(data["digest"]), bytes.fromhex(data["session_id"])
        return cls(**{**data, "digest": digest, "session_id": session_id})


@dataclass(frozen=True)
class BlockRecord:
    """A block the pool found, with its accounting outcome once credited."""

    id: int
    height: int
    hash: bytes
    reward: int
    time: float
    address: str
    worker: str
    network_difficulty: float
    status: str
    confirmations: int = 0
    fee: int | None = None  # set when credited
    remainder: int | None = None
    fee_address: str | None = None
    shares_used: int | None = None
    reason: str | None = None  # why the node rejected it
    # Its round's accepted share difficulty (after the block before it, up to this one)
    # over its network difficulty: 1.0 is the work expected per block, under 1 is lucky.
    # None for blocks recorded before the ledger kept it (schema 3).
    effort: float | None = None


@dataclass(frozen=True)
class PendingSubmission:
    """A block whose submission has no answer yet: the block and its stored submission
    (``BlockSubmission.to_wire()`` as msgpack), how often it was tried, the last error."""

    block: BlockRecord
    submission: bytes
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class PaymentBatch:
    """One ``send_many`` to the node, keyed for idempotency."""

    key: str
    outputs: dict[str, int]
    status: str
    created: float
    txid: str | None = None
    completed: float | None = None

    @property
    def total(self) -> int:
        return sum(self.outputs.values())


@dataclass(frozen=True)
class ShareStat:
    """Accepted shares of one worker since some time (for hashrate)."""

    address: str
    worker: str
    shares: int
    difficulty: float  # sum of share difficulties
    last_time: float


@dataclass(frozen=True)
class MinerPayment:
    """One miner's part of a payment batch."""

    key: str
    amount: int
    status: str
    txid: str | None
    time: float


@dataclass(frozen=True)
class MinerSummary:
    """What the HTTP API shows for one address."""

    address: str
    balance: int  # confirmed, not yet paid
    immature: int  # credits of blocks not yet confirmed
    pending_payment: int  # in batches written but not completed
    paid: int  # in completed batches
    workers: dict[str, float] = field(default_factory=dict)  # worker -> last share time
    payments: list[MinerPayment] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "balance": self.balance,
            "immature": self.immature,
            "pending_payment": self.pending_payment,
            "paid": self.paid,
            "workers": dict(self.workers),
            "payments": [p.__dict__.copy() for p in self.payments],
        }


@dataclass(frozen=True)
class PoolTotals:
    """Pool-wide counters for stats and metrics."""

    shares: int
    blocks_found: int  # every block recorded, whatever its state
    blocks_pending: int  # found or credited
    blocks_confirmed: int
    blocks_orphaned: int
    balances: int  # sum of all balances
    immature: int  # sum of pending credits
    paid: int  # sum of completed batches
    pending_payments: int  # sum of pending batches
    miners: int  # addresses with a share, credit or balance
    blocks_rejected: int = 0  # refused by the node
    blocks_submitting: int = 0  # waiting for the node's answer to their submission


class Ledger(abc.ABC):
    """Durable accounting store: ``SqliteLedger`` and ``PostgresLedger``, over ``SqlLedger``."""

    # --- schema -----------------------------------------------------------------------

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version stored (a cheap read: the share log's health probe)."""

    # --- shares -----------------------------------------------------------------------

    @abc.abstractmethod
    def insert_shares(self, shares: Sequence[ShareRecord]) -> int:
        """Store ``shares`` in one transaction, durable on return; return how many were new.

        A digest already stored is ignored, so replaying a batch after a crash is harmless.
        """

    @abc.abstractmethod
    def store_shares(self, shares: Sequence[ShareRecord]) -> list[bool]:
        """Store ``shares`` in one transaction, durable on return; for each, whether the
        ledger now holds it as that share (what an ack promises, SPEC §12.8).

        True: inserted now, or already stored by the same session and job (a replay after
        a commit whose outcome was lost). False: its digest is stored for another share,
        or came earlier in ``shares`` — a duplicate, credited once only.
        """

    @abc.abstractmethod
    def share_stats(self, since: float) -> list[ShareStat]:
        """Per (address, worker): count and difficulty sum of shares with time >= since."""

    @abc.abstractmethod
    def share_count(self) -> int:
        """Number of shares stored."""

    @abc.abstractmethod
    def prune_shares(
        self, before: float, factor: float = 2.0, *, blocks_after: float = float("inf")
    ) -> int:
        """Delete shares older than ``before`` that no PPLNS window can still need.

        Kept whatever ``before`` says: every share of the window that a block at time
        ``blocks_after`` would use with ``factor`` (pass the largest factor the pool may
        use; windows only move forward in time, so this covers every later block too: pass
        the oldest time a block not yet recorded may carry), and the windows of blocks not
        yet credited. Returns the number of shares deleted.
        """

    # --- blocks -----------------------------------------------------------------------

    @abc.abstractmethod
    def record_block(
        self,
        height: int,
        block_hash: bytes,
        reward: int,
        time: float,
        address: str,
        worker: str,
        network_difficulty: float,
        submission: bytes | None = None,
    ) -> int:
        """Store a found block (state "found"); return its id. Same hash again: same id.

        Its ``effort`` is computed here from the shares in the ledger: the difficulty of
        those after the newest block recorded before ``time`` and at or before ``time``,
        over ``network_difficulty``. (Shares held for a useful-work unit that verifies
        later are not in it.)

        With ``submission`` (the encoded ``BlockSubmission``) the block is "submitting"
        and the submission is kept until the node answers (``block_submitted``,
        ``reject_block``).
        """

    @abc.abstractmethod
    def block_submitted(self, block_id: int) -> bool:
        """Submitting -> found: the node has the block; its submission is dropped.
        Idempotent: True only when this call moved it."""

    @abc.abstractmethod
    def reject_block(self, block_id: int, reason: str) -> BlockRecord:
        """Submitting/found -> rejected with ``reason`` (the node refused it, or the chain
        moved past it). Idempotent; a credited, confirmed or orphaned block raises."""

    @abc.abstractmethod
    def submission_failed(self, block_id: int, error: str) -> int:
        """One more submission of a submitting block went unanswered; returns its tries."""

    @abc.abstractmethod
    def pending_submissions(self) -> list[PendingSubmission]:
        """Blocks still "submitting", with their stored submissions, oldest first."""

    @abc.abstractmethod
    def credit_block(
        self, block_id: int, factor: float, fee_bps: int, fee_address: str | None
    ) -> BlockRecord:
        """Run PPLNS over the shares at or before the block's time; store pending credits.

        The credits and the state change to "credited" are one transaction. A block
        already credited, confirmed or orphaned is returned unchanged (idempotent).
        ``fee_address`` receives fee + remainder as a credit; None keeps them in the pool
        wallet.
        """

    @abc.abstractmethod
    def confirm_block(self, block_id: int) -> BlockRecord:
        """Credited -> confirmed: the block's credits become balances. Idempotent.

        Raises ``LedgerError`` for an orphaned block or one not credited yet.
        """

    @abc.abstractmethod
    def orphan_block(self, block_id: int) -> BlockRecord:
        """Found/credited -> orphaned: credits void. Idempotent; a confirmed block raises."""

    @abc.abstractmethod
    def set_block_confirmations(self, block_id: int, confirmations: int) -> None:
        """Remember the node's confirmation count of a block (for display)."""

    @abc.abstractmethod
    def block(self, block_id: int) -> BlockRecord:
        """One block by id; ``LedgerError`` if unknown."""

    @abc.abstractmethod
    def blocks(self, limit: int = 50) -> list[BlockRecord]:
        """The newest ``limit`` blocks, newest first."""

    @abc.abstractmethod
    def unlockable_blocks(self) -> list[BlockRecord]:
        """Blocks still waiting for the chain's verdict (found or credited), oldest first."""

    @abc.abstractmethod
    def block_credits(self, block_id: int) -> dict[str, int]:
        """Per-address credits of one block (empty before crediting)."""

    # --- balances and payments ----------------------------------------------------------

    @abc.abstractmethod
    def balances(self) -> dict[str, int]:
        """Every non-zero confirmed, unpaid balance."""

    @abc.abstractmethod
    def payable(self, min_payout: int) -> dict[str, int]:
        """Balances of at least ``min_payout`` (and above zero)."""

    @abc.abstractmethod
    def oldest_payable_since(self, min_payout: int) -> float | None:
        """When the oldest payable balance last rose from zero (for the payout lag)."""

    @abc.abstractmethod
    def create_payment_batch(self, key: str, outputs: dict[str, int]) -> PaymentBatch:
        """Debit balances and store the batch "pending", in one transaction, before sending.

        Raises ``LedgerError`` if an output exceeds its balance or the key is taken by a
        different batch; the same key with the same outputs returns the stored batch.
        """

    @abc.abstractmethod
    def complete_payment_batch(self, key: str, txid: str) -> PaymentBatch:
        """Pending -> completed with ``txid``. Idempotent for the same txid."""

    @abc.abstractmethod
    def cancel_payment_batch(self, key: str) -> PaymentBatch:
        """Pending -> cancelled, balances restored. Only for a batch the node never saw."""

    @abc.abstractmethod
    def pending_payment_batches(self) -> list[PaymentBatch]:
        """Batches written but not completed or cancelled, oldest first."""

    @abc.abstractmethod
    def payment_batch(self, key: str) -> PaymentBatch:
        """One batch by key; ``LedgerError`` if unknown."""

    @abc.abstractmethod
    def payments(self, limit: int = 50) -> list[PaymentBatch]:
        """The newest ``limit`` batches, newest first."""

    @abc.abstractmethod
    def pending_payout_total(self) -> int:
        """Money owed to miners and not yet on chain: balances plus pending batches."""

    # --- summaries ----------------------------------------------------------------------

    @abc.abstractmethod
    def miner(self, address: str, payments_limit: int = 20) -> MinerSummary:
        """Balance, immature, paid, workers and recent payments of one address."""

    @abc.abstractmethod
    def pool_totals(self) -> PoolTotals:
        """Pool-wide counters."""

    # --- lifetime -----------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; the object is unusable afterwards."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
