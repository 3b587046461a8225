"""``SqlLedger``: the ledger's logic, written once for every SQL store.

Each ``Ledger`` method is portable SQL run in one transaction (``ON CONFLICT ...
DO NOTHING/UPDATE``, ``CAST``, no store functions), with ``?`` placeholders, kept in one
repository per aggregate (MiningCore's ``Persistence/Repositories``):

- ``ShareRepository`` (``shares.py``): accepted shares;
- ``BlockRepository`` (``blocks.py``): found blocks and their PPLNS credits;
- ``PaymentRepository`` (``payments.py``): balances and payment batches;
- ``SummaryRepository`` (``summaries.py``): per-miner and pool-wide read models.

``SqlLedger`` composes them with the schema. A store (``SqliteLedger``,
``PostgresLedger``) adds only what truly differs:

- ``_run(body, write=...)``: run ``body(tx)`` in one transaction under its lock, with
  ``tx`` a ``Transaction`` (``transaction.py``) on its connection, and commit (or roll
  back on error);
- a ``Transaction`` subclass where the DB-API defaults do not fit: placeholder style,
  row locks, how the share history is streamed;
- ``SCHEMA`` (the DDL of schema version 1), ``MIGRATIONS`` (the DDL that takes version
  ``v - 1`` to ``v``, for each later ``v``) and ``where`` (the store, for messages).

Versions: 1, the tables; 2, blocks waiting for the node's answer keep their submission
(``block_submissions``) and a rejected block its reason (``blocks.reason``); 3, each block's
effort (``blocks.effort``, NULL for blocks recorded before).
"""

from __future__ import annotations

from typing import ClassVar

from .base import Ledger, LedgerError
from .blocks import BlockRepository
from .payments import PaymentRepository
from .shares import ShareRepository
from .summaries import SummaryRepository
from .transaction import HISTORY, MAX_AMOUNT, SqlStore, Transaction

SCHEMA_VERSION = 3


class SqlLedger(ShareRepository, BlockRepository, PaymentRepository, SummaryRepository, Ledger):
    """The ledger over a SQL store; subclasses give the connection and transactions."""

    SCHEMA: ClassVar[str]  # DDL of schema version 1, statements separated by ";"
    MIGRATIONS: ClassVar[dict[int, str]]  # version -> DDL from the version before it

    def _create_schema(self, tx: Transaction) -> None:
        """Create the tables if missing; refuse a schema newer than this code."""
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = tx.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.where} has schema version {version}; this code knows {SCHEMA_VERSION}"
            )
        if version < 1:
            self._run_ddl(tx, self.SCHEMA)
            tx.execute("INSERT INTO schema_version (version) VALUES (1)")
            version = 1
        for step in range(version + 1, SCHEMA_VERSION + 1):  # each step keeps the data
            self._run_ddl(tx, self.MIGRATIONS[step])
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (step,))

    @staticmethod
    def _run_ddl(tx: Transaction, ddl: str) -> None:
        for statement in ddl.split(";"):
            if statement.strip():
                tx.execute(statement)

    def schema_version(self) -> int:
        """The schema version stored."""
        return self._read(
            lambda tx: tx.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        )


__all__ = ["HISTORY", "MAX_AMOUNT", "SCHEMA_VERSION", "SqlLedger", "SqlStore", "Transaction"]
