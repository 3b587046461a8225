"""Per-lease bearer tokens of the HTTP data plane (SPEC §12.7, bulk data plane).

A token is ``<lease id>.<32 hex digits>``: the lease id and a keyed BLAKE3 MAC of it under
a key drawn when the pool starts. So the pool keeps no table of tokens, a token names one
lease only, and a restart (which releases every lease) voids them all.
"""

from __future__ import annotations

import hmac
import secrets

from protocol.hashing import HK

MAC_BYTES = 16


class LeaseTokens:
    """Issues and checks lease tokens under one secret key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, lease_id: int) -> str:
        return HK(self._key, b"matmine lease token " + str(lease_id).encode())[:MAC_BYTES].hex()

    def issue(self, lease_id: int) -> str:
        """The bearer token of lease ``lease_id``."""
        return f"{lease_id}.{self._mac(lease_id)}"

    def lease_id(self, token: str) -> int | None:
        """The lease a token was issued for, or None for a token this pool did not issue."""
        lease_text, _, mac = token.partition(".")
        if not lease_text.isdigit() or len(lease_text) > 18:
            return None
        lease_id = int(lease_text)
        return lease_id if hmac.compare_digest(mac, self._mac(lease_id)) else None
