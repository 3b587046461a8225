"""A session's inbox: what other parts of the pool ask of one miner connection.

Other parts never start tasks in a session's nursery; they :meth:`Inbox.post` an event
(never blocking) and the session's own task acts on it in order. The inbox is bounded:
a post to a full or closed inbox is refused (``False``), and an :class:`OfferWork` that
is already waiting is not queued twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

INBOX_SIZE = 64


@dataclass(frozen=True)
class Kick:
    """Tell the miner ``reason`` (``client.show_message``), then close the connection."""

    reason: str


@dataclass(frozen=True)
class Notice:
    """Tell the miner ``text`` (``client.show_message``); the connection stays."""

    text: str


@dataclass(frozen=True)
class WorkLost:
    """The session's useful-work lease ended without a result: send it new work."""


@dataclass(frozen=True)
class ResultRejected:
    """A unit result the session sent over the data plane was wrong: count it against the
    miner like ``shares`` invalid shares (as a wrong ``work.result`` is counted)."""

    shares: int


@dataclass(frozen=True)
class OfferWork:
    """Units are queued: lease one if the session takes useful work and holds none."""


SessionEvent = Kick | Notice | WorkLost | ResultRejected | OfferWork


class Inbox:
    """A bounded memory channel of :data:`SessionEvent`; one session reads it."""

    def __init__(self, size: int = INBOX_SIZE) -> None:
        self._send, self._receive = trio.open_memory_channel[SessionEvent](size)
        self._offer_waiting = False

    def post(self, event: SessionEvent) -> bool:
        """Queue ``event`` (never blocks); False when the inbox is full or closed."""
        if isinstance(event, OfferWork) and self._offer_waiting:
            return True
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if isinstance(event, OfferWork):
            self._offer_waiting = True
        return True

    async def receive(self) -> SessionEvent:
        """The next event, in the order posted."""
        event = await self._receive.receive()
        if isinstance(event, OfferWork):
            self._offer_waiting = False
        return event

    def close(self) -> None:
        """No more events: later posts are refused."""
        self._receive.close()
