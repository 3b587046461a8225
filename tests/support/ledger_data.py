"""A ledger's test data: addresses and share records."""

from __future__ import annotations

from pool.ledger import (
    ShareRecord,
)

ALICE = "mmd1" + "a" * 48


BOB = "mmd1" + "b" * 48


def share(
    n: int, address: str, t: float, difficulty: float = 1.0, network: float = 10.0
) -> ShareRecord:
    return ShareRecord(
        digest=n.to_bytes(32, "little"),
        time=t,
        address=address,
        worker=f"rig{n % 3}",
        job_id=f"job{n // 10}",
        height=100 + n // 50,
        difficulty=difficulty,
        network_difficulty=network,
        session_id=b"\x01" * 8,
    )
