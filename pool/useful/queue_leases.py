"""The lease side of the useful-work queue: units leased to sessions, their held shares.

A session leases a unit (:meth:`LeaseSide.lease`), its jobs are attached to the lease,
the shares mined on them are held until the result is judged, and the lease ends
verified (:meth:`~LeaseSide.complete`), rejected, released or expired.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from pool.useful.queue_model import (
    OPEN_STATES,
    UNIT_COLUMNS,
    Lease,
    LeaseChoice,
    LeaseEnd,
    LeaseError,
    Unit,
    unit_from_row,
)
from pool.useful.queue_split import SplitSide
from protocol.workload import TILE

PICK_CANDIDATES = 512
"""Queued units (oldest first) a lease chooses among."""


class LeaseSide(SplitSide):
    """Leases of units to sessions and the shares held on them."""

    def lease(self, session: str, choice: LeaseChoice | None = None) -> Lease | None:
        """The session's active lease, or a new one on a queued unit; None if idle.

        A unit is not leased again to a session whose result for it was rejected. A
        delivered lease is not active: its session gets another unit. ``choice`` says
        which unit suits the session (:meth:`lease_or_wait`).
        """
        got = self.lease_or_wait(session, choice or LeaseChoice())
        return got if isinstance(got, Lease) else None

    def lease_or_wait(self, session: str, choice: LeaseChoice) -> Lease | float | None:
        """As :meth:`lease`, choosing by ``choice``: a unit whose blobs the session holds
        first, then one no other connected session holds, then (once it has waited
        ``affinity_seconds`` since it was queued) any. Returns the lease, or the time at
        which a unit held back for another session becomes free, or None (nothing queued).
        A unit longer than ``choice.rows`` is cut first (its head is leased)."""
        self.expire()
        for _ in range(3):  # a unit taken by another session meanwhile: choose again
            with self._tx() as db:
                row = db.execute(
                    "SELECT id FROM leases WHERE session = ? AND state = 'active'", (session,)
                ).fetchone()
                if row is not None:
                    return self._lease(db, row[0])  # continued: the unit counts did not change
                picked = self._pick(db, session, choice)
                rows = self._cut_rows(db, picked, choice) if isinstance(picked, Unit) else 0
            if not isinstance(picked, Unit):
                return picked
            cut = rows < picked.plan.rows and picked.key != choice.reserved
            if cut and not self.split_unit(picked, rows):
                continue  # cut or leased meanwhile (another session's choice): choose again
            lease = self._lease_unit(session, picked.key)
            if lease is not None:
                self._units_changed()
                return lease
        return None

    def _pick(
        self, db: sqlite3.Connection, session: str, choice: LeaseChoice
    ) -> Unit | float | None:
        rows = db.execute(
            f"SELECT {UNIT_COLUMNS}, queued_since FROM units u WHERE u.state = 'queued' AND "
            "NOT EXISTS (SELECT 1 FROM leases l WHERE l.unit = u.key AND l.session = ? "
            "AND l.state = 'rejected') ORDER BY u.key LIMIT ?",
            (session, PICK_CANDIDATES),
        ).fetchall()
        units = [(unit_from_row(r[:-1]), float(r[-1])) for r in rows]
        for unit, _ in units:
            if unit.key == choice.reserved:
                return unit
        for unit, _ in units:
            allowed = choice.take_excluded or unit.key not in choice.exclude
            if allowed and (unit.a_blob in choice.held or unit.b_blob in choice.held):
                return unit
        # units reserved for other sessions last: an idle session takes one rather than wait
        units.sort(key=lambda pair: pair[0].key in choice.exclude)
        if not choice.take_excluded:
            units = [(u, since) for u, since in units if u.key not in choice.exclude]
        if not units:
            return None
        now = self.clock()
        free_at: float | None = None
        for unit, since in units:
            waits = self._affinity_wait(db, unit, since, choice)
            if waits <= now:
                return unit
            free_at = waits if free_at is None else min(free_at, waits)
        return free_at

    @staticmethod
    def _cut_rows(db: sqlite3.Connection, unit: Unit, choice: LeaseChoice) -> int:
        """Rows ``unit`` should have for this choice (its own rows or more: not cut):
        ``choice.rows``, and at most half of its rows, not below ``choice.tail_rows``, when
        no other unit is queued (the queue's last unit: its result should upload quickly)."""
        rows = unit.plan.rows
        if choice.rows is not None and (wanted := choice.rows(unit.plan)) < rows:
            rows = max(TILE, wanted // TILE * TILE)
        if choice.tail_rows <= 0 or unit.plan.rows <= choice.tail_rows:
            return rows
        others = db.execute(
            "SELECT 1 FROM units WHERE state = 'queued' AND key != ? LIMIT 1", (unit.key,)
        ).fetchone()
        if others is not None:
            return rows
        return min(rows, max(choice.tail_rows, unit.plan.rows // 2 // TILE * TILE))

    @staticmethod
    def _affinity_wait(
        db: sqlite3.Connection, unit: Unit, queued_since: float, choice: LeaseChoice
    ) -> float:
        """Until when ``unit`` waits for the idle sessions that hold its blobs (0: none)."""
        holders = {**choice.others.get(unit.a_blob, {}), **choice.others.get(unit.b_blob, {})}
        if not holders:
            return 0.0
        barred = {
            r[0]
            for r in db.execute(
                "SELECT session FROM leases WHERE unit = ? AND state = 'rejected'", (unit.key,)
            )
        }
        waits = [
            max(queued_since, since) + choice.affinity_seconds
            for session, since in holders.items()
            if session not in barred
        ]
        return max(waits, default=0.0)

    def reservable(self, session: str, choice: LeaseChoice) -> Unit | None:
        """A queued unit to reserve for ``session`` next (chosen and cut as a lease is),
        left queued; None when none suits it now."""
        with self._tx() as db:
            picked = self._pick(db, session, choice)
            rows = self._cut_rows(db, picked, choice) if isinstance(picked, Unit) else 0
        if not isinstance(picked, Unit):
            return None
        if rows < picked.plan.rows:
            if not self.split_unit(picked, rows):
                return None  # cut or leased meanwhile: reserve at the next lease instead
            with self._lock:
                row = self._db.execute(
                    f"SELECT {UNIT_COLUMNS} FROM units WHERE key = ?", (picked.key,)
                ).fetchone()
            picked = unit_from_row(row)
        return picked

    def start_upload(self, lease_id: int) -> Lease:
        """The result upload of active lease ``lease_id`` started: it mines no more (its
        shares are stale, its session leases its next unit) and stays open for the upload
        until delivered or its deadline. Raises :class:`LeaseError` if it is not active or
        its session has another lease still uploading."""
        with self._tx() as db:
            lease = self._active(db, lease_id)
            other = db.execute(
                "SELECT id FROM leases WHERE session = ? AND state = 'uploading'",
                (lease.session,),
            ).fetchone()
            if other is not None:
                raise LeaseError(
                    f"the result of lease {other[0]} of this session is still uploading"
                )
            db.execute("UPDATE leases SET state = 'uploading' WHERE id = ?", (lease_id,))
            return Lease(lease.id, lease.session, lease.deadline, "uploading", lease.unit)

    def _lease_unit(self, session: str, key: int) -> Lease | None:
        """A new lease of unit ``key`` to ``session`` if the unit is still queued."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT item FROM units WHERE key = ? AND state = 'queued'", (key,)
            ).fetchone()
            if row is None:
                return None
            lease_id = db.execute(
                "INSERT INTO leases (unit, session, created, deadline, state) "
                "VALUES (?, ?, ?, ?, 'active')",
                (key, session, now, now + self.config.lease_seconds),
            ).lastrowid
            assert lease_id is not None
            db.execute("UPDATE units SET state = 'running' WHERE key = ?", (key,))
            db.execute(
                "UPDATE items SET state = 'running' WHERE id = ? AND state = 'queued'",
                (row[0],),
            )
            return self._lease(db, lease_id)

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

        Raises :class:`LeaseError` if the lease is neither active nor uploading.
        """
        with self._tx() as db:
            lease = self._lease(db, lease_id)
            if lease.state not in ("active", "uploading"):
                raise LeaseError(f"lease {lease_id} is {lease.state}, not active")
            db.execute("UPDATE leases SET state = 'delivered' WHERE id = ?", (lease_id,))
            return Lease(lease.id, lease.session, lease.deadline, "delivered", lease.unit)

    def held_shares(self, lease_id: int) -> list[Any]:
        with self._lock:
            return [
                json.loads(r[0])
                for r in self._db.execute(
                    "SELECT share FROM held_shares WHERE lease = ? ORDER BY id", (lease_id,)
                )
            ]

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
            db.execute(
                "UPDATE units SET state = ?, attempts = ?, queued_since = ? WHERE key = ?",
                (unit_state, attempts, now, lease.unit.key),
            )
            if unit_state == "failed":
                db.execute(
                    "UPDATE items SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                    (
                        now,
                        f"unit {lease.unit.plan.index} failed {attempts} checks; last: {reason}",
                        lease.unit.item,
                    ),
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
        ends = self._release_where(
            "state IN ('active', 'uploading', 'delivered') AND session = ?",
            (session,),
            "released",
            "disconnected",
        )
        self._units_changed()
        return ends

    def expire(self) -> list[LeaseEnd]:
        """End every active lease past its deadline; their units go back to the queue."""
        ends = self._release_where(
            "state IN ('active', 'uploading') AND deadline < ?",
            (self.clock(),),
            "expired",
            "deadline passed",
        )
        if ends:
            self._units_changed()
        return ends

    def next_deadline(self) -> float | None:
        """The earliest deadline of an active lease (when to call :meth:`expire` next)."""
        with self._lock:
            return self._db.execute(
                "SELECT MIN(deadline) FROM leases WHERE state IN ('active', 'uploading')"
            ).fetchone()[0]

    # --- internals ------------------------------------------------------------------

    def _release_where(self, where: str, args: tuple, state: str, reason: str) -> list[LeaseEnd]:
        now = self.clock()
        ends = []
        with self._tx() as db:
            ids = [r[0] for r in db.execute(f"SELECT id FROM leases WHERE {where}", args)]
            for lease_id in ids:
                lease = self._lease(db, lease_id)
                db.execute(
                    "UPDATE units SET state = 'queued', queued_since = ? "
                    "WHERE key = ? AND state = 'running'",
                    (now, lease.unit.key),
                )
                ends.append(LeaseEnd(lease, state, self._end(db, lease, state, now, reason)))
        return ends

    def _end(
        self, db: sqlite3.Connection, lease: Lease, state: str, now: float, reason: str | None
    ) -> list[Any]:
        db.execute(
            "UPDATE leases SET state = ?, ended = ?, reason = ? WHERE id = ?",
            (state, now, reason, lease.id),
        )
        shares = [
            json.loads(r[0])
            for r in db.execute(
                "SELECT share FROM held_shares WHERE lease = ? ORDER BY id", (lease.id,)
            )
        ]
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
