"""A submit judged without a task of its own: the share checker's steps, run by stages.

:func:`start_submit` runs the cheap rules of a ``mining.submit`` at once (in the session's
reader), queues the ticket in the :class:`~pool.check_batch.CheckBatcher` (checked in a
batch by a stage worker), and hands the checked share to the
:class:`~pool.sharelog.ShareLog` (committed in a batch by the writer task); its callback
gets the outcome in the event loop: the accepted share once durably committed, or the
``ShareRejected`` to answer. Each step is :class:`~pool.share_check.ShareChecker`'s, the
same as :meth:`~pool.share_check.ShareChecker.check` awaits in turn, so every rule, code
and text is the same; what needs a task (a block to submit, a ledger that does not take a
share at once) comes back as a :class:`Deferred`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

from pool.check_batch import Answer
from pool.jobs import Job, SessionJobs
from pool.share_check import AcceptedShare, Miner, ShareChecker
from pool.share_rules import ShareRejected
from pool.sharelog import ShareLogError
from protocol import messages
from protocol.errors import ErrorCode, ProtocolError


class Deferred:
    """The rest of a submit that needs a task: ``await deferred.rest()`` for the accepted
    share (or the ``ShareRejected``)."""

    __slots__ = ("rest",)

    def __init__(self, rest: Callable[[], Awaitable[AcceptedShare]]) -> None:
        self.rest = rest


Outcome = AcceptedShare | ShareRejected | Deferred


def start_submit(
    checker: ShareChecker,
    miner: Miner,
    book: SessionJobs,
    submit: messages.Submit,
    done: Callable[[Outcome], None],
    wanted: Callable[[], bool],
    elsewhere: Callable[[Job], bool],
) -> bool:
    """Start judging ``submit``; ``done`` gets its outcome later, in the event loop. False,
    with nothing done, when it needs ``checker.check`` (or what ``elsewhere`` says judges
    its job) from the start: no stage workers, an unknown or stale job, a job on a leased
    useful-work unit, a job ``elsewhere`` names. A cheap rule that fails
    raises ``ShareRejected`` at once. A share checked once ``wanted()`` is False (its
    session closed) is not stored; its outcome is a rejection nobody reads."""
    if not checker.batcher.staged:
        return False
    try:
        job = book.lookup(submit.job_id, checker.jobs.epoch, trio.current_time())
    except ProtocolError:
        return False  # refused by check, as always
    if (job.lease_id is not None and checker.useful is not None) or elsewhere(job):
        return False
    pre = checker.admit(miner, book, job, submit)

    def checked(answer: Answer) -> None:
        if not wanted():
            job.seen.discard(pre.key)
            done(ShareRejected("share not stored: the session closed", ErrorCode.OTHER))
            return
        try:
            ticket, record = checker.to_record(miner, job, pre, submit, answer)
        except ShareRejected as exc:
            done(exc)
            return

        def committed(stored: bool | ShareLogError) -> None:
            try:
                checker.queued_outcome(job, pre, stored)
            except ShareRejected as exc:
                done(exc)
                return
            done(checker.accepted(miner, job, ticket.digest))

        if ticket.meets_network or not checker.sharelog.enqueue(record, committed):
            done(Deferred(partial(checker.store, miner, job, pre, submit, ticket, record)))

    checker.batcher.enqueue(job, pre.coinbase, pre.header, submit.tile, checked)
    return True
