"""Units reserved for a session to lease next (SPEC §12.7, prefetch and overlap).

While a session mines a unit over the data plane, the pool reserves it one more queued
unit: the session's jobs name it (``next``: its blobs and the reservation's token, which
authorizes only their ``GET``) so the miner fetches them while it computes. When the lease
stops mining, the session leases the reserved unit first and that lease keeps the
reservation's token. A reservation is not a lease: no deadline, no shares; it is dropped
when the session leaves, when another session leases the unit (one that holds its blobs
may), or when the session leases something else; a dropped reservation's token names
nothing (403). In memory only: a restart drops them all, as it voids every token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pool.useful.queue import Lease, Unit
from pool.useful.tokens import LeaseTokens
from protocol.messages import NextUnit


@dataclass(frozen=True)
class Reservation:
    """``unit`` reserved for ``session``, with the token its blobs are fetched under."""

    id: int
    session: str
    unit: Unit
    token: str

    def next_unit(self) -> NextUnit:
        """What the session's jobs say of it (``BlobSource.next``)."""
        return NextUnit(self.unit.a_blob, self.unit.b_blob, self.token)

    def as_lease(self) -> Lease:
        """A stand-in lease (negative id, no deadline) for fetching its blobs only."""
        return Lease(-self.id, self.session, math.inf, "reserved", self.unit)


class Reservations:
    """At most one reservation per session; tokens from ``tokens``."""

    def __init__(self, tokens: LeaseTokens) -> None:
        self.tokens = tokens
        self._last_id = 0
        self._by_session: dict[str, Reservation] = {}
        self._lease_of: dict[int, int] = {}  # reservation id → the lease it became
        self._token_of: dict[int, str] = {}  # lease id → the reservation token it keeps

    def of(self, session: str) -> Reservation | None:
        return self._by_session.get(session)

    def reserved_key(self, session: str) -> int | None:
        """The unit key reserved for ``session`` (None: none)."""
        found = self._by_session.get(session)
        return None if found is None else found.unit.key

    def others(self, session: str) -> frozenset[int]:
        """Unit keys reserved for sessions other than ``session``."""
        return frozenset(r.unit.key for s, r in self._by_session.items() if s != session)

    def reserve(self, session: str, unit: Unit) -> Reservation:
        """Reserve ``unit`` for ``session`` (replacing any reservation it had)."""
        self._last_id += 1
        found = Reservation(
            self._last_id, session, unit, self.tokens.issue_reservation(self._last_id)
        )
        self._by_session[session] = found
        return found

    def leased(self, lease: Lease) -> Reservation | None:
        """A new lease was made: the session's reservation of that unit becomes the lease
        (returned; its token names the lease now), any other reservation of the session
        or of that unit is dropped."""
        consumed = None
        own = self._by_session.pop(lease.session, None)
        if own is not None and own.unit.key == lease.unit.key:
            consumed = own
            self._lease_of[own.id] = lease.id
            self._token_of[lease.id] = own.token
        for session, other in list(self._by_session.items()):
            if other.unit.key == lease.unit.key:
                del self._by_session[session]
        return consumed

    def token(self, lease_id: int) -> str:
        """The bearer token of lease ``lease_id``: its reservation's, else its own."""
        return self._token_of.get(lease_id) or self.tokens.issue(lease_id)

    def resolve(self, token: str) -> int | Reservation | None:
        """What a bearer token names: a lease id, a live reservation, or None."""
        reservation_id = self.tokens.reservation_id(token)
        if reservation_id is None:
            return self.tokens.lease_id(token)
        if reservation_id in self._lease_of:
            return self._lease_of[reservation_id]
        for found in self._by_session.values():
            if found.id == reservation_id:
                return found
        return None

    def drop_session(self, session: str) -> None:
        """The session left: its reservation is dropped."""
        self._by_session.pop(session, None)

    def lease_ended(self, lease_id: int) -> None:
        """Forget the token of an ended lease."""
        token = self._token_of.pop(lease_id, None)
        if token is not None:
            reservation_id = self.tokens.reservation_id(token)
            if reservation_id is not None:
                self._lease_of.pop(reservation_id, None)
