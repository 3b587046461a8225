"""The useful-work queue's model: schema, states, errors, records and its SQLite file.

:class:`QueueDb` is what both sides of :class:`~pool.useful.queue.WorkQueue` share: the
one connection (:mod:`toolkit.sqlite`: WAL, ``synchronous=FULL``, versioned schema), its
lock and transactions, the unit counts, and reading a lease with its unit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.useful import UNIT_STATES, UsefulConfig
from pool.useful.blobstore import BlobStore
from protocol.messages import BlobSource, WorkSpec
from protocol.useful import UnitPlan
from protocol.workload import Shape
from toolkit.sqlite import open_store, transaction

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    m INTEGER NOT NULL, n INTEGER NOT NULL, k INTEGER NOT NULL, r INTEGER NOT NULL,
    state TEXT NOT NULL,
    units INTEGER NOT NULL,
    operand_bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    error TEXT,
    result_blob BLOB
);
CREATE INDEX IF NOT EXISTS items_customer ON items(customer, state);
CREATE TABLE IF NOT EXISTS units (
    key INTEGER PRIMARY KEY,
    item TEXT NOT NULL REFERENCES items(id),
    idx INTEGER NOT NULL,
    unit_id BLOB NOT NULL,
    row0 INTEGER NOT NULL, rows INTEGER NOT NULL,
    col0 INTEGER NOT NULL, cols INTEGER NOT NULL, k_real INTEGER NOT NULL,
    m INTEGER NOT NULL, n INTEGER NOT NULL, k INTEGER NOT NULL, r INTEGER NOT NULL,
    a_blob BLOB NOT NULL, b_blob BLOB NOT NULL, a_root BLOB NOT NULL, b_root BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result_blob BLOB,
    UNIQUE (item, idx)
);
CREATE INDEX IF NOT EXISTS units_state ON units(state, key);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    unit INTEGER NOT NULL REFERENCES units(key),
    session TEXT NOT NULL,
    created REAL NOT NULL,
    deadline REAL NOT NULL,
    state TEXT NOT NULL,
    ended REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS leases_state ON leases(state, deadline);
CREATE INDEX IF NOT EXISTS leases_unit ON leases(unit, session);
CREATE TABLE IF NOT EXISTS lease_jobs (
    session TEXT NOT NULL,
    job_id TEXT NOT NULL,
    lease INTEGER NOT NULL REFERENCES leases(id),
    PRIMARY KEY (session, job_id)
);
CREATE TABLE IF NOT EXISTS held_shares (
    id INTEGER PRIMARY KEY,
    lease INTEGER NOT NULL REFERENCES leases(id),
    share TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS held_shares_lease ON held_shares(lease);
"""
SCHEMA_V2 = """
CREATE TABLE operands (
    customer TEXT NOT NULL,
    id BLOB NOT NULL,
    k INTEGER NOT NULL, n INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (customer, id)
);
ALTER TABLE items ADD COLUMN b_operand BLOB;
ALTER TABLE units ADD COLUMN queued_since REAL NOT NULL DEFAULT 0;
"""
MIGRATIONS = [SCHEMA_V1, SCHEMA_V2]
"""Schema versions (:func:`toolkit.sqlite.migrate`); version 1 is the schema from before
versioning (``IF NOT EXISTS`` throughout), so a file made by older code opens as it is;
version 2 adds registered operands (``operands``, ``items.b_operand``) and when each unit
was last queued (``units.queued_since``, for affinity)."""

LEASE_STATES = (
    "active",
    "uploading",
    "delivered",
    "released",
    "expired",
    "verified",
    "rejected",
)
OPEN_STATES = ("active", "uploading", "delivered")
"""Leases whose unit is still with its session: released on disconnect and restart.
``uploading``: its result upload started, so it mines no more (SPEC §12.7, overlap)."""


class WorkError(Exception):
    """A request the queue refuses; ``http_status`` is what the work API answers."""

    http_status = 400


class WorkInputError(WorkError):
    """Operands that cannot be a product (shape, dtype, range)."""


class WorkLimitError(WorkError):
    """A customer limit: too large (413) or too many unfinished items (429)."""

    def __init__(self, message: str, http_status: int = 413) -> None:
        super().__init__(message)
        self.http_status = http_status


class WorkNotFound(WorkError):
    http_status = 404


class LeaseError(WorkError):
    """A lease that is not active (finished, released or expired) or not the caller's."""

    http_status = 409


@dataclass(frozen=True)
class Unit:
    """One unit as stored: where it sits in its item, its padded shape and operands."""

    key: int
    item: str
    plan: UnitPlan
    unit_id: bytes
    a_blob: bytes
    b_blob: bytes
    a_root: bytes
    b_root: bytes
    state: str
    attempts: int
    result_blob: bytes | None

    @property
    def shape(self) -> Shape:
        return self.plan.shape

    def work_spec(self) -> WorkSpec:
        """The ``work`` of a ``mining.notify`` for this unit (a blob workload)."""
        s = self.shape
        return WorkSpec(
            s.m, s.n, s.k, s.r, self.a_root, self.b_root, BlobSource(self.a_blob, self.b_blob)
        )


@dataclass(frozen=True)
class Lease:
    """A unit handed to a session until ``deadline`` (wall-clock seconds)."""

    id: int
    session: str
    deadline: float
    state: str
    unit: Unit


@dataclass(frozen=True)
class LeaseChoice:
    """Which queued unit suits a session (:meth:`~pool.useful.queue.WorkQueue.lease`).

    ``held``: operand blobs the session (or its miner) already fetched; ``others``: blobs
    other idle connected sessions hold (blob → {session: idle since}) — a unit on those
    waits for them ``affinity_seconds`` from when it was queued or they became idle,
    whichever is later, unless they may not lease it (their result for it was rejected);
    ``rows``: how many rows of A a unit should have for this session (a longer one is
    cut), None: as queued; ``tail_rows``: the last queued unit (no other is queued) is cut
    to half its rows, not below this (0: never), so the queue drains in ever smaller units
    and its last result is a short upload. ``reserved`` (SPEC §12.7, prefetch) goes first, as it is;
    ``exclude``d units go last, before the session idles (first if it holds their blobs).
    """

    reserved: int | None = None  # the unit reserved for the session: leased first
    exclude: frozenset[int] = frozenset()  # units reserved for others: taken last
    take_excluded: bool = True  # False: never (choosing a reservation)
    held: frozenset[bytes] = frozenset()
    others: Mapping[bytes, Mapping[str, float]] = field(default_factory=dict)
    affinity_seconds: float = 0.0
    rows: Callable[[UnitPlan], int] | None = None
    tail_rows: int = 0


@dataclass(frozen=True)
class LeaseEnd:
    """A lease that ended: its held shares, to credit (verified) or void (anything else)."""

    lease: Lease
    state: str
    shares: list[Any]
    unit_state: str = "queued"
    item_done: bool = False  # every unit of the item is now verified


@dataclass(frozen=True)
class ItemStatus:
    """What a customer sees of an item."""

    id: str
    customer: str
    state: str
    m: int
    n: int
    k: int
    r: int
    created: float
    finished: float | None
    error: str | None
    result_blob: bytes | None
    unit_states: dict[str, int] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return sum(self.unit_states.values())

    @property
    def progress(self) -> float:
        """Fraction of units verified."""
        return self.unit_states.get("done", 0) / self.units if self.units else 0.0

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "shape": {"m": self.m, "k": self.k, "n": self.n},
            "r": self.r,
            "units": self.units,
            "unit_states": self.unit_states,
            "progress": round(self.progress, 6),
            "created": self.created,
            "finished": self.finished,
            "error": self.error,
            "result": self.result_blob is not None,
        }


UNIT_COLUMNS = (
    "key, item, idx, row0, rows, col0, cols, k_real, m, n, k, r, unit_id, "
    "a_blob, b_blob, a_root, b_root, state, attempts, result_blob"
)


def unit_from_row(row: tuple) -> Unit:
    """A :class:`Unit` from a row of ``SELECT {UNIT_COLUMNS} FROM units``."""
    (
        key,
        item,
        idx,
        row0,
        rows,
        col0,
        cols,
        k_real,
        m,
        n,
        k,
        r,
        uid,
        a_blob,
        b_blob,
        a_root,
        b_root,
        state,
        attempts,
        result_blob,
    ) = row
    plan = UnitPlan(idx, row0, rows, col0, cols, k_real, Shape(m, n, k, r))
    return Unit(key, item, plan, uid, a_blob, b_blob, a_root, b_root, state, attempts, result_blob)


class QueueDb:
    """The queue's SQLite file at ``path`` (created or migrated on opening)."""

    def __init__(
        self,
        path: str | Path,
        blobs: BlobStore,
        config: UsefulConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_units_changed: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.blobs = blobs
        self.config = config or UsefulConfig()
        self.config.validate()
        self.clock = clock
        self._on_units_changed = on_units_changed
        self._lock = threading.Lock()
        self._db = open_store(self.path, MIGRATIONS, synchronous="FULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    def _units_changed(self) -> None:
        if self._on_units_changed is not None:
            self._on_units_changed(self.unit_counts())

    def unit_counts(self) -> dict[str, int]:
        """Units by state, over all items (for ``matmine_pool_work_units{state}``)."""
        counts = dict.fromkeys(UNIT_STATES, 0)
        with self._lock:
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM units GROUP BY state"
            ):
                counts[state] = count
        return counts

    def _lease(self, db: sqlite3.Connection, lease_id: int) -> Lease:
        row = db.execute(
            "SELECT id, session, deadline, state, unit FROM leases WHERE id = ?", (lease_id,)
        ).fetchone()
        if row is None:
            raise LeaseError(f"no lease {lease_id}")
        unit = db.execute(f"SELECT {UNIT_COLUMNS} FROM units WHERE key = ?", (row[4],)).fetchone()
        return Lease(row[0], row[1], row[2], row[3], unit_from_row(unit))
