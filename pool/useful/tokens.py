"""Per-lease bearer tokens of the HTTP data plane (SPEC §12.7, bulk data plane).

A token is ``<lease id>.<32 hex digits>``: the lease id and a keyed BLAKE3 MAC of it under
a key drawn when the pool starts. So the pool keeps no table of tokens, a token names one
lease only, and a restart (which releases every lease) voids them all. A reservation's
token (SPEC §12.7, prefetch) is ``r<reservation id>.<MAC>`` under another label; the lease
of a reserved unit keeps it.
"""

from __future__ import annotations

import hmac
import secrets

from protocol.hashing import HK

MAC_BYTES = 16
RESERVATION_LABEL = b"matmine reservation token "


class LeaseTokens:
    """Issues and checks lease tokens under one secret key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, lease_id: int, label: bytes = b"matmine lease token ") -> str:
        return HK(self._key, label + str(lease_id).encode())[:MAC_BYTES].hex()

    def issue(self, lease_id: int) -> str:
        """The bearer token of lease ``lease_id``."""
        return f"{lease_id}.{self._mac(lease_id)}"

    def issue_reservation(self, reservation_id: int) -> str:
        """The bearer token of reservation ``reservation_id`` (and of its lease, later)."""
        return f"r{reservation_id}.{self._mac(reservation_id, RESERVATION_LABEL)}"

    def lease_id(self, token: str) -> int | None:
        """The lease a token was issued for, or None for a token this pool did not issue."""
        return self._check(token, b"matmine lease token ")

    def reservation_id(self, token: str) -> int | None:
        """The reservation a token was issued for, or None."""
        if not token.startswith("r"):
            return None
        return self._check(token[1:], RESERVATION_LABEL)

    def _check(self, token: str, label: bytes) -> int | None:
        number, _, mac = token.partition(".")
        if not (number.isascii() and number.isdigit()) or len(number) > 18:
            return None
        ident = int(number)
        return ident if hmac.compare_digest(mac, self._mac(ident, label)) else None
