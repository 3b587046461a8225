"""Exceptions raised by the sans-IO core."""


class ProtocolError(Exception):
    """Input that breaks the mmpow-1 rules or the wire format.

    ``code`` is the wire error code (DESIGN §3) a server should answer with;
    26 (malformed) unless a more specific one applies.
    """

    def __init__(self, message: str, code: int = 26) -> None:
        super().__init__(message)
        self.code = code
