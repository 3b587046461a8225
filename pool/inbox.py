"""A session's inbox: what other parts of the pool ask of one miner connection.

Other parts never start tasks in a session's nursery; they :meth:`Inbox.post` an event
(never blocking) and the session's own task acts on it in order (waiting on it with a
deadline: the same task keeps the session's timeouts). The inbox is bounded:
a post to a full or closed inbox is refused (``False``), and an :class:`OfferWork` that
is already waiting is not queued twice.

The same task sends the submit pipeline's answers (``pool.submit_pipeline``): the session
:meth:`Inbox.reply` s a frame (with what follows it: a new difficulty's job, an escalation
step), unbounded (the in-flight submit limit bounds them) and ahead of the events;
:meth:`Inbox.receive` hands every queued reply over as one :class:`Replies`, and
:meth:`Replies.send` sends them (the frames that come together in one write).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
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

FollowUp = Callable[[], Awaitable[None]]
"""What a session does once a reply is sent (a new difficulty's job, an escalation step)."""


@dataclass(frozen=True)
class Replies:
    """Answers to send, in order, each with an optional follow-up (not posted by others:
    :meth:`Inbox.receive` gives what :meth:`Inbox.reply` queued)."""

    items: list[tuple[bytes, FollowUp | None]]

    async def send(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """``send`` the frames (those that come together in one call), each follow-up
        after its frame."""
        frames: list[bytes] = []
        for frame, then in self.items:
            frames.append(frame)
            if then is not None:
                await send(b"".join(frames))
                frames = []
                await then()
        if frames:
            await send(b"".join(frames))


class Inbox:
    """A bounded queue of :data:`SessionEvent`; one session task reads it.

    Plain data until someone waits: no channel, the waiting task itself is parked (a pool
    holds one inbox per connection, ten thousand of them).
    """

    __slots__ = ("_closed", "_events", "_offer_waiting", "_replies", "_waiter", "size")

    def __init__(self, size: int = INBOX_SIZE) -> None:
        self.size = size
        self._events: deque[SessionEvent] | None = None  # made at the first post
        self._replies: list[tuple[bytes, FollowUp | None]] | None = None
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False
        self._offer_waiting = False

    @property
    def closed(self) -> bool:
        """Whether the inbox is closed (its session ended)."""
        return self._closed

    def reply(self, frame: bytes, then: FollowUp | None = None) -> None:
        """Queue an answer ``frame`` (then ``then``) to send (never blocks; dropped once
        closed)."""
        if self._closed:
            return
        if self._replies is None:
            self._replies = []
        self._replies.append((frame, then))
        self._wake()

    def post(self, event: SessionEvent) -> bool:
        """Queue ``event`` (never blocks); False when the inbox is full or closed."""
        if isinstance(event, OfferWork) and self._offer_waiting:
            return not self._closed
        if self._closed or (self._events is not None and len(self._events) >= self.size):
            return False
        if self._events is None:
            self._events = deque()
        self._events.append(event)
        if isinstance(event, OfferWork):
            self._offer_waiting = True
        self._wake()
        return True

    async def receive(self, deadline: float = math.inf) -> SessionEvent | Replies | None:
        """The queued replies, else the next event in the order posted; None once the trio
        clock reaches ``deadline`` with neither (``trio.ClosedResourceError`` once closed)."""
        if not self._events and not self._replies:
            if self._closed:
                raise trio.ClosedResourceError("the inbox is closed")
            with trio.move_on_at(deadline):
                await self._park()
            if not self._events and not self._replies:
                if self._closed:
                    raise trio.ClosedResourceError("the inbox is closed")
                return None
        else:
            await trio.lowlevel.checkpoint()
        if self._replies:
            replies, self._replies = self._replies, None
            return Replies(replies)
        if not self._events:  # closed meanwhile
            raise trio.ClosedResourceError("the inbox is closed")
        event = self._events.popleft()
        if not self._events:
            self._events = None
        if isinstance(event, OfferWork):
            self._offer_waiting = False
        return event

    def close(self) -> None:
        """No more events: later posts are refused."""
        self._closed = True
        self._events = None
        self._replies = None
        self._wake()

    async def _park(self) -> None:
        if self._waiter is not None:
            raise trio.BusyResourceError("another task already waits on this inbox")
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        if self._waiter is not None:
            task, self._waiter = self._waiter, None
            trio.lowlevel.reschedule(task)
