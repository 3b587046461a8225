"""pool/useful queue, blob store and results on real SQLite files and real blobs on disk.

Units are computed the way a miner will: the reference miner mines one header of the
unit's workload (``protocol.ticket.mine_header``), the noisy product is denoised
(``protocol.denoise.denoise``) and the padded C is uploaded in chunks.
"""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pool.useful import UsefulConfig, UsefulMetrics, rounds_for
from pool.useful.blobstore import BlobStore
from pool.useful.queue import LeaseError, WorkInputError, WorkLimitError, WorkNotFound, WorkQueue
from pool.useful.results import ResultDesk
from protocol.denoise import denoise
from protocol.errors import ProtocolError
from protocol.merkle import rows_root
from protocol.ticket import mine_header
from protocol.useful import blob_id
from protocol.workload import Workload
from tests.support.useful_queue_data import check_and_complete, operands, upload


class Clock:
    """Wall-clock stand-in the test moves by hand (leases are wall-clock deadlines)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def computed_result(blobs, unit, header=bytes(128)):
    """The unit's padded C as a worker computes it: mine one header, denoise."""
    a, bt = blobs.matrix(unit.a_blob), blobs.matrix(unit.b_blob)
    work = mine_header(header, Workload(unit.shape, a, bt))
    return denoise(work.noisy_product, a, bt, work.seed, unit.shape.r).astype("<i4").tobytes()


@pytest.fixture
def parts(tmp_path):
    clock = Clock()
    registry = CollectorRegistry()
    metrics = UsefulMetrics(registry)
    config = UsefulConfig(  # units cut along m and n (unit_b_max_bytes = 0)
        unit_m=32,
        unit_n=32,
        r=32,
        chunk_max=4096,
        lease_seconds=60,
        max_attempts=3,
        unit_b_max_bytes=0,
    )
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(
        tmp_path / "useful.sqlite",
        blobs,
        config,
        clock=clock,
        on_units_changed=metrics.set_unit_counts,
    )
    desk = ResultDesk(queue, blobs, config, metrics)
    yield clock, registry, blobs, queue, desk
    queue.close()


def gauge(registry, state):
    return registry.get_sample_value("matmine_pool_work_units", {"state": state})


def test_submit_stores_verifiable_unit_blobs(parts):
    _, registry, blobs, queue, _ = parts
    a, b = operands(1, 40, 100, 50)
    status = queue.submit("alice", a, b)
    assert status.state == "queued" and status.units == 4  # 2 row bands × 2 column bands
    assert (status.m, status.k, status.n, status.r) == (40, 100, 50, 32)
    assert gauge(registry, "queued") == 4
    units = queue.units(status.id)
    bt = b.T
    for unit in units:
        p = unit.plan
        ua, ub = blobs.matrix(unit.a_blob), blobs.matrix(unit.b_blob)
        assert ua.shape == (unit.shape.m, 128) and ub.shape == (unit.shape.n, 128)
        np.testing.assert_array_equal(ua[: p.rows, :100], a[p.row0 : p.row0 + p.rows])
        np.testing.assert_array_equal(ub[: p.cols, :100], bt[p.col0 : p.col0 + p.cols])
        assert blob_id(blobs.read(unit.a_blob)) == unit.a_blob
        assert rows_root(ua) == unit.a_root and rows_root(ub) == unit.b_root
        assert unit.unit_id == unit.work_spec().work_root
        assert unit.work_spec().source.a == unit.a_blob
    # A's row band is stored once and shared by the units of that band
    assert units[0].a_blob == units[1].a_blob and units[0].b_blob != units[1].b_blob


def test_round_trip_larger_than_one_unit_with_held_shares(parts):
    _, registry, blobs, queue, desk = parts
    a, b = operands(2, 70, 150, 40)
    item = queue.submit("alice", a, b).id
    credited = []
    sessions = ["s1", "s2"]
    turn = 0
    while (lease := queue.lease(sessions[turn % 2])) is not None:
        session = sessions[turn % 2]
        assert queue.lease(session).id == lease.id  # a session keeps its unit across jobs
        queue.attach_job(lease.id, session, f"job{turn}")
        assert queue.lease_of_job(session, f"job{turn}").id == lease.id
        assert queue.hold_share(lease.id, {"job": f"job{turn}", "difficulty": 1.5})
        assert queue.status(item).state == "running"
        raw = computed_result(blobs, lease.unit, bytes([turn]) * 128)
        verdict = upload(desk, lease, session, raw)
        assert verdict.passed, verdict.reason
        credited += verdict.end.shares
        turn += 1
    assert turn == 6  # 3 row bands × 2 column bands
    assert credited == [{"job": f"job{i}", "difficulty": 1.5} for i in range(6)]
    status = queue.status(item)
    assert status.state == "done" and status.progress == 1.0 and status.result_blob
    c = np.load(blobs.path(status.result_blob))
    assert c.dtype == np.int32 and c.shape == (70, 40)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    assert registry.get_sample_value("matmine_pool_useful_macs_total") == 70 * 40 * 150
    assert registry.get_sample_value("matmine_pool_result_checks_total", {"outcome": "pass"}) == 6
    assert gauge(registry, "done") == 6 and gauge(registry, "running") == 0


def test_wrong_result_is_caught_voided_and_released_to_another_worker(parts):
    _, registry, blobs, queue, desk = parts
    a, b = operands(3, 16, 64, 16)
    item = queue.submit("alice", a, b).id
    bad = queue.lease("cheater")
    queue.attach_job(bad.id, "cheater", "j1")
    assert queue.hold_share(bad.id, {"share": 1})
    assert queue.hold_share(bad.id, {"share": 2})
    c = np.frombuffer(computed_result(blobs, bad.unit), dtype="<i4").copy()
    c[5] += 1  # one element off
    verdict = upload(desk, bad, "cheater", c.tobytes())
    assert verdict.outcome == "fail" and not verdict.passed
    assert verdict.end.state == "rejected" and verdict.end.shares == [{"share": 1}, {"share": 2}]
    assert verdict.end.unit_state == "queued"
    assert queue.held_shares(bad.id) == []
    assert not queue.hold_share(bad.id, {"share": 3})  # late share on a dead lease: not held
    assert queue.lease("cheater") is None  # never the same unit again for that session
    honest = queue.lease("honest")
    assert honest.unit.key == bad.unit.key and honest.unit.attempts == 1
    assert upload(desk, honest, "honest", computed_result(blobs, honest.unit)).passed
    assert queue.status(item).state == "done"
    assert registry.get_sample_value("matmine_pool_result_checks_total", {"outcome": "fail"}) == 1


def test_lease_deadline_expiry_requeues_and_voids(parts):
    clock, registry, blobs, queue, desk = parts
    a, b = operands(4, 16, 64, 16)
    queue.submit("alice", a, b)
    slow = queue.lease("slow")
    assert slow.deadline == clock.now + 60
    assert queue.next_deadline() == slow.deadline
    assert queue.hold_share(slow.id, {"share": "slow"})
    assert gauge(registry, "running") == 1
    clock.now += 59.0
    assert queue.expire() == []
    clock.now += 2.0
    (end,) = queue.expire()
    assert end.state == "expired" and end.shares == [{"share": "slow"}]
    assert queue.get_lease(slow.id).state == "expired"
    assert gauge(registry, "queued") == 1 and gauge(registry, "running") == 0
    # the slow worker's late result is refused, chunk by chunk and as a whole
    raw = computed_result(blobs, slow.unit)
    with pytest.raises(ProtocolError, match="lease of this job is expired"):
        desk.receive(queue.get_lease(slow.id), "slow", slow.unit.unit_id, 0, raw[:4096], False)
    with pytest.raises(LeaseError):
        desk.check(slow.id, raw)
    fresh = queue.lease("fast")  # lease() expires on its own too
    assert fresh.unit.key == slow.unit.key and fresh.id != slow.id
    assert upload(desk, fresh, "fast", raw).passed


def test_disconnect_releases_the_unit(parts):
    _, _, _, queue, _ = parts
    a, b = operands(5, 16, 64, 16)
    queue.submit("alice", a, b)
    first = queue.lease("s1")
    queue.hold_share(first.id, {"n": 1})
    assert queue.lease("s2") is None  # only one unit, and it is taken
    (end,) = queue.release_session("s1")
    assert end.state == "released" and end.shares == [{"n": 1}]
    assert queue.release_session("s1") == []
    assert queue.lease("s2").unit.key == first.unit.key
    with pytest.raises(LeaseError, match="not an active lease"):
        queue.attach_job(first.id, "s1", "late")


def test_restart_loses_no_queued_work_or_delivered_result(tmp_path):
    config = UsefulConfig(unit_m=16, unit_n=16, r=32)
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "q.sqlite", blobs, config)
    desk = ResultDesk(queue, blobs)
    a1, b1 = operands(6, 16, 40, 16)
    done_item = queue.submit("alice", a1, b1).id
    lease = queue.lease("s1")
    assert upload(desk, lease, "s1", computed_result(blobs, lease.unit)).passed
    a2, b2 = operands(7, 32, 40, 16)
    open_item = queue.submit("alice", a2, b2).id
    verified = queue.lease("s1")
    assert upload(desk, verified, "s1", computed_result(blobs, verified.unit)).passed
    running = queue.lease("s2")
    queue.hold_share(running.id, {"held": True})
    queue.close()

    queue = WorkQueue(tmp_path / "q.sqlite", BlobStore(tmp_path / "blobs"), config)
    desk = ResultDesk(queue, queue.blobs)
    assert [e.shares for e in queue.recovered] == [[{"held": True}]]  # the old session is gone
    assert queue.status(done_item).state == "done"
    np.testing.assert_array_equal(
        np.load(queue.blobs.path(queue.status(done_item).result_blob)),
        a1.astype(np.int64) @ b1.astype(np.int64),
    )
    status = queue.status(open_item)
    assert status.state == "running" and status.unit_states == {
        "queued": 1,
        "running": 0,
        "done": 1,
        "failed": 0,
    }
    again = queue.lease("s3")
    assert again.unit.key == running.unit.key
    assert upload(desk, again, "s3", computed_result(queue.blobs, again.unit)).passed
    np.testing.assert_array_equal(
        np.load(queue.blobs.path(queue.status(open_item).result_blob)),
        a2.astype(np.int64) @ b2.astype(np.int64),
    )
    queue.close()


def test_crash_between_last_verification_and_assembly_is_recovered(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "q.sqlite", blobs, UsefulConfig(unit_m=16, unit_n=16, r=32))
    a, b = operands(8, 16, 40, 16)
    item = queue.submit("bob", a, b).id
    lease = queue.lease("s")
    queue.complete(lease.id, blobs.put(computed_result(blobs, lease.unit)))  # no assembly
    assert queue.status(item).state == "running"
    assert ResultDesk(queue, blobs).recover() == [item]
    status = queue.status(item)
    assert status.state == "done"
    np.testing.assert_array_equal(
        np.load(blobs.path(status.result_blob)), a.astype(np.int64) @ b.astype(np.int64)
    )
    assert ResultDesk(queue, blobs).recover() == []
    # blobs still referenced: the delivered product; finished operands may be collected
    keep = queue.referenced_blobs()
    assert keep == {status.result_blob}
    assert blobs.collect(keep) >= 2 and status.result_blob in blobs
    queue.close()


def test_too_many_wrong_results_fail_the_item(parts):
    _, _, _, queue, desk = parts
    a, b = operands(9, 16, 64, 16)
    item = queue.submit("alice", a, b).id
    for attempt in range(3):
        lease = queue.lease(f"bad{attempt}")
        verdict = upload(desk, lease, f"bad{attempt}", bytes(lease.unit.plan.result_bytes))
        assert verdict.outcome == "fail"
    assert verdict.end.unit_state == "failed"
    status = queue.status(item)
    assert status.state == "failed" and "failed 3 checks" in status.error
    assert queue.lease("good") is None


def test_limits_and_bad_operands_are_clear_and_store_nothing(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    config = UsefulConfig(
        unit_m=16,
        unit_n=16,
        r=32,
        max_dim=64,
        max_upload_bytes=4000,
        max_active_items=2,
        max_queued_bytes=3000,
    )
    queue = WorkQueue(tmp_path / "q.sqlite", blobs, config)
    a, b = operands(10, 16, 40, 16)
    with pytest.raises(WorkLimitError, match="m = 65 is over the limit of 64") as exc:
        queue.submit("c", *operands(1, 65, 4, 4))
    assert exc.value.http_status == 413
    with pytest.raises(WorkLimitError, match="over the limit of 4000"):
        queue.submit("c", *operands(1, 60, 40, 60))
    with pytest.raises(WorkInputError, match="B must be int8, got int16"):
        queue.submit("c", a, b.astype(np.int16))
    with pytest.raises(WorkInputError, match=r"A has entries outside \[-64, 64\]"):
        queue.submit("c", np.full_like(a, 100), b)
    with pytest.raises(WorkInputError, match="inner dimensions differ"):
        queue.submit("c", a, b[:30])
    assert blobs.ids() == [] and queue.unit_counts()["queued"] == 0
    queue.submit("c", a, b)
    queue.submit("c", a, b)
    with pytest.raises(
        WorkLimitError, match="2 unfinished items, the limit per customer is 2"
    ) as exc:
        queue.submit("c", a, b)
    assert exc.value.http_status == 429
    queue.submit("d", a, b)  # limits are per customer
    with pytest.raises(WorkLimitError, match="2560 more would pass the limit of 3000"):
        queue.submit("d", *operands(2, 48, 40, 16))
    with pytest.raises(WorkNotFound):
        queue.status("nope")
    item = queue.submit("e", a, b).id
    with pytest.raises(WorkNotFound):
        queue.status(item, customer="someone else")
    queue.close()


def test_result_chunks_out_of_place_are_refused(parts):
    _, registry, blobs, queue, desk = parts
    a, b = operands(11, 16, 64, 16)
    queue.submit("alice", a, b)
    lease = queue.lease("s")
    raw = computed_result(blobs, lease.unit)
    uid = lease.unit.unit_id
    with pytest.raises(ProtocolError, match=r"params\.unit is not the unit of this job"):
        desk.receive(lease, "s", bytes(32), 0, raw[:100], False)
    with pytest.raises(ProtocolError, match="leased to another session"):
        desk.receive(lease, "other-session", uid, 0, raw[:100], False)
    with pytest.raises(ProtocolError, match="over 4096"):
        desk.receive(lease, "s", uid, 0, bytes(5000), False)
    desk.receive(lease, "s", uid, 0, raw[:100], False)
    with pytest.raises(ProtocolError, match="expected offset 100"):
        desk.receive(lease, "s", uid, 200, raw[200:300], False)
    # the refused chunk dropped the partial upload: start again from 0
    with pytest.raises(ProtocolError, match="no complete result"):
        desk.take_upload(lease.id)
    verdict = check_and_complete(desk, lease.id, raw[:-4])
    assert verdict.outcome == "malformed" and "must be 1024 bytes" in verdict.reason
    assert (
        registry.get_sample_value("matmine_pool_result_checks_total", {"outcome": "malformed"}) == 1
    )


def test_freivalds_rounds_meet_the_default_bound():
    assert UsefulConfig().freivalds_rounds == rounds_for(40) == 3
    assert UsefulConfig().false_accept_log2 >= 40
    with pytest.raises(ValueError, match=r"useful\.unit_m must be a positive multiple of 16"):
        UsefulConfig(unit_m=100).validate()


def test_unit_work_checks_tickets_and_opens_rows_like_a_node(parts):
    """A leased unit as a job's workload: the reference miner's ticket verifies from the
    unit's 16+16 rows, and the block fields prove those rows against the roots."""
    from pool.useful.unitwork import UnitWork
    from protocol.merkle import verify_proof
    from protocol.ticket import verify_ticket
    from protocol.workload import TILE

    _, _, blobs, queue, _ = parts
    a, b = operands(12, 40, 64, 40)
    queue.submit("alice", a, b)
    lease = queue.lease("s")
    work = UnitWork.load(blobs, lease.unit)
    assert work.work_root == work.work_spec().work_root == lease.unit.unit_id
    header = bytes(range(128))
    mined = mine_header(header, Workload(work.shape, work.a, work.bt))
    tile = (1, 0)
    a_rows, bt_rows = work.tile_rows(tile)
    assert verify_ticket(header, work.shape, tile, a_rows, bt_rows) == mined.digest(*tile)
    fields = work.block_fields(tile)
    k = work.shape.k
    for i in range(TILE):
        row = fields["a_rows"][i * k : (i + 1) * k]
        assert verify_proof(row, TILE + i, fields["a_proofs"][i], work.a_root)
        row = fields["bt_rows"][i * k : (i + 1) * k]
        assert verify_proof(row, i, fields["b_proofs"][i], work.b_root)
    assert not verify_proof(bytes(k), TILE, fields["a_proofs"][0], work.a_root)
