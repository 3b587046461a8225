"""``ShareRepository``: the ledger's shares (store, count, stats, prune)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from ..pplns import ShareScore, check_parameters, share_score
from .base import FOUND, SUBMITTING, ShareRecord, ShareStat
from .transaction import SqlStore, Transaction

INSERT_SHARE = (
    "INSERT INTO shares (digest, time, address, worker, job_id, height, difficulty,"
    " network_difficulty, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (digest) DO NOTHING"
)


def _check_share(share: ShareRecord) -> None:
    if not isinstance(share.digest, bytes | bytearray) or not share.digest:
        raise ValueError(f"share digest must be non-empty bytes, got {share.digest!r}")
    if not math.isfinite(share.time):
        raise ValueError(f"share time must be finite, got {share.time!r}")
    if not share.address:
        raise ValueError("share address must not be empty")
    d, nd = share.difficulty, share.network_difficulty
    if not (math.isfinite(d) and d > 0 and math.isfinite(nd) and nd > 0):
        # share_score refuses it, saying which (the exact score is not needed here)
        share_score(ShareScore(share.address, d, nd))


def _share_rows(shares: Sequence[ShareRecord]) -> list[tuple]:
    """The rows of ``INSERT_SHARE`` for ``shares`` (each checked first)."""
    for share in shares:
        _check_share(share)
    return [
        (
            bytes(s.digest),
            float(s.time),
            s.address,
            s.worker,
            s.job_id,
            int(s.height),
            float(s.difficulty),
            float(s.network_difficulty),
            bytes(s.session_id),
        )
        for s in shares
    ]


class ShareRepository(SqlStore):
    """The ``Ledger`` methods on the ``shares`` table."""

    def insert_shares(self, shares: Sequence[ShareRecord]) -> int:
        rows = _share_rows(shares)
        return self._write(lambda tx: tx.executemany(INSERT_SHARE, rows)) if rows else 0

    def store_shares(self, shares: Sequence[ShareRecord]) -> list[bool]:
        rows = _share_rows(shares)
        if not rows:
            return []

        def store(tx: Transaction) -> list[bool]:
            first: dict[bytes, int] = {}  # digest -> index of its first record in this batch
            for i, row in enumerate(rows):
                first.setdefault(row[0], i)
            if tx.executemany(INSERT_SHARE, rows) == len(first):  # all new: the usual case
                return [first[row[0]] == i for i, row in enumerate(rows)]
            stored = []
            for i, row in enumerate(rows):
                owner = tx.execute(
                    "SELECT session_id, job_id FROM shares WHERE digest = ?", (row[0],)
                ).fetchone()
                stored.append(
                    first[row[0]] == i
                    and owner is not None
                    and (bytes(owner[0]), owner[1]) == (row[8], row[4])
                )
            return stored

        return self._write(store)

    def share_stats(self, since: float) -> list[ShareStat]:
        rows = self._read(
            lambda tx: tx.execute(
                "SELECT address, worker, COUNT(*), SUM(difficulty), MAX(time) FROM shares"
                " WHERE time >= ? GROUP BY address, worker ORDER BY address, worker",
                (since,),
            ).fetchall()
        )
        return [ShareStat(a, w, n, d, t) for a, w, n, d, t in rows]

    def share_count(self) -> int:
        return self._read(lambda tx: tx.execute("SELECT COUNT(*) FROM shares").fetchone()[0])

    @staticmethod
    def _window_start(tx: Transaction, at: float, factor: float) -> float | None:
        """Time of the oldest share in the window of a block at ``at``; None if not full."""
        limit = Fraction(factor)
        total = Fraction(0)
        with tx.history(at) as rows:
            for t, _address, d, nd in rows:
                total += Fraction(d) / Fraction(nd)
                if total >= limit:
                    return t
        return None

    def prune_shares(
        self, before: float, factor: float = 2.0, *, blocks_after: float = math.inf
    ) -> int:
        check_parameters(0, 0, factor)

        def prune(tx: Transaction) -> int:
            cutoff = before
            found = tx.execute(
                "SELECT time FROM blocks WHERE status IN (?, ?)", (FOUND, SUBMITTING)
            ).fetchall()
            for at in [blocks_after] + [t for (t,) in found]:
                start = self._window_start(tx, at, factor)
                if start is None:
                    return 0
                cutoff = min(cutoff, start)
            return tx.execute("DELETE FROM shares WHERE time < ?", (cutoff,)).rowcount

        return self._write(prune)
