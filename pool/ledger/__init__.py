"""The pool's accounting store: the ``Ledger`` interface, SQLite and PostgreSQL stores.

``open_ledger`` picks the store from its argument: a ``postgresql://`` URL opens
``PostgresLedger`` (needs ``psycopg``: the ``postgres`` extra), anything else is the path
of a ``SqliteLedger`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    CANCELLED,
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    PENDING,
    REJECTED,
    SUBMITTING,
    BlockRecord,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    MinerPayment,
    MinerSummary,
    PaymentBatch,
    PendingSubmission,
    PoolTotals,
    ShareRecord,
    ShareStat,
)
from .sqlite import SqliteLedger

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_ledger(url_or_path: str | Path, **postgres_options: Any) -> Ledger:
    """Open the ledger at ``url_or_path``: a PostgreSQL URL or a SQLite file path.

    ``postgres_options`` (``connect_timeout``, ``statement_timeout``, ``call_timeout``)
    go to ``PostgresLedger``; a SQLite ledger ignores them."""
    if isinstance(url_or_path, str) and url_or_path.startswith(POSTGRES_SCHEMES):
        try:
            from .postgres import PostgresLedger
        except ImportError as exc:
            raise LedgerError(
                f"a PostgreSQL ledger needs psycopg (pip install 'matmine[postgres]'): {exc}"
            ) from exc
        return PostgresLedger(url_or_path, **postgres_options)
    return SqliteLedger(url_or_path)


__all__ = [
    "CANCELLED",
    "COMPLETED",
    "CONFIRMED",
    "CREDITED",
    "FOUND",
    "ORPHANED",
    "PENDING",
    "REJECTED",
    "SUBMITTING",
    "BlockRecord",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "MinerPayment",
    "MinerSummary",
    "PaymentBatch",
    "PendingSubmission",
    "PoolTotals",
    "ShareRecord",
    "ShareStat",
    "SqliteLedger",
    "open_ledger",
]
