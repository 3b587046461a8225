"""What the pool knows about one miner connection, as plain data (no IO, no tasks).

:class:`MinerState` is the part of a session other parts read: who the miner is (after
subscribe and authorize), when it connected and last spoke, and its share counts. The
server reads it to choose whom to evict, tests and the stats read it; only the session
writes it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pool.share_check import short_address


@dataclass(eq=False, slots=True)
class MinerState:
    """One connection's identity and counters (compared by identity, hashable; slots: a
    pool holds ten thousand)."""

    peer: str
    connected_at: float
    last_message: float
    session_id: bytes = field(default_factory=lambda: secrets.token_bytes(8))
    extranonce1: bytes | None = None
    address: str | None = None
    worker: str | None = None
    agent: str = ""
    useful_capable: bool = False  # subscribed with the ``useful-1`` capability
    model_capable: bool = False  # subscribed with the ``model-1`` capability
    accepted: int = 0
    rejected: int = 0

    @property
    def login(self) -> str:
        """``mmd1abcd…wxyz.rig1`` for logs (the anonymous peer before authorize)."""
        if not self.address:
            return f"<anonymous {self.peer}>"
        return f"{short_address(self.address)}.{self.worker}"

    @property
    def work_key(self) -> str:
        """How the useful-work queue names this session (its leases, jobs, held shares)."""
        return self.session_id.hex()
