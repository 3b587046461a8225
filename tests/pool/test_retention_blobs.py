"""Blob collection never takes the operands of a unit that is still leased."""

from __future__ import annotations

import os

import pytest
import trio

from pool.useful import UsefulConfig
from pool.useful.blobstore import BlobStore
from pool.useful.queue import WorkNotFound, WorkQueue
from pool.useful.results import ResultDesk
from tests.support.useful_queue_data import operands, upload


def test_failed_item_keeps_the_operands_of_a_unit_still_leased(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(
        tmp_path / "q.sqlite", blobs, UsefulConfig(unit_m=16, unit_n=16, r=32, max_attempts=1)
    )
    desk = ResultDesk(queue, blobs)
    a, b = operands(3, 32, 64, 16)  # two units
    item = queue.submit("alice", a, b).id
    busy = queue.lease("busy")
    bad = queue.lease("bad")
    assert upload(desk, bad, "bad", bytes(bad.unit.plan.result_bytes)).outcome == "fail"
    assert queue.status(item).state == "failed"
    assert queue.get_lease(busy.id).state == "active"
    blobs.collect(queue.referenced_blobs())
    assert busy.unit.a_blob in blobs and busy.unit.b_blob in blobs
    queue.close()


def test_useful_retention_forgets_old_items_and_their_blobs_only(tmp_path):
    """An item finished before the history horizon goes with its blobs; a live item's blobs
    and a blob stored within the grace period (its item not recorded yet) stay."""
    now = [1000.0]
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(
        tmp_path / "q.sqlite",
        blobs,
        UsefulConfig(unit_m=16, unit_n=16, r=32, max_attempts=1),
        clock=lambda: now[0],
    )
    desk = ResultDesk(queue, blobs)
    old = queue.submit("alice", *operands(1, 16, 64, 16)).id
    lease = queue.lease("s1")
    assert upload(desk, lease, "s1", bytes(lease.unit.plan.result_bytes)).outcome == "fail"
    assert queue.status(old).state == "failed"
    old_blobs = {lease.unit.a_blob, lease.unit.b_blob}
    for path in blobs.root.glob("??/*.blob"):  # stored long ago
        os.utime(path, (now[0], now[0]))
    now[0] += 100.0
    live = queue.submit("bob", *operands(2, 16, 64, 16)).id
    live_unit = queue.units(live)[0]
    in_flight = blobs.put(b"an upload whose item is not recorded yet")
    os.utime(blobs.path(in_flight), (now[0] - 10, now[0] - 10))
    assert queue.prune_finished(before=now[0] - 200.0) == 0  # within the history
    assert queue.prune_finished(before=now[0]) == 1
    with pytest.raises(WorkNotFound):
        queue.status(old)
    assert queue.status(live).state == "queued" and queue.item_count() == 1
    gone = blobs.collect(queue.referenced_blobs(), older_than=now[0] - 60.0)
    assert gone == len(old_blobs - {live_unit.a_blob, live_unit.b_blob})
    assert not any(b in blobs for b in old_blobs - {live_unit.a_blob, live_unit.b_blob})
    assert live_unit.a_blob in blobs and live_unit.b_blob in blobs and in_flight in blobs
    queue.close()


async def test_running_pool_collects_useful_work_and_exports_sizes(start_pool):
    """A pool with useful work runs the useful retention round and exports the sizes."""
    pool = await start_pool({"retention.interval": 0.1, "useful.enabled": True})
    assert pool.useful is not None
    orphan = pool.useful.blobs.put(b"left behind by a crashed upload")
    os.utime(pool.useful.blobs.path(orphan), (1.0, 1.0))
    with trio.fail_after(10):
        while orphan in pool.useful.blobs:
            await trio.sleep(0.05)
        while (
            pool.registry.get_sample_value("matmine_pool_database_bytes", {"database": "useful"})
            is None
        ):
            await trio.sleep(0.05)
    assert pool.registry.get_sample_value("matmine_pool_blob_bytes") == 0
    assert pool.registry.get_sample_value("matmine_pool_work_item_rows") == 0
    assert pool.registry.get_sample_value("matmine_pool_database_bytes", {"database": "ledger"}) > 0
