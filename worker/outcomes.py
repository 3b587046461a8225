"""What a pool connection reports back: a share's ``SubmitOutcome``, why a session ended
(``Disconnected``), a ``work.*`` request that failed (``RequestFailed``)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Reconnect


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one share: ``accepted``, ``rejected``, ``stale`` or ``lost``."""

    result: str
    difficulty: float = 0.0
    block: bytes | None = None
    code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class Disconnected:
    """Why a session ended; ``reconnect`` is set when the pool asked for it."""

    reason: str
    reconnect: Reconnect | None = None
    got_job: bool = False
    login_refused: bool = False  # the pool answered 24: retrying the same login is pointless


class RequestFailed(Exception):
    """A ``work.*`` request the pool refused (``code`` set) or that got no answer."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
