"""The useful-work queue: customers' items, their units, leases and held shares (SQLite).

An **item** is one customer product ``A·B``; it is cut into **units**
(:func:`protocol.useful.plan_product`), each an mmpow-1 blob workload whose operands are
in the :class:`~pool.useful.blobstore.BlobStore`. Unit states: ``queued`` → ``running``
(leased) → ``done`` (result verified) or back to ``queued`` (worker gone, deadline
missed, wrong result); ``failed`` after ``max_attempts`` wrong results, which fails the
item. Item states: ``queued``, ``running``, ``done`` (product assembled), ``failed``.
Lease states: ``active`` → (``uploading``: its HTTP result upload started, it mines no
more, the session may take another unit) → ``delivered`` (the whole result is in and being
judged: no more shares are held, the session may take another unit) → ``verified`` or
``rejected``; or ``released`` (disconnect, restart) / ``expired`` (deadline; active or
uploading leases).

A **lease** gives one unit to one session until a deadline. A session holds at most one
active lease: :meth:`WorkQueue.lease` returns it again while it lasts, so each new job of
the session (new block, vardiff) continues the same unit. The pool records which jobs
belong to a lease (:meth:`attach_job`) and **holds** the shares mined on them
(:meth:`hold_share`); :meth:`complete` hands the held shares back for crediting,
:meth:`reject`, :meth:`release_session` and :meth:`expire` hand them back voided. The
pool credits a verified lease's held shares (:meth:`held_shares`) *before* it calls
:meth:`complete`, so a crash in between never loses an acknowledged share: the restart
releases the lease (the unit is computed again) and the ledger ignores a share twice.

The queue is five files: the model and its SQLite file (:mod:`pool.useful.queue_model`),
the customer side (:mod:`pool.useful.queue_items`), registered operands
(:mod:`pool.useful.queue_operands`), the lease side (:mod:`pool.useful.queue_leases`:
which unit suits a session, by the blobs it holds) and cutting a unit at lease time
(:mod:`pool.useful.queue_split`); :class:`WorkQueue` is them together.

Everything is in one SQLite file (WAL) in the pool's data dir, so a restart loses no
queued unit, verified result or held share. At start, leases of the previous process
are released (their sessions are gone). Synchronous: call it through
``trio.to_thread.run_sync``; a lock makes it safe from several threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pool.useful import UsefulConfig
from pool.useful.blobstore import BlobStore
from pool.useful.queue_items import ItemSide
from pool.useful.queue_leases import LeaseSide
from pool.useful.queue_model import (
    LEASE_STATES,
    OPEN_STATES,
    ItemStatus,
    Lease,
    LeaseChoice,
    LeaseEnd,
    LeaseError,
    Unit,
    WorkError,
    WorkInputError,
    WorkLimitError,
    WorkNotFound,
)
from pool.useful.queue_operands import OperandInfo, OperandSide

__all__ = [
    "LEASE_STATES",
    "OPEN_STATES",
    "ItemStatus",
    "Lease",
    "LeaseChoice",
    "LeaseEnd",
    "LeaseError",
    "OperandInfo",
    "Unit",
    "WorkError",
    "WorkInputError",
    "WorkLimitError",
    "WorkNotFound",
    "WorkQueue",
]


class WorkQueue(ItemSide, LeaseSide, OperandSide):
    """Items, units, leases and held shares in SQLite at ``path``.

    Opening releases the leases of the previous process (``recovered``: their ends).
    """

    def __init__(
        self,
        path: str | Path,
        blobs: BlobStore,
        config: UsefulConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_units_changed: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        super().__init__(path, blobs, config, clock=clock, on_units_changed=on_units_changed)
        self.recovered = self._release_where(
            "state IN ('active', 'uploading', 'delivered')", (), "released", "restart"
        )
        self._units_changed()

    def submit_on_operand(self, customer: str, a: np.ndarray, operand_id: bytes) -> ItemStatus:
        """Queue ``a · B`` where B is ``customer``'s registered operand ``operand_id``."""
        b = self.operand_matrix(customer, operand_id)
        return self.submit(customer, a, b, b_operand=operand_id)

    def referenced_blobs(self) -> set[bytes]:
        """Every blob still needed: the items' (units, results) and registered operands."""
        return super().referenced_blobs() | self.operand_blobs()
