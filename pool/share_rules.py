"""The rules of one submit that need no I/O: the cheap ones first (:func:`precheck`: tile,
time, duplicate across the session's jobs, the per-job share budget), then the ticket itself
(:func:`check_ticket`, CPU work for a worker thread). A broken rule raises
:class:`ShareRejected` with its wire code (the table in :mod:`pool.share_check`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pool.jobs import Job, SessionJobs, ShareKey
from pool.metrics import PoolFaultCode
from protocol import messages
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.header import MAX_TIME_ROLL
from protocol.target import meets_target
from protocol.ticket import (
    PassArrays,
    TileCheck,
    check_tile_rows,
    tile_digests,
    verify_ticket_fast,
)


class ShareRejected(ProtocolError):
    """A submit that is not accepted; ``code`` is the wire error code. ``pool_fault``: the
    pool's own state (its ledger could not store the share), never the miner's doing."""

    def __init__(self, message: str, code: int, *, pool_fault: bool = False) -> None:
        # A pool fault's code is a PoolFaultCode (still the int on the wire), so the shares
        # metric counts it as pool_error, whoever passes the code on (SPEC §12.9).
        super().__init__(message, PoolFaultCode(code) if pool_fault else int(code))
        self.pool_fault = pool_fault


@dataclass(frozen=True)
class CheckedTicket:
    """What the worker thread found: the ticket digest, the header, the coinbase."""

    digest: bytes
    header: bytes
    coinbase: bytes
    meets_share: bool
    meets_network: bool


def check_ticket(job: Job, coinbase: bytes, header: bytes, tile: tuple[int, int]) -> CheckedTicket:
    """Recompute the ticket of a submit on ``job``'s ``header`` (from :meth:`Job.header`;
    CPU work: call it in a worker thread). The rows come from the job's workload (cached
    bands for synthetic work, the unit's matrices for blob work) and the header's index
    pairs from the template's cache; the digest equals ``protocol.ticket.verify_ticket``'s."""
    t = job.template
    work = job.work
    a_rows, bt_rows = work.tile_rows(tile)
    noise = t.work.header_noise(header, work.shape)
    digest = verify_ticket_fast(header, work.shape, tile, a_rows, bt_rows, noise)
    k = work.shape.k
    return CheckedTicket(
        digest,
        header,
        coinbase,
        meets_target(digest, job.share_target, k),
        meets_target(digest, t.network_target, k),
    )


TicketRequest = tuple[Job, bytes, bytes, tuple[int, int]]
"""One ticket to check: ``(job, coinbase, header, tile)``, as :func:`check_ticket` takes them."""


def check_tickets(
    requests: Sequence[TicketRequest], arrays: PassArrays | None = None
) -> list[CheckedTicket | Exception]:
    """:func:`check_ticket` of several submits in vectorised passes per job shape (their
    working arrays, ``arrays`` if given — one per thread — reused from shape to shape);
    each answer is its ``CheckedTicket`` or the exception that rejects it (CPU work: a
    thread)."""
    answers: list[CheckedTicket | Exception] = [ValueError("not checked")] * len(requests)
    by_shape: dict[tuple[int, int], list[tuple[int, TileCheck]]] = {}
    for i, (job, _, header, tile) in enumerate(requests):
        try:
            work = job.work
            a_rows, bt_rows = work.tile_rows(tile)
            check_tile_rows(work.shape, tile, a_rows, bt_rows)
            noise = job.template.work.header_noise(header, work.shape)
        except Exception as exc:
            answers[i] = exc
            continue
        by_shape.setdefault((noise.k, noise.r), []).append(
            (i, TileCheck(noise, tile, a_rows, bt_rows))
        )
    arrays = PassArrays() if arrays is None else arrays
    for group in by_shape.values():
        try:
            digests = tile_digests([check for _, check in group], arrays)
        except Exception as exc:
            for i, _ in group:
                answers[i] = exc
            continue
        for (i, _), digest in zip(group, digests, strict=True):
            job, coinbase, header, _ = requests[i]
            k = job.work.shape.k
            answers[i] = CheckedTicket(
                digest,
                header,
                coinbase,
                meets_target(digest, job.share_target, k),
                meets_target(digest, job.template.network_target, k),
            )
    return answers


@dataclass(frozen=True)
class Prechecked:
    """A submit past the cheap rules: its ticket's key (reserved), coinbase and header."""

    key: ShareKey
    coinbase: bytes
    header: bytes


def precheck(
    book: SessionJobs, job: Job, submit: messages.Submit, max_shares_per_job: int
) -> Prechecked:
    """The cheap rules (tile, time, duplicate across the session's jobs); reserves the
    ticket's key ``(H(header), tile)`` in ``job`` on success."""
    shape = job.work.shape
    ti, tj = submit.tile
    if not (ti < shape.tiles_m and tj < shape.tiles_n):
        raise ShareRejected(
            f"tile {list(submit.tile)} is outside the job's {shape.tiles_m}x{shape.tiles_n} tiles",
            ErrorCode.OTHER,
        )
    job_time = job.template.block.time
    if submit.time < job_time:
        raise ShareRejected(
            f"time {submit.time} is before the job's time {job_time}", ErrorCode.BAD_TIME
        )
    if submit.time > job_time + MAX_TIME_ROLL:
        raise ShareRejected(
            f"time {submit.time} is more than {MAX_TIME_ROLL} s after the job's time {job_time}",
            ErrorCode.BAD_TIME,
        )
    try:
        coinbase, header = job.header(submit.extranonce2, submit.time)
    except ProtocolError as exc:
        raise ShareRejected(f"share cannot be checked: {exc}", exc.code) from None
    key: ShareKey = (H(header), (ti, tj))
    if book.has_share(key):
        raise ShareRejected("duplicate share", ErrorCode.DUPLICATE)
    if len(job.seen) >= max_shares_per_job:
        raise ShareRejected(
            "too many shares for one job; mine the newest job", ErrorCode.RATE_LIMITED
        )
    job.seen.add(key)
    return Prechecked(key, coinbase, header)
