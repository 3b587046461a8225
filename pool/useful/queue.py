"""The useful-work queue: customers' items, their units, leases and held shares (SQLite).

An **item** is one customer product ``A·B``; it is cut into **units**
(:func:`protocol.useful.plan_product`), each an mmpow-1 blob workload whose operands are
in the :class:`~pool.useful.blobstore.BlobStore`. Unit states: ``queued`` → ``running``
(leased) → ``done`` (result verified) or back to ``queued`` (worker gone, deadline
missed, wrong result); ``failed`` after ``max_attempts`` wrong results, which fails the
item. Item states: ``queued``, ``running``, ``done`` (product assembled), ``failed``.
Lease states: ``active`` → ``delivered`` (the whole result is in and being judged: no
more shares are held, the session may take another unit) → ``verified`` or ``rejected``;
or ``released`` (disconnect, restart) / ``expired`` (deadline; active leases only).

A **lease** gives one unit to one session until a deadline. A session holds at most one
active lease: :meth:`WorkQueue.lease` returns it again while it lasts, so each new job of
the session (new block, vardiff) continues the same unit. The pool records which jobs
belong to a lease (:meth:`attach_job`) and **holds** the shares mined on them
(:meth:`hold_share`); :meth:`complete` hands the held shares back for crediting,
:meth:`reject`, :meth:`release_session` and :meth:`expire` hand them back voided. The
pool credits a verified lease's held shares (:meth:`held_shares`) *before* it calls
:meth:`complete`, so a crash in between never loses an acknowledged share: the restart
releases the lease (the unit is computed again) and the ledger ignores a share twice.

Everything is in one SQLite file (WAL) in the pool's data dir, so a restart loses no
queued unit, verified result or held share. At start, leases of the previous process
are released (their sessions are gone). Synchronous: call it through
``trio.to_thread.run_sync``; a lock makes it safe from several threads.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pool.useful import UNIT_STATES, UsefulConfig
from pool.useful.blobstore import BlobInfo, BlobStore
from protocol.errors import ProtocolError
from protocol.messages import BlobSource, WorkSpec
from protocol.useful import (
    ProductPlan,
    UnitPlan,
    check_operands,
    plan_product,
    unit_id,
    unit_operands,
)
from protocol.workload import Shape

SCHEMA = """
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

LEASE_STATES = ("active", "delivered", "released", "expired", "verified", "rejected")
OPEN_STATES = ("active", "delivered")
"""Leases whose unit is still with its session: released on disconnect and restart."""


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
        return WorkSpec(s.m, s.n, s.k, s.r, self.a_root, self.b_root,
                        BlobSource(self.a_blob, self.b_blob))


@dataclass(frozen=True)
class Lease:
    """A unit handed to a session until ``deadline`` (wall-clock seconds)."""

    id: int
    session: str
    deadline: float
    state: str
    unit: Unit


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
            "id": self.id, "state": self.state, "shape": {"m": self.m, "k": self.k, "n": self.n},
            "r": self.r, "units": self.units, "unit_states": self.unit_states,
            "progress": round(self.progress, 6), "created": self.created,
            "finished": self.finished, "error": self.error,
            "result": self.result_blob is not None,
        }


class WorkQueue:
    """Items, units, leases and held shares in SQLite at ``path``."""

    def __init__(
        self, path: str | Path, blobs: BlobStore, config: UsefulConfig | None = None, *,
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self.recovered = self._release_where("state IN ('active', 'delivered')", (),
                                             "released", "restart")
        self._units_changed()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _units_changed(self) -> None:
        if self._on_units_changed is not None:
            self._on_units_changed(self.unit_counts())

    # --- customers ------------------------------------------------------------------

    def submit(self, customer: str, a: np.ndarray, b: np.ndarray) -> ItemStatus:
        """Queue the product ``a (m×k) · b (k×n)`` for ``customer``; returns its status.

        Raises :class:`WorkInputError` for operands that are not a valid product and
        :class:`WorkLimitError` when it breaks a size or count limit. CPU work (row
        hashing, blob writes): call it in a worker thread.
        """
        try:
            check_operands(a, b)
        except ProtocolError as exc:
            raise WorkInputError(str(exc)) from None
        (m, k), n = a.shape, b.shape[1]
        plan = self.admit(customer, m, k, n)
        operand_bytes = a.nbytes + b.nbytes

        bt = b.T  # a view: each unit copies its own columns, B is never copied whole
        a_blobs: dict[int, BlobInfo] = {}
        b_blobs: dict[int, BlobInfo] = {}
        rows = []
        for unit in plan.units:
            if unit.row0 not in a_blobs or unit.col0 not in b_blobs:
                ua, ub = unit_operands(a, bt, unit)
                if unit.row0 not in a_blobs:
                    a_blobs[unit.row0] = self.blobs.put_matrix(ua)
                if unit.col0 not in b_blobs:
                    b_blobs[unit.col0] = self.blobs.put_matrix(ub)
                del ua, ub
            ai, bi = a_blobs[unit.row0], b_blobs[unit.col0]
            s = unit.shape
            rows.append((unit.index, unit_id(s, ai.rows_root, bi.rows_root), unit.row0,
                         unit.rows, unit.col0, unit.cols, unit.k, s.m, s.n, s.k, s.r,
                         ai.blob_id, bi.blob_id, ai.rows_root, bi.rows_root))
        item_id = secrets.token_hex(12)
        now = self.clock()
        with self._tx() as db:
            self._check_customer(customer, operand_bytes, db)  # again, inside the transaction
            db.execute(
                "INSERT INTO items (id, customer, m, n, k, r, state, units, operand_bytes, "
                "created) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (item_id, customer, m, n, k, plan.r, len(rows), operand_bytes, now),
            )
            db.executemany(
                "INSERT INTO units (item, idx, unit_id, row0, rows, col0, cols, k_real, m, n, "
                "k, r, a_blob, b_blob, a_root, b_root, state) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
                [(item_id, *row) for row in rows],
            )
        self._units_changed()
        return self.status(item_id)

    def admit(self, customer: str, m: int, k: int, n: int) -> ProductPlan:
        """The plan of ``A (m×k) · B (k×n)`` if ``customer`` may submit it now.

        Raises :class:`WorkLimitError` for a size or count limit, as :meth:`submit` does,
        so the work API can refuse an upload from its headers, before its body.
        """
        cfg = self.config
        for name, value in (("m", m), ("n", n)):
            if value > cfg.max_dim:
                raise WorkLimitError(f"{name} = {value} is over the limit of {cfg.max_dim}")
        operand_bytes = m * k + k * n
        if operand_bytes > cfg.max_upload_bytes:
            raise WorkLimitError(
                f"A and B are {operand_bytes} bytes, over the limit of {cfg.max_upload_bytes}"
            )
        try:
            plan = plan_product(m, n, k, r=cfg.r, unit_m=cfg.unit_m, unit_n=cfg.unit_n)
        except ProtocolError as exc:
            raise WorkLimitError(str(exc)) from None
        if plan.k_padded > cfg.max_k:
            raise WorkLimitError(f"k = {k} (padded {plan.k_padded}) is over the limit {cfg.max_k}")
        self._check_customer(customer, operand_bytes)
        return plan

    def _check_customer(self, customer: str, operand_bytes: int,
                        db: sqlite3.Connection | None = None) -> None:
        cfg = self.config
        query = ("SELECT COUNT(*), COALESCE(SUM(operand_bytes), 0) FROM items "
                 "WHERE customer = ? AND state IN ('queued', 'running')")
        if db is None:
            with self._lock:
                count, queued = self._db.execute(query, (customer,)).fetchone()
        else:
            count, queued = db.execute(query, (customer,)).fetchone()
        if count >= cfg.max_active_items:
            raise WorkLimitError(
                f"{count} unfinished items, the limit per customer is {cfg.max_active_items}; "
                "wait for one to finish", http_status=429,
            )
        if queued + operand_bytes > cfg.max_queued_bytes:
            raise WorkLimitError(
                f"unfinished items hold {queued} bytes; {operand_bytes} more would pass the "
                f"limit of {cfg.max_queued_bytes} per customer", http_status=429,
            )

    def status(self, item_id: str, customer: str | None = None) -> ItemStatus:
        """The status of ``item_id``; with ``customer``, only if it is theirs."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, customer, state, m, n, k, r, created, finished, error, result_blob "
                "FROM items WHERE id = ?", (item_id,),
            ).fetchone()
            if row is None or (customer is not None and row[1] != customer):
                raise WorkNotFound(f"no work item {item_id!r:.40}")
            counts = dict.fromkeys(UNIT_STATES, 0)
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM units WHERE item = ? GROUP BY state", (item_id,)
            ):
                counts[state] = count
        return ItemStatus(*row, unit_states=counts)

    def units(self, item_id: str) -> list[Unit]:
        """Every unit of an item, in index order."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_UNIT_COLUMNS} FROM units WHERE item = ? ORDER BY idx", (item_id,)
            ).fetchall()
        return [_unit(row) for row in rows]

    def unit(self, key: int) -> Unit:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_UNIT_COLUMNS} FROM units WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            raise WorkNotFound(f"no unit {key}")
        return _unit(row)

    def finish_item(self, item_id: str, result_blob: bytes) -> None:
        """Record the assembled product of an item whose units are all verified."""
        with self._tx() as db:
            left = db.execute(
                "SELECT COUNT(*) FROM units WHERE item = ? AND state != 'done'", (item_id,)
            ).fetchone()[0]
            if left:
                raise WorkError(f"item {item_id} still has {left} units without a result")
            db.execute(
                "UPDATE items SET state = 'done', finished = ?, result_blob = ? WHERE id = ?",
                (self.clock(), result_blob, item_id),
            )

    def items_to_assemble(self) -> list[str]:
        """Items whose units are all verified but whose product is not assembled yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.id FROM items i WHERE i.state = 'running' AND NOT EXISTS "
                "(SELECT 1 FROM units u WHERE u.item = i.id AND u.state != 'done')"
            ).fetchall()
        return [r[0] for r in rows]

    def referenced_blobs(self) -> set[bytes]:
        """Every blob an item still needs (operands of unfinished units, results).

        A queued or leased unit keeps its operands even when its item has failed: a
        session may still be mining it (its lease ends on its own).
        """
        with self._lock:
            keep = {r[0] for r in self._db.execute(
                "SELECT result_blob FROM items WHERE result_blob IS NOT NULL")}
            for a, b, c in self._db.execute(
                "SELECT u.a_blob, u.b_blob, u.result_blob FROM units u JOIN items i "
                "ON u.item = i.id WHERE i.state IN ('queued', 'running') "
                "OR u.state IN ('queued', 'running')"
            ):
                keep.update(x for x in (a, b, c) if x is not None)
        return keep

    def prune_finished(self, before: float) -> int:
        """Forget items finished (done or failed) before ``before``, with their units,
        leases and held shares, once no unit of theirs is still queued or leased; returns
        the number of items forgotten (their blobs go at the next :meth:`BlobStore.collect`)."""
        gone_items = ("SELECT id FROM items i WHERE state IN ('done', 'failed') AND finished < ?"
                      " AND NOT EXISTS (SELECT 1 FROM units u WHERE u.item = i.id"
                      " AND u.state IN ('queued', 'running'))")
        units = f"SELECT key FROM units WHERE item IN ({gone_items})"
        leases = f"SELECT id FROM leases WHERE unit IN ({units})"
        with self._tx() as db:
            ids = [r[0] for r in db.execute(gone_items, (before,))]
            if not ids:
                return 0
            db.execute(f"DELETE FROM held_shares WHERE lease IN ({leases})", (before,))
            db.execute(f"DELETE FROM lease_jobs WHERE lease IN ({leases})", (before,))
            db.execute(f"DELETE FROM leases WHERE unit IN ({units})", (before,))
            db.execute(f"DELETE FROM units WHERE item IN ({gone_items})", (before,))
            db.execute(f"DELETE FROM items WHERE id IN ({gone_items})", (before,))
        return len(ids)

    def item_count(self) -> int:
        """Items remembered (for ``matmine_pool_work_item_rows``)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def unit_counts(self) -> dict[str, int]:
        """Units by state, over all items (for ``matmine_pool_work_units{state}``)."""
        counts = dict.fromkeys(UNIT_STATES, 0)
        with self._lock:
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM units GROUP BY state"
            ):
                counts[state] = count
        return counts

    # --- sessions -------------------------------------------------------------------

    def lease(self, session: str) -> Lease | None:
        """The session's active lease, or a new one on the oldest queued unit; None if idle.

        A unit is not leased again to a session whose result for it was rejected. A
        delivered lease is not active: its session gets another unit.
        """
        self.expire()
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM leases WHERE session = ? AND state = 'active'", (session,)
            ).fetchone()
            if row is not None:
                return self._lease(db, row[0])  # continued: the unit counts did not change
            unit = db.execute(
                "SELECT u.key, u.item FROM units u WHERE u.state = 'queued' AND NOT EXISTS "
                "(SELECT 1 FROM leases l WHERE l.unit = u.key AND l.session = ? "
                "AND l.state = 'rejected') ORDER BY u.key LIMIT 1", (session,),
            ).fetchone()
            if unit is None:
                return None
            key, item = unit
            lease_id = db.execute(
                "INSERT INTO leases (unit, session, created, deadline, state) "
                "VALUES (?, ?, ?, ?, 'active')",
                (key, session, now, now + self.config.lease_seconds),
            ).lastrowid
            db.execute("UPDATE units SET state = 'running' WHERE key = ?", (key,))
            db.execute(
                "UPDATE items SET state = 'running' WHERE id = ? AND state = 'queued'",
                (item,),
            )
            lease = self._lease(db, lease_id)
        self._units_changed()
        return lease

    def get_lease(self, lease_id: int) -> Lease:
        with self._lock:
            return self._lease(self._db, lease_id)

    def attach_job(self, lease_id: int, session: str, job_id: str) -> None:
        """Record that ``job_id`` of ``session`` mines the unit of ``lease_id``."""
        with self._tx() as db:
            lease = self._lease(db, lease_id)
            if lease.session != session or lease.state != "active":
                raise LeaseError(f"lease {lease_id} is not an active lease of this session")
            db.execute(
                "INSERT OR REPLACE INTO lease_jobs (session, job_id, lease) VALUES (?, ?, ?)",
                (session, job_id, lease_id),
            )

    def lease_of_job(self, session: str, job_id: str) -> Lease | None:
        """The lease (in any state) a job of ``session`` was made for; None: not useful work."""
        with self._lock:
            row = self._db.execute(
                "SELECT lease FROM lease_jobs WHERE session = ? AND job_id = ?",
                (session, job_id),
            ).fetchone()
            return None if row is None else self._lease(self._db, row[0])

    def hold_share(self, lease_id: int, share: Any) -> bool:
        """Keep a JSON-able share record until the lease's result is judged.

        Returns False (nothing held) when the lease is no longer active: the share is
        then stale and must not be credited.
        """
        text = json.dumps(share, sort_keys=True)
        with self._tx() as db:
            state = db.execute("SELECT state FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if state is None or state[0] != "active":
                return False
            db.execute("INSERT INTO held_shares (lease, share) VALUES (?, ?)", (lease_id, text))
        return True

    def deliver(self, lease_id: int) -> Lease:
        """The lease's whole result is in: hold no more shares for it (they are stale) and
        let its session lease another unit, while the result is judged.

        Raises :class:`LeaseError` if the lease is not active.
        """
        with self._tx() as db:
            lease = self._active(db, lease_id)
            db.execute("UPDATE leases SET state = 'delivered' WHERE id = ?", (lease_id,))
            return Lease(lease.id, lease.session, lease.deadline, "delivered", lease.unit)

    def held_shares(self, lease_id: int) -> list[Any]:
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute(
                "SELECT share FROM held_shares WHERE lease = ? ORDER BY id", (lease_id,))]

    def complete(self, lease_id: int, result_blob: bytes) -> LeaseEnd:
        """The lease's result verified: the unit is done; returns the shares to credit.

        Call it after storing the result blob and crediting :meth:`held_shares`. Raises
        :class:`LeaseError` if the lease is not active or delivered any more (its shares
        were already voided).
        """
        now = self.clock()
        with self._tx() as db:
            lease = self._open(db, lease_id)
            db.execute(
                "UPDATE units SET state = 'done', result_blob = ? WHERE key = ?",
                (result_blob, lease.unit.key),
            )
            shares = self._end(db, lease, "verified", now, None)
            left = db.execute(
                "SELECT COUNT(*) FROM units WHERE item = ? AND state != 'done'",
                (lease.unit.item,),
            ).fetchone()[0]
        self._units_changed()
        return LeaseEnd(lease, "verified", shares, "done", item_done=left == 0)

    def reject(self, lease_id: int, reason: str) -> LeaseEnd:
        """The lease's result was wrong: void its shares, re-queue (or fail) the unit."""
        now = self.clock()
        with self._tx() as db:
            lease = self._open(db, lease_id)
            attempts = lease.unit.attempts + 1
            unit_state = "failed" if attempts >= self.config.max_attempts else "queued"
            db.execute("UPDATE units SET state = ?, attempts = ? WHERE key = ?",
                       (unit_state, attempts, lease.unit.key))
            if unit_state == "failed":
                db.execute(
                    "UPDATE items SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                    (now, f"unit {lease.unit.plan.index} failed {attempts} checks; last: "
                     f"{reason}", lease.unit.item),
                )
                db.execute(
                    "UPDATE units SET state = 'failed' WHERE item = ? AND state = 'queued'",
                    (lease.unit.item,),
                )
            shares = self._end(db, lease, "rejected", now, reason)
        self._units_changed()
        return LeaseEnd(lease, "rejected", shares, unit_state)

    def release_session(self, session: str) -> list[LeaseEnd]:
        """The session disconnected: its active lease ends, the unit goes back to the queue."""
        ends = self._release_where("state IN ('active', 'delivered') AND session = ?",
                                   (session,), "released", "disconnected")
        self._units_changed()
        return ends

    def expire(self) -> list[LeaseEnd]:
        """End every active lease past its deadline; their units go back to the queue."""
        ends = self._release_where("state = 'active' AND deadline < ?", (self.clock(),),
                                   "expired", "deadline passed")
        if ends:
            self._units_changed()
        return ends

    def next_deadline(self) -> float | None:
        """The earliest deadline of an active lease (when to call :meth:`expire` next)."""
        with self._lock:
            return self._db.execute(
                "SELECT MIN(deadline) FROM leases WHERE state = 'active'").fetchone()[0]

    # --- internals ------------------------------------------------------------------

    def _release_where(self, where: str, args: tuple, state: str, reason: str
                       ) -> list[LeaseEnd]:
        now = self.clock()
        ends = []
        with self._tx() as db:
            ids = [r[0] for r in db.execute(f"SELECT id FROM leases WHERE {where}", args)]
            for lease_id in ids:
                lease = self._lease(db, lease_id)
                db.execute("UPDATE units SET state = 'queued' WHERE key = ? AND state = 'running'",
                           (lease.unit.key,))
                ends.append(LeaseEnd(lease, state, self._end(db, lease, state, now, reason)))
        return ends

    def _end(self, db: sqlite3.Connection, lease: Lease, state: str, now: float,
             reason: str | None) -> list[Any]:
        db.execute("UPDATE leases SET state = ?, ended = ?, reason = ? WHERE id = ?",
                   (state, now, reason, lease.id))
        shares = [json.loads(r[0]) for r in db.execute(
            "SELECT share FROM held_shares WHERE lease = ? ORDER BY id", (lease.id,))]
        db.execute("DELETE FROM held_shares WHERE lease = ?", (lease.id,))
        return shares

    def _active(self, db: sqlite3.Connection, lease_id: int) -> Lease:
        lease = self._lease(db, lease_id)
        if lease.state != "active":
            raise LeaseError(f"lease {lease_id} is {lease.state}, not active")
        return lease

    def _open(self, db: sqlite3.Connection, lease_id: int) -> Lease:
        lease = self._lease(db, lease_id)
        if lease.state not in OPEN_STATES:
            raise LeaseError(f"lease {lease_id} is {lease.state}, not active")
        return lease

    def _lease(self, db: sqlite3.Connection, lease_id: int) -> Lease:
        row = db.execute(
            "SELECT id, session, deadline, state, unit FROM leases WHERE id = ?", (lease_id,)
        ).fetchone()
        if row is None:
            raise LeaseError(f"no lease {lease_id}")
        unit = db.execute(f"SELECT {_UNIT_COLUMNS} FROM units WHERE key = ?",
                          (row[4],)).fetchone()
        return Lease(row[0], row[1], row[2], row[3], _unit(unit))


_UNIT_COLUMNS = ("key, item, idx, row0, rows, col0, cols, k_real, m, n, k, r, unit_id, "
                 "a_blob, b_blob, a_root, b_root, state, attempts, result_blob")


def _unit(row: tuple) -> Unit:
    (key, item, idx, row0, rows, col0, cols, k_real, m, n, k, r, uid, a_blob, b_blob,
     a_root, b_root, state, attempts, result_blob) = row
    plan = UnitPlan(idx, row0, rows, col0, cols, k_real, Shape(m, n, k, r))
    return Unit(key, item, plan, uid, a_blob, b_blob, a_root, b_root, state, attempts,
                result_blob)
