"""A session's inbox: what other parts of the pool ask of one miner connection.

Other parts never start tasks in a session's nursery; they :meth:`Inbox.post` an event
(never blocking) and the session's own task acts on it in order (waiting on it with a
deadline: the same task keeps the session's timeouts). The inbox is bounded:
a post to a full or closed inbox is refused (``False``), and an :class:`OfferWork` that
is already waiting is not queued twice.

:class:`Replies` is the other direction, the same way: the submit pipeline's answers to
the session, which its writer task sends in order (``pool.submit_pipeline``).
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


class _Parking:
    """One task parked until woken: plain data until someone waits (no channel, no event)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: trio.lowlevel.Task | None = None

    async def _park(self) -> None:
        if self._waiter is not None:
            raise trio.BusyResourceError(
                f"another task already waits on this {type(self).__name__}"
            )
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        if self._waiter is not None:
            task, self._waiter = self._waiter, None
            trio.lowlevel.reschedule(task)


FollowUp = Callable[[], Awaitable[None]]
"""What a session does after sending a reply (a new job on a new difficulty, an escalation)."""


SendNow = Callable[[bytes], int]
"""Writes what it can of a frame at once, without waiting: the bytes written (0: none); a
frame written in part is finished by its next send (``pool.sender.FrameSender``)."""


class Replies(_Parking):
    """The answers the submit pipeline has for one session: frames to send in order, each
    with an optional follow-up; one session task (the writer) sends them. Never blocks: the
    in-flight submit limit bounds it. Closed with the session (later posts are dropped).

    With ``send_now``, a frame without a follow-up that comes while the writer is idle
    (parked, nothing queued) is written by it first: the usual answer goes out without a
    task switch; what it does not write goes to the writer as before."""

    __slots__ = ("_items", "_send_now", "closed", "writing")

    def __init__(self, send_now: SendNow | None = None) -> None:
        super().__init__()
        self._items: list[tuple[bytes, FollowUp | None]] = []
        self._send_now = send_now
        self.closed = False
        self.writing = False  # a writer (:meth:`write`) was started

    def post(self, frame: bytes, then: FollowUp | None = None) -> None:
        """Queue ``frame`` (then ``then``) for the writer; nothing once closed."""
        if self.closed:
            return
        if then is None and self._waiter is not None and self._send_now is not None:
            # The writer is parked (nothing queued, nothing being sent): write it now.
            sent = self._send_now(frame)
            if sent == len(frame):
                return
            if sent:  # the rest goes first in the next send: the writer's, woken for it
                frame = b""
        self._items.append((frame, then))
        self._wake()

    async def take(self) -> list[tuple[bytes, FollowUp | None]]:
        """Every queued reply, in order, once there is one."""
        while not self._items:
            if self.closed:
                raise trio.ClosedResourceError("the session is closed")
            await self._park()
        items, self._items = self._items, []
        return items

    async def write(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """The writer: ``send`` the replies in order (frames that come together in one
        call), each follow-up after its frame; ends once closed."""
        while True:
            frames: list[bytes] = []
            for frame, then in await self.take():
                frames.append(frame)
                if then is not None:
                    await send(b"".join(frames))
                    frames = []
                    await then()
            if frames:
                await send(b"".join(frames))

    def close(self) -> None:
        """No more replies: the queued ones are dropped, the writer ends."""
        self.closed = True
        self._items = []
        self._wake()


class Inbox(_Parking):
    """A bounded queue of :data:`SessionEvent`; one session task reads it.

    Plain data until someone waits: no channel, the waiting task itself is parked (a pool
    holds one inbox per connection, ten thousand of them).
    """

    __slots__ = ("_closed", "_events", "_offer_waiting", "size")

    def __init__(self, size: int = INBOX_SIZE) -> None:
        super().__init__()
        self.size = size
        self._events: deque[SessionEvent] | None = None  # made at the first post
        self._closed = False
        self._offer_waiting = False

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

    async def receive(self, deadline: float = math.inf) -> SessionEvent | None:
        """The next event, in the order posted; None once the trio clock reaches
        ``deadline`` with none (``trio.ClosedResourceError`` once closed)."""
        if not self._events:
            if self._closed:
                raise trio.ClosedResourceError("the inbox is closed")
            with trio.move_on_at(deadline):
                await self._park()
            if not self._events:
                if self._closed:
                    raise trio.ClosedResourceError("the inbox is closed")
                return None
        else:
            await trio.lowlevel.checkpoint()
        assert self._events
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
        self._wake()
