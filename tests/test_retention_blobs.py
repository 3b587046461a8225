"""Blob collection never takes the operands of a unit that is still leased."""

from __future__ import annotations

from pool.useful import UsefulConfig
from pool.useful.blobstore import BlobStore
from pool.useful.queue import WorkQueue
from pool.useful.results import ResultDesk
from tests.test_useful_queue import operands, upload


def test_failed_item_keeps_the_operands_of_a_unit_still_leased(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "q.sqlite", blobs,
                      UsefulConfig(unit_m=16, unit_n=16, r=32, max_attempts=1))
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
