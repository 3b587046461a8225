"""The pool's accounting store: the ``Ledger`` interface and its SQLite implementation."""

from .base import (
    CANCELLED,
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    PENDING,
    BlockRecord,
    Ledger,
    LedgerError,
    MinerPayment,
    MinerSummary,
    PaymentBatch,
    PoolTotals,
    ShareRecord,
    ShareStat,
)
from .sqlite import SqliteLedger

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "CONFIRMED",
    "CREDITED",
    "FOUND",
    "ORPHANED",
    "PENDING",
    "BlockRecord",
    "Ledger",
    "LedgerError",
    "MinerPayment",
    "MinerSummary",
    "PaymentBatch",
    "PoolTotals",
    "ShareRecord",
    "ShareStat",
    "SqliteLedger",
]
