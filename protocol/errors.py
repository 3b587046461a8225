"""The wire's error codes and the exception the sans-IO core raises (SPEC §wire.errors)."""

from enum import IntEnum


class ErrorCode(IntEnum):
    """Wire error codes (SPEC §wire.errors); the numbers are the wire's, never renumber."""

    OTHER = 20
    STALE = 21
    DUPLICATE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED = 24
    NOT_SUBSCRIBED = 25
    MALFORMED = 26
    RATE_LIMITED = 27
    BAD_TIME = 28


class ProtocolError(Exception):
    """Input that breaks the mmpow-1 rules or the wire format.

    ``code`` is the wire error code a server should answer with;
    :attr:`ErrorCode.MALFORMED` unless a more specific one applies.
    """

    def __init__(self, message: str, code: int = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code
