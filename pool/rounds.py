"""How a background round (payouts, unlocking, retention) reports that it failed.

A ledger that cannot be reached (:class:`~pool.ledger.LedgerUnavailable`, e.g. PostgreSQL
down) is an outage the share log already reports through the pool's health: the round says
so in one warning line when the outage starts (later rounds of the same outage at debug)
and one line when it runs again. Anything else is a bug or a surprise: a full traceback,
every time.
"""

from __future__ import annotations

import logging

from .ledger.base import LedgerUnavailable


class RoundErrors:
    """The failures of one background loop, reported as above (``name`` starts each line)."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self.log = log
        self.name = name
        self.skipped = 0  # rounds skipped in a row because the ledger was unavailable

    def failed(self, exc: Exception) -> None:
        """The round raised ``exc`` (call from its ``except Exception``)."""
        if not isinstance(exc, LedgerUnavailable):
            self.log.error("%s failed", self.name, exc_info=exc)
            return
        level = logging.WARNING if self.skipped == 0 else logging.DEBUG
        self.log.log(level, "%s skipped, the ledger is unavailable: %s", self.name, exc)
        self.skipped += 1

    def succeeded(self) -> None:
        """The round ran to the end."""
        if self.skipped:
            self.log.info("%s runs again after %d skipped round(s)", self.name, self.skipped)
            self.skipped = 0
