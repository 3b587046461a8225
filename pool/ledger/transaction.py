"""``Transaction`` and ``SqlStore``: what the ledger's repositories run their SQL on.

A store (``SqliteLedger``, ``PostgresLedger``) gives ``SqlStore._run`` (one transaction
under its lock) and, where the DB-API defaults do not fit, a ``Transaction`` subclass
(placeholder style, row locks, how the share history is streamed).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

MAX_AMOUNT = 2**63 - 1  # SQL BIGINT
T = TypeVar("T")

# The shares a PPLNS window is taken from, newest first.
HISTORY = (
    "SELECT time, address, difficulty, network_difficulty FROM shares"
    " WHERE time <= ? ORDER BY time DESC, id DESC"
)


class Transaction:
    """One open transaction on a DB-API connection, running ``?``-style SQL.

    The queries hold no literal ``?`` or ``%``: a store with another placeholder style
    sets ``PLACEHOLDER`` and every ``?`` becomes it.

    ``FOR_UPDATE`` is appended to a SELECT whose rows the transaction goes on to decide
    on: empty where a write transaction already shuts out every other writer.
    """

    PLACEHOLDER: ClassVar[str] = "?"
    FOR_UPDATE: ClassVar[str] = ""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def sql(self, query: str) -> str:
        """``query`` in the connection's placeholder style."""
        return query if self.PLACEHOLDER == "?" else query.replace("?", self.PLACEHOLDER)

    def execute(self, query: str, params: Sequence[object] = ()) -> Any:
        """Run one statement; return its cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        return self.conn.execute(self.sql(query), params)

    def executemany(self, query: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement for each of ``rows``; return how many rows it changed."""
        if not rows:
            return 0
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.executemany(self.sql(query), rows)
            return cur.rowcount

    @contextlib.contextmanager
    def history(self, at: float) -> Iterator[Iterator[tuple]]:
        """(time, address, difficulty, network_difficulty) of the shares at or before
        ``at``, newest first, read lazily: PPLNS stops at the window's edge."""
        with contextlib.closing(self.execute(HISTORY, (at,))) as cur:
            yield iter(cur)


class SqlStore(abc.ABC):
    """A SQL store run one transaction at a time; the repositories' common base."""

    where: str  # the store, for messages (no password)

    @abc.abstractmethod
    def _run(self, body: Callable[[Transaction], T], *, write: bool) -> T:
        """Run ``body`` in one transaction under the lock; commit, or roll back on error.

        A write is durable on return and sees no other writer change what it read; a
        read sees one consistent snapshot.
        """

    def _write(self, body: Callable[[Transaction], T]) -> T:
        return self._run(body, write=True)

    def _read(self, body: Callable[[Transaction], T]) -> T:
        return self._run(body, write=False)
