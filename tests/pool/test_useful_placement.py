"""Registered operands, whole-B units, affinity and units cut at lease time (SPEC §12.7).

Real SQLite queue files and real blobs on disk; results computed the way a miner does
(one header mined with the reference miner, denoised) and judged by the real result desk.
"""

import io

import httpx
import numpy as np
import pytest
import trio

from pool.useful import UsefulConfig
from pool.useful.affinity import BlobHolders, Placement
from pool.useful.blobstore import BlobStore
from pool.useful.queue import LeaseChoice, WorkNotFound, WorkQueue
from pool.useful.queue_model import MIGRATIONS, WorkLimitError
from pool.useful.results import ResultDesk
from protocol.denoise import denoise
from protocol.ticket import mine_header
from protocol.useful import blob_id, plan_product, sized_rows
from protocol.workload import Workload
from tests.support.useful_queue_data import check_and_complete, operands
from toolkit.sqlite import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def computed(blobs, unit):
    a, bt = blobs.matrix(unit.a_blob), blobs.matrix(unit.b_blob)
    work = mine_header(bytes(128), Workload(unit.shape, a, bt))
    return denoise(work.noisy_product, a, bt, work.seed, unit.shape.r).astype("<i4").tobytes()


@pytest.fixture
def parts(tmp_path):
    clock = Clock()
    config = UsefulConfig(
        unit_m=64, unit_n=32, r=32, lease_seconds=60, affinity_seconds=5.0, max_operands=2
    )
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "useful.sqlite", blobs, config, clock=clock)
    yield clock, blobs, queue, ResultDesk(queue, blobs, config)
    queue.close()


def finish(blobs, queue, desk, item, session="s"):
    """Lease and compute every unit of ``item`` with a correct result; the product."""
    while True:
        lease = queue.lease(session)
        if lease is None:
            break
        assert check_and_complete(desk, lease.id, computed(blobs, lease.unit)).passed
    status = queue.status(item)
    assert status.state == "done", status
    return np.load(blobs.path(status.result_blob))


def test_plan_keeps_the_whole_b_while_it_fits_and_cuts_along_n_beyond():
    whole = plan_product(100, 50, 40, r=32, unit_m=32, unit_n=16, b_max_bytes=64 * 128)
    assert [(u.row0, u.rows, u.col0, u.cols) for u in whole.units] == [
        (0, 32, 0, 50),
        (32, 32, 0, 50),
        (64, 32, 0, 50),
        (96, 4, 0, 50),
    ]
    assert {u.shape.n for u in whole.units} == {64}
    cut = plan_product(100, 50, 40, r=32, unit_m=32, unit_n=16, b_max_bytes=64 * 128 - 1)
    assert len(cut.units) == 4 * 4 and {u.cols for u in cut.units} == {16, 2}


def test_products_on_one_registered_b_share_one_bt_blob_and_come_out_exact(parts):
    _, blobs, queue, desk = parts
    a1, b = operands(1, 100, 40, 50)
    a2, _ = operands(2, 70, 40, 50)
    info = queue.register("alice", b)
    assert info.id == blob_id(np.ascontiguousarray(b).tobytes())
    assert queue.register("alice", b) == info  # the same B again: the same operand
    first = queue.submit_on_operand("alice", a1, info.id)
    second = queue.submit_on_operand("alice", a2, info.id)
    units = queue.units(first.id) + queue.units(second.id)
    assert len(units) == 2 + 2 and {u.plan.cols for u in units} == {50}
    assert len({u.b_blob for u in units}) == 1  # the worker's cache keeps one Bᵀ
    exact1 = a1.astype(np.int64) @ b.astype(np.int64)
    exact2 = a2.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(finish(blobs, queue, desk, first.id), exact1)
    assert np.array_equal(finish(blobs, queue, desk, second.id), exact2)


def test_a_customer_sees_and_uses_only_its_own_operands(parts):
    _, _, queue, _ = parts
    a, b = operands(3, 32, 40, 20)
    info = queue.register("alice", b)
    assert queue.operands("bob") == []
    with pytest.raises(WorkNotFound):
        queue.submit_on_operand("bob", a, info.id)
    with pytest.raises(WorkNotFound):
        queue.delete_operand("bob", info.id)
    assert [o.id for o in queue.operands("alice")] == [info.id]
    queue.register("alice", operands(4, 1, 40, 20)[1])
    with pytest.raises(WorkLimitError):  # max_operands = 2
        queue.register("alice", operands(5, 1, 40, 20)[1])


def test_retention_keeps_an_operand_while_registered_or_named_by_an_item(parts):
    clock, blobs, queue, desk = parts
    a, b = operands(6, 32, 40, 20)
    info = queue.register("alice", b)
    assert info.id in queue.referenced_blobs()
    item = queue.submit_on_operand("alice", a, info.id)
    queue.delete_operand("alice", info.id)
    assert queue.operands("alice") == []
    assert info.id in queue.referenced_blobs()  # the item still names it
    finish(blobs, queue, desk, item.id)
    clock.now += 10
    assert queue.prune_finished(clock.now) == 1
    assert info.id not in queue.referenced_blobs()
    assert blobs.collect(queue.referenced_blobs()) >= 1 and info.id not in blobs


def test_a_unit_goes_first_to_the_session_holding_its_blobs(parts):
    _, _, queue, _ = parts
    a_other, b_other = operands(7, 32, 40, 20)
    a, b = operands(8, 32, 40, 20)
    queue.submit("alice", a_other, b_other)  # older, on a B nobody holds
    mine = queue.submit("alice", a, b)
    held = frozenset({queue.units(mine.id)[0].b_blob})
    lease = queue.lease("holder", LeaseChoice(held=held))
    assert lease is not None and lease.unit.item == mine.id  # not the older unit


def test_a_unit_waits_for_an_idle_holder_then_goes_to_anyone(parts):
    clock, _, queue, _ = parts
    a, b = operands(9, 32, 40, 20)
    item = queue.submit("alice", a, b)
    bt_blob = queue.units(item.id)[0].b_blob
    others = {bt_blob: {"holder": clock.now}}
    waited = queue.lease_or_wait("other", LeaseChoice(others=others, affinity_seconds=5.0))
    assert waited == pytest.approx(clock.now + 5.0)  # held back: offered again then
    clock.now += 5.0
    lease = queue.lease_or_wait("other", LeaseChoice(others=others, affinity_seconds=5.0))
    assert lease is not None and not isinstance(lease, float)
    assert lease.unit.item == item.id  # never idle past the bound


def test_a_holder_whose_result_was_rejected_holds_nothing_back(parts):
    clock, _, queue, desk = parts
    a, b = operands(10, 32, 40, 20)
    queue.submit("alice", a, b)
    lease = queue.lease("cheat")
    assert not check_and_complete(desk, lease.id, bytes(lease.unit.plan.result_bytes)).passed
    others = {lease.unit.b_blob: {"cheat": clock.now}}
    got = queue.lease_or_wait("honest", LeaseChoice(others=others, affinity_seconds=60.0))
    assert got is not None and not isinstance(got, float) and got.unit.key == lease.unit.key


def test_units_are_cut_at_lease_time_to_the_session_and_still_assemble_exactly(parts):
    _, blobs, queue, desk = parts
    a, b = operands(11, 120, 40, 20)  # two queued units of 64 + 56 rows
    item = queue.submit("alice", a, b)
    slow = queue.lease("slow", LeaseChoice(rows=lambda plan: 16))
    fast = queue.lease("fast", LeaseChoice(rows=lambda plan: 48))
    assert slow.unit.shape.m == 16 and slow.unit.plan.rows == 16
    assert (slow.unit.plan.row0, fast.unit.plan.row0) == (0, 64)  # oldest units first
    assert fast.unit.shape.m == 48 and fast.unit.plan.rows == 48
    assert queue.status(item.id).units == 4  # 64 = 16 + 48, 56 = 48 + 8
    for lease in (slow, fast):
        assert check_and_complete(desk, lease.id, computed(blobs, lease.unit)).passed
    product = finish(blobs, queue, desk, item.id)
    assert np.array_equal(product, a.astype(np.int64) @ b.astype(np.int64))


def test_the_last_queued_unit_is_halved_down_to_the_tail_rows_and_still_assembles(parts):
    _, blobs, queue, desk = parts
    a, b = operands(18, 120, 40, 20)  # two queued units of 64 + 56 rows
    item = queue.submit("alice", a, b)
    tail = LeaseChoice(tail_rows=16)
    sizes = []
    while (lease := queue.lease("s", tail)) is not None:
        sizes.append(lease.unit.plan.rows)
        assert check_and_complete(desk, lease.id, computed(blobs, lease.unit)).passed
    # another unit queued: whole; then each the last queued: halved, not below 16 rows
    assert sizes == [64, 16, 16, 16, 8]  # 56 → 16 + 40 → 16 + 24 → 16 + 8
    assert np.array_equal(finish(blobs, queue, desk, item.id), a.astype(np.int64) @ b)
    other = queue.submit("alice", *operands(19, 64, 40, 20))
    whole = queue.lease("t")  # tail_rows 0 (a bare choice): never halved
    assert whole is not None and whole.unit.plan.rows == 64 and whole.unit.item == other.id


def test_a_unit_cut_by_another_meanwhile_is_chosen_again_not_leased_as_it_became(parts):
    _, _, queue, _ = parts
    a, b = operands(20, 64, 40, 20)
    queue.submit("alice", a, b)
    real_split = queue.split_unit
    cut_meanwhile = []

    def split_after_another(unit, rows):  # another session's choice cuts it first
        if not cut_meanwhile:
            cut_meanwhile.append(real_split(unit, 48))
        return real_split(unit, rows)

    queue.split_unit = split_after_another
    lease = queue.lease("slow", LeaseChoice(rows=lambda plan: 16))
    assert cut_meanwhile == [True]
    assert lease is not None and lease.unit.plan.rows == 16  # not the 48 rows it became


def test_unit_rows_follow_the_measured_rate_within_bounds():
    unit = plan_product(1024, 64, 256, r=64, unit_m=1024).units[0]
    per_row = unit.shape.n * unit.shape.k
    assert sized_rows(None, 10.0, unit, 16, 1024, 64) == 64  # not measured: the start size
    assert sized_rows(per_row * 20.0, 10.0, unit, 16, 1024, 64) == 192  # 200 rows → 192
    assert sized_rows(per_row * 1.0, 10.0, unit, 16, 1024, 64) == 16  # slow: the least
    assert sized_rows(per_row * 1e6, 10.0, unit, 16, 1024, 64) == 1024  # fast: the most
    assert all(sized_rows(r, 3.0, unit, 16, 1024, 64) % 16 == 0 for r in (1e5, 3e6, 7e7))


def test_blobs_fetched_whole_are_held_by_the_session_and_its_miner():
    holders = BlobHolders()
    miner = BlobHolders.miner_key("mmd1addr", "rig1")
    holders.connect("s1", miner)
    holders.served(1, "s1", b"B" * 32, 600, 1000)
    assert holders.held("s1") == frozenset()  # partly fetched: not held
    holders.served(1, "s1", b"B" * 32, 400, 1000)
    assert holders.held("s1") == {b"B" * 32}
    holders.disconnect("s1")
    holders.connect("s2", miner)  # the same miner reconnects: it keeps its blobs
    assert holders.held("s2") == {b"B" * 32}
    holders.busy("s2", False, 5.0)
    holders.connect("s3", None)
    assert holders.others("s3") == {b"B" * 32: {"s2": 5.0}}
    holders.busy("s2", True, 6.0)  # busy: nothing is held back for it
    assert holders.others("s3") == {}


def test_placement_sizes_by_rate_and_offers_held_back_units_again():
    placement = Placement(UsefulConfig(unit_m=256, unit_start_rows=32, unit_seconds=1.0))
    choice = placement.choice("s", None, None, 0.0)
    unit = plan_product(256, 16, 128, r=32, unit_m=256).units[0]
    assert choice.rows is not None and choice.rows(unit) == 32
    fast = placement.choice("s", None, 16 * 128 * 200.0, 0.0)
    assert fast.rows is not None and fast.rows(unit) == 192
    assert placement.leased("s", 12.5, 10.0) is None
    assert not placement.due(12.0) and placement.due(12.5) and not placement.due(13.0)


def test_a_version_1_queue_file_is_migrated_and_keeps_its_units(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    config = UsefulConfig(unit_m=32, unit_n=32, r=32, unit_b_max_bytes=0)
    path = tmp_path / "useful.sqlite"
    old = WorkQueue(path, blobs, config)
    a, b = operands(12, 40, 40, 20)
    item = old.submit("alice", a, b)
    old.close()
    conn = open_store(path, MIGRATIONS)  # back to version 1: what an older pool made
    conn.executescript(
        "DROP TABLE operands; ALTER TABLE items DROP COLUMN b_operand; "
        "ALTER TABLE units DROP COLUMN queued_since; PRAGMA user_version = 1;"
    )
    conn.close()
    queue = WorkQueue(path, blobs, config)
    try:
        assert queue.status(item.id).units == 2 and queue.operands("alice") == []
        lease = queue.lease("s")
        assert lease is not None and lease.unit.item == item.id
    finally:
        queue.close()


def test_a_unit_reserved_for_another_goes_to_a_holder_or_an_idle_session_never_to_a_reservation(
    parts,
):
    _, _, queue, _ = parts
    a, b = operands(13, 32, 40, 20)
    item = queue.submit("alice", a, b)
    unit = queue.units(item.id)[0]
    mine = frozenset({unit.key})
    assert queue.reservable("third", LeaseChoice(exclude=mine, take_excluded=False)) is None
    lease = queue.lease("holder", LeaseChoice(held=frozenset({unit.b_blob}), exclude=mine))
    assert lease is not None and lease.unit.key == unit.key
    queue.release_session("holder")
    lease = queue.lease("idle", LeaseChoice(exclude=mine))  # nothing else queued: it is taken
    assert lease is not None and lease.unit.key == unit.key


async def test_registered_operands_are_each_customers_own_over_http(nursery, tmp_path):
    from tests.pool.test_useful_api import start_pool  # the work API alone, on a real socket

    tokens = {"tok-alice": "alice", "tok-bob": "bob"}
    pool = await start_pool(nursery, tmp_path, tokens=tokens)
    _, b = operands(14, 16, 40, 20)
    a, _ = operands(15, 32, 40, 20)
    f = io.BytesIO()
    np.save(f, b)
    alice = {"Authorization": "Bearer tok-alice", "Content-Type": "application/x-npy"}
    bob = {"Authorization": "Bearer tok-bob", "Content-Type": "application/x-npy"}
    try:
        async with httpx.AsyncClient(base_url=pool.url, timeout=20) as client:
            r = await client.post("/api/work/operands", content=f.getvalue(), headers=alice)
            assert r.status_code == 201, r.text
            operand_id = r.json()["id"]
            mine = await client.get("/api/work/operands", headers=alice)
            assert [o["id"] for o in mine.json()["operands"]] == [operand_id]
            theirs = await client.get("/api/work/operands", headers=bob)
            assert theirs.json() == {"operands": []}
            assert (
                await client.get(f"/api/work/operands/{operand_id}", headers=bob)
            ).status_code == 404
            g = io.BytesIO()
            np.save(g, a)
            used = await client.post(
                "/api/work", params={"b_operand": operand_id}, content=g.getvalue(), headers=bob
            )
            assert used.status_code == 404, used.text
            assert (
                await client.delete(f"/api/work/operands/{operand_id}", headers=bob)
            ).status_code == 404
            ok = await client.post(
                "/api/work", params={"b_operand": operand_id}, content=g.getvalue(), headers=alice
            )
            assert ok.status_code == 201 and ok.json()["shape"]["n"] == 20, ok.text
            bad = await client.get("/api/work/operands/not-hex", headers=alice)
            assert bad.status_code == 404 and "64 lowercase hex" in bad.json()["error"]
    finally:
        pool.queue.close()


async def test_a_job_made_while_its_lease_was_delivered_is_not_attached_and_nothing_breaks(
    tmp_path,
):
    from prometheus_client import CollectorRegistry

    from pool.miner_state import MinerState
    from pool.useful import UsefulMetrics
    from pool.useful.lease import UsefulLease
    from pool.useful.service import UsefulWork

    useful = UsefulWork(tmp_path, UsefulConfig(), UsefulMetrics(CollectorRegistry()))
    try:
        a, b = operands(16, 32, 40, 20)
        useful.queue.submit("alice", a, b)
        miner = MinerState(peer="127.0.0.1", connected_at=0.0, last_message=0.0)
        miner.useful_capable = True
        session = UsefulLease(useful, miner)
        leased = await session.lease()
        assert leased is not None
        lease, _ = leased
        await useful.deliver(lease, useful.desk.open_stream(lease))  # came in meanwhile
        await session.attach(lease, "job-1")  # logged, not raised: the session goes on
        assert await useful.lease_of_job(miner.work_key, "job-1") is None
    finally:
        useful.close()


async def test_a_unit_cut_after_an_earlier_lease_is_mined_as_cut(tmp_path):
    from prometheus_client import CollectorRegistry

    from pool.useful import UsefulMetrics
    from pool.useful.service import UsefulWork

    config = UsefulConfig(unit_m=64, unit_start_rows=64, unit_min_rows=16, r=32)
    useful = UsefulWork(tmp_path, config, UsefulMetrics(CollectorRegistry()))
    try:
        a, b = operands(17, 64, 128, 40)
        useful.queue.submit("alice", a, b)
        first = await useful.lease("s1")  # not measured: the whole 64-row unit
        assert first is not None and first[1].a.shape[0] == 64
        await useful.release_session("s1")
        slow = await useful.lease("s2", rate=1.0)  # 1 MAC/s: the fewest rows
        assert slow is not None
        lease, work = slow
        assert lease.unit.key == first[0].unit.key and lease.unit.plan.rows == 16
        assert work.work_root == lease.unit.unit_id and work.a.shape[0] == 16
        assert work.work_spec().a_root == lease.unit.a_root
    finally:
        useful.close()


async def test_an_empty_or_bad_operand_body_is_refused_at_once(nursery, tmp_path):
    """The 400 of a body read to its end comes at once (it waited 60 s for a drain)."""
    from tests.pool.test_useful_api import start_pool

    pool = await start_pool(nursery, tmp_path)
    npy_type = {"Content-Type": "application/x-npy"}
    f = io.BytesIO()
    np.save(f, operands(17, 16, 40, 20)[1])
    try:
        async with httpx.AsyncClient(base_url=pool.url, timeout=30) as client:
            with trio.fail_after(10):  # well under the 60 s drain it used to wait
                empty = await client.post("/api/work/operands", content=b"", headers=npy_type)
                cut = await client.post(
                    "/api/work/operands", content=f.getvalue()[:-7], headers=npy_type
                )
                r = await client.post("/api/work/operands", content=f.getvalue(), headers=npy_type)
                assert r.status_code == 201, r.text
                on_empty = await client.post(
                    "/api/work", params={"b_operand": r.json()["id"]}, content=b"",
                    headers=npy_type,
                )  # fmt: skip
            for refused in (empty, cut, on_empty):
                assert refused.status_code == 400, refused.text
                assert "\n" not in refused.json()["error"]
    finally:
        pool.queue.close()
