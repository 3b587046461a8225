"""The submit pipeline (issue 12): a submit takes no task of its own; its check and its
commit run in batches and its answer goes out through the session's writer.

Real pools on loopback sockets, real SQLite ledgers. What is pinned here: many submits in
flight on one connection are each answered once; a session that closes with shares in a
commit batch gets them committed, each once, and answered never, and those still being
checked are dropped (never committed, never answered); the share log's callback
queue tells every record its outcome (stored, duplicate, or the ledger's failure) and
refuses what it cannot take at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from pool.ledger.base import ShareRecord
from pool.ledger.sqlite import SqliteLedger
from pool.sharelog import ShareLog, ShareLogError
from protocol.address import new_address
from tests.support.miner import TestMiner


@contextlib.asynccontextmanager
async def holding(limiter: trio.CapacityLimiter) -> AsyncIterator[None]:
    """Every token of ``limiter`` held (what waits for it waits) until the block ends."""
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    try:
        yield
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)


async def leave(pool, miner: TestMiner, shares: list, queued: Callable[[], bool]) -> None:
    """Send ``shares`` without waiting for answers; once ``queued()``, close the connection
    and wait until its session has ended."""
    for c in shares:
        await miner.send_submit(c)
    with trio.fail_after(10):
        while not queued():
            await trio.sleep(0.005)
    await miner.aclose()
    with trio.fail_after(10):
        while pool.context.sessions:
            await trio.sleep(0.01)


def accepted_metric(pool) -> float:
    return (
        pool.registry.get_sample_value("matmine_pool_shares_total", {"result": "accepted"}) or 0.0
    )


async def test_submits_in_flight_on_one_connection_are_each_answered_once(start_pool, ledger_call):
    pool = await start_pool(settings={"vardiff.enabled": False})
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".burst")
        shares = (await miner.shares(12, job))[:12]
        ids = [await miner.send_submit(c) for c in shares]  # all in flight at once
        answers = [await miner.response(i) for i in ids]
        assert [a.error for a in answers] == [None] * 12
        assert {a.id for a in answers} == set(ids)
        (session,) = pool.context.sessions
        assert session.accepted == 12 and session.rejected == 0
        again = await miner.submit(shares[0])  # the duplicate rule still sees them
        assert again.error is not None and again.error.code == 22
    assert await ledger_call(pool, pool.ledger.share_count) == 12
    assert accepted_metric(pool) == 12


async def test_a_session_that_closes_with_shares_in_a_commit_batch_has_them_committed_once(
    start_pool, ledger_call
):
    """The shares already queued for a commit are committed (they were checked: credited
    work), each once, and no answer goes out for them; the pool serves the next miner."""
    pool = await start_pool(settings={"vardiff.enabled": False})
    miner = await TestMiner.connect(pool.stratum_port)
    job = await miner.login(new_address() + ".leaver")
    warm, *queued = (await miner.shares(6, job))[:6]
    assert (await miner.submit(warm)).error is None
    log = pool.sharelog
    room = log._room.value
    (session,) = pool.context.sessions
    async with holding(pool.ledger_limiter):  # the ledger is busy: the next commit waits
        # checked and queued for the commit, then gone
        await leave(pool, miner, queued, lambda: log._room.value <= room - len(queued))
    with trio.fail_after(10):
        while log.committed < 1 + len(queued) or log._room.value < room:
            await trio.sleep(0.01)
    assert await ledger_call(pool, pool.ledger.share_count) == 1 + len(queued)
    assert log.committed == 1 + len(queued)
    assert session.accepted == 1 and accepted_metric(pool) == 1  # answered: the warm one
    assert session.inflight.value == pool.config.stratum.max_inflight_submits  # all freed
    async with await TestMiner.connect(pool.stratum_port) as other:
        job = await other.login(new_address() + ".next")
        (share,) = (await other.shares(1, job))[:1]
        assert (await other.submit(share)).error is None
    assert await ledger_call(pool, pool.ledger.share_count) == 2 + len(queued)


async def test_a_session_that_closes_with_shares_being_checked_has_them_dropped(
    start_pool, ledger_call
):
    """Shares still in the check stage when their session closes are checked, then
    dropped: not committed, not answered, their in-flight slots freed."""
    pool = await start_pool(settings={"vardiff.enabled": False})
    miner = await TestMiner.connect(pool.stratum_port)
    job = await miner.login(new_address() + ".quitter")
    warm, *queued = (await miner.shares(6, job))[:6]
    assert (await miner.submit(warm)).error is None
    (session,) = pool.context.sessions
    slots = session.inflight.value
    async with holding(pool.context.checker.batcher.limiter):  # the checks wait
        await leave(pool, miner, queued, lambda: session.inflight.value <= slots - len(queued))
    with trio.fail_after(10):
        while session.inflight.value < slots:  # each checked, then released
            await trio.sleep(0.01)
    await trio.sleep(0.05)  # a few commit intervals: nothing of theirs comes
    assert pool.sharelog.committed == 1
    assert await ledger_call(pool, pool.ledger.share_count) == 1
    assert session.accepted == 1 and session.rejected == 0


def share(i: int, session: bytes = b"s") -> ShareRecord:
    return ShareRecord(
        i.to_bytes(32, "little"), float(i), new_address(), "w", "1.1", 1, 1e-4, 1.0, session
    )


async def test_sharelog_enqueue_tells_each_record_its_outcome(tmp_path):
    """Queued without a task: stored, a duplicate of a stored digest, and, once the ledger
    fails, the failure; while it is down nothing is taken (the caller waits in ``commit``)."""
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    log = ShareLog(ledger, trio.CapacityLimiter(1), interval=0.001, max_pending=4)
    outcomes: dict[int, bool | ShareLogError] = {}

    def queue(i: int, session: bytes = b"s") -> bool:
        return log.enqueue(share(i, session), lambda stored: outcomes.__setitem__(i, stored))

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        assert all(queue(i) for i in range(4))
        assert not queue(4)  # no room: max_pending records wait already
        with trio.fail_after(5):
            while len(outcomes) < 4:
                await trio.sleep(0.001)
        assert outcomes == {0: True, 1: True, 2: True, 3: True}
        assert queue(1, b"another")  # the same digest from another share: stored already
        with trio.fail_after(5):
            while 1 in outcomes and outcomes[1] is True:
                await trio.sleep(0.001)
        assert outcomes[1] is False and log.committed == 4
        ledger.close()  # the store goes away
        assert queue(9)
        with trio.fail_after(5):
            while 9 not in outcomes:
                await trio.sleep(0.001)
        assert isinstance(outcomes[9], ShareLogError) and "share not stored" in str(outcomes[9])
        assert not log.available and not queue(10)  # down: nothing taken at once
        with pytest.raises(ShareLogError, match="ledger unavailable"):
            await log.commit(share(11))
        nursery.cancel_scope.cancel()
