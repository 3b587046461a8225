"""Devnet payout addresses: ``mmd1`` ‖ 40 hex payload ‖ 8 hex checksum."""

import secrets

from .errors import ErrorCode, ProtocolError
from .hashing import H

PREFIX = "mmd1"
LENGTH = len(PREFIX) + 40 + 8


def _checksum(payload: bytes) -> str:
    return H(b"mmpow1/address", payload)[:4].hex()


def make_address(payload: bytes) -> str:
    """The address of a 20-byte payload."""
    if len(payload) != 20:
        raise ValueError("address payload must be 20 bytes")
    return PREFIX + payload.hex() + _checksum(payload)


def new_address() -> str:
    """A fresh random devnet address."""
    return make_address(secrets.token_bytes(20))


def validate_address(address: str) -> str:
    """Return ``address`` if well formed, else raise ``ProtocolError`` (code ``UNAUTHORIZED``)."""
    unauthorized = ErrorCode.UNAUTHORIZED
    if not isinstance(address, str) or len(address) != LENGTH or not address.startswith(PREFIX):
        raise ProtocolError(f"not a devnet address: {address!r}", code=unauthorized)
    body = address[len(PREFIX) :]
    if body != body.lower():
        raise ProtocolError(f"address must be lower case: {address!r}", code=unauthorized)
    try:
        payload = bytes.fromhex(body[:40])
    except ValueError:
        raise ProtocolError(f"not a devnet address: {address!r}", code=unauthorized) from None
    if body[40:] != _checksum(payload):
        raise ProtocolError(f"bad checksum in address {address!r}", code=unauthorized)
    return address
