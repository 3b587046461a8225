"""worker/prefetch.py and the operand path of worker/useful.py against the real pool's HTTP
data plane (SPEC §12.7, prefetch): real files, the worker's own ``DataClient``.

Real :class:`~tests.support.miner.TestMiner` sessions lease units over stratum; a lease's
blobs and token are what a job's ``next`` names (the reservation's token authorizes the
same ``GET``). The prefetched bytes are counted by the pool's own data-plane counter.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import httpx
import numpy as np
import pytest
import trio
import trio.testing

from pool.app import PoolHandle
from protocol import messages
from protocol.address import new_address
from protocol.useful import blob_id
from tests.support.holding_proxy import HoldingProxy
from tests.support.http_proxy import FaultyProxy
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS
from tests.support.running import fast_connection, wait_until
from worker.blobcache import BlobCache, BlobSpec
from worker.client import Job, PoolClient
from worker.config import PoolEndpoint
from worker.data_client import DataClient, DataPlane
from worker.prefetch import Prefetcher
from worker.stats import WorkerStats
from worker.useful import UsefulWork

UNIT_BYTES = 32 * 128  # one A block (32 × 128) and the Bᵀ block are this size


async def submit_units(handle: PoolHandle, count: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    """``count`` units of 32 × 32 (k 128) sharing one Bᵀ; returns A and B."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-64, 65, (32 * count, 128), dtype=np.int8)
    b = rng.integers(-64, 65, (128, 32), dtype=np.int8)
    f = io.BytesIO()
    np.save(f, a)
    np.save(f, b)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
        r = await client.post(
            "/api/work", content=f.getvalue(), headers={"Content-Type": "application/x-npy"}
        )
    assert r.status_code == 201, r.text
    return a, b


def source(job: messages.Notify) -> messages.BlobSource:
    src = job.work.source
    assert isinstance(src, messages.BlobSource) and src.data is not None and src.token is not None
    return src


def plane(job: messages.Notify, base: str | None = None) -> DataPlane:
    src = source(job)
    assert src.data is not None and src.token is not None
    return DataPlane.of(f"{base}/data" if base else src.data, src.token, "127.0.0.1")


def next_of(job: messages.Notify) -> messages.NextUnit:
    """What a job reserving ``job``'s unit next would name."""
    src = source(job)
    assert src.token is not None
    return messages.NextUnit(a=src.a, b=src.b, token=src.token)


def served(handle: PoolHandle) -> float:
    value = handle.registry.get_sample_value(
        "matmine_pool_data_bytes_total", {"direction": "out", "path": "http"}
    )
    return 0.0 if value is None else value


def worker_job(notify: messages.Notify, port: int) -> Job:
    """The worker's view of a job the pool sent (its client only names the pool)."""
    client = PoolClient(
        PoolEndpoint("127.0.0.1", port),
        login=f"{new_address()}.rig1",
        password="x",
        agent="test",
        settings=fast_connection(),
        on_job=lambda job: None,
    )
    return Job(notify, b"\0" * 4, client, 0.0)


def with_next(notify: messages.Notify, nxt: messages.NextUnit) -> messages.Notify:
    src = dataclasses.replace(source(notify), next=nxt)
    return dataclasses.replace(notify, work=dataclasses.replace(notify.work, source=src))


async def test_the_next_units_blobs_are_prefetched_and_mined_with_no_download(
    start_pool, nursery, tmp_path
):
    handle = await start_pool(USEFUL_SETTINGS)
    a, b = await submit_units(handle, 2)
    stats = WorkerStats()
    useful = UsefulWork(stats, tmp_path / "cache", 1 << 20)
    nursery.start_soon(useful.run)
    async with (
        await TestMiner.connect(handle.stratum_port) as first,
        await TestMiner.connect(handle.stratum_port) as second,
    ):
        job1 = await first.login(f"{new_address()}.rig1", useful=True)
        job2 = await second.login(f"{new_address()}.rig2", useful=True)
        assert source(job1).b == source(job2).b and source(job1).a != source(job2).a
        # the first unit's job names the second as reserved next: its operands come in,
        # then the next unit's A in the background (its Bᵀ is the same, already cached)
        workload1 = await useful.workload(worker_job(with_next(job1, next_of(job2)), 1))
        assert np.array_equal(workload1.bt, np.ascontiguousarray(b.T))
        await wait_until(lambda: useful.prefetcher.fetched == 1, 10)
        assert served(handle) == stats.blob_bytes == 3 * UNIT_BYTES
        assert source(job2).a in useful.cache
        assert not list(useful.cache.dir.glob(".part*"))
        # the next unit's job: verified against its a_root/b_root, mined with no download
        workload2 = await useful.workload(worker_job(job2, 1))
        assert np.array_equal(workload2.a, a[32:])
        assert workload2.work_root == job2.work.work_root
        assert served(handle) == stats.blob_bytes == 3 * UNIT_BYTES
        assert stats.useful_bytes == {"in": 3 * UNIT_BYTES, "out": 0}
        # a job repeating the reservation (a refresh) does not fetch it again
        await useful.workload(worker_job(with_next(job1, next_of(job2)), 1))
        await trio.testing.wait_all_tasks_blocked()
        assert useful.prefetcher.fetched == 1 and served(handle) == 3 * UNIT_BYTES


async def test_the_current_fetch_waits_for_a_prefetch_of_its_blob_and_cancels_another(
    start_pool, nursery, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG, logger="worker.prefetch")
    handle = await start_pool(USEFUL_SETTINGS)
    await submit_units(handle, 1)
    proxy = HoldingProxy(handle.http_port, hold=b"GET /data/blobs/")
    await nursery.start(proxy.serve)
    cache = BlobCache(tmp_path / "cache", 1 << 20)
    prefetcher = Prefetcher(lambda: cache, DataClient(), trio.CapacityLimiter(1))
    nursery.start_soon(prefetcher.run)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        src = source(job)
        # a prefetch of another unit's blobs gives way to the current unit's fetch
        prefetcher.want(plane(job, proxy.url), next_of(job))
        await wait_until(lambda: proxy.held == 1, 10)
        await prefetcher.settle(bytes(32))  # the current unit needs something else
        await wait_until(lambda: prefetcher.dropped == 1, 10)
        assert "cancelled" in caplog.records[-1].getMessage()
        assert src.a not in cache and not list(cache.dir.glob(".part*"))
        # named again by a later job: tried again; a fetch of its blob waits for it
        prefetcher.want(plane(job, proxy.url), next_of(job))
        await wait_until(lambda: proxy.held == 2, 10)
        settled = trio.Event()

        async def current_fetch() -> None:
            await prefetcher.settle(src.a)
            settled.set()

        nursery.start_soon(current_fetch)
        await trio.testing.wait_all_tasks_blocked()
        assert not settled.is_set()  # the blob is on its way: no second download
        proxy.release.set()
        with trio.fail_after(10):
            await settled.wait()
        assert prefetcher.fetched == 2 and src.a in cache and src.b in cache
        spec = BlobSpec(src.a, job.work.m, job.work.k, job.work.a_root)
        loaded = await trio.to_thread.run_sync(cache.load, spec)
        assert loaded is not None and blob_id(loaded.matrix.tobytes()) == src.a
        # A and Bᵀ once each, and what the pool sent of the cancelled try
        assert 2 * UNIT_BYTES <= served(handle) <= 3 * UNIT_BYTES
        assert prefetcher.dropped == 1


@pytest.mark.parametrize("fault", ["not-the-lease's", "spoiled", "too-big"])
async def test_a_prefetch_that_fails_is_dropped_quietly(
    start_pool, nursery, tmp_path, caplog, fault
):
    handle = await start_pool(USEFUL_SETTINGS)
    await submit_units(handle, 1)
    proxy = FaultyProxy(handle.http_port, flip_at=100, faulty=10)
    await nursery.start(proxy.serve)
    max_bytes = UNIT_BYTES - 1 if fault == "too-big" else 1 << 20
    cache = BlobCache(tmp_path / "cache", max_bytes)
    prefetcher = Prefetcher(lambda: cache, DataClient(), trio.CapacityLimiter(1))
    nursery.start_soon(prefetcher.run)
    caplog.set_level(logging.DEBUG, logger="worker.prefetch")
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        nxt = next_of(job)
        if fault == "not-the-lease's":
            nxt = dataclasses.replace(nxt, a=bytes(range(32)))
        base = proxy.url if fault == "spoiled" else None
        prefetcher.want(plane(job, base), nxt)
        await wait_until(lambda: prefetcher.dropped == 1, 10)
        assert prefetcher.fetched == 0
        assert not list(cache.dir.glob("*.blob")) and not list(cache.dir.glob(".part*"))
        drops = [r for r in caplog.records if r.name == "worker.prefetch"]
        assert drops and all(r.levelno == logging.DEBUG for r in drops)
        why = {"not-the-lease's": "403", "spoiled": "", "too-big": "at most"}[fault]
        assert why in drops[-1].getMessage()


async def test_a_new_reservation_replaces_the_prefetch_of_a_dropped_one(
    start_pool, nursery, tmp_path
):
    handle = await start_pool(USEFUL_SETTINGS)
    await submit_units(handle, 2)
    proxy = HoldingProxy(handle.http_port, hold=b"GET /data/blobs/")
    await nursery.start(proxy.serve)
    cache = BlobCache(tmp_path / "cache", 1 << 20)
    prefetcher = Prefetcher(lambda: cache, DataClient(), trio.CapacityLimiter(1))
    nursery.start_soon(prefetcher.run)
    async with (
        await TestMiner.connect(handle.stratum_port) as first,
        await TestMiner.connect(handle.stratum_port) as second,
    ):
        job1 = await first.login(f"{new_address()}.rig1", useful=True)
        job2 = await second.login(f"{new_address()}.rig2", useful=True)
        dropped = dataclasses.replace(next_of(job1), a=bytes(range(32)), b=bytes(range(1, 33)))
        prefetcher.want(plane(job1, proxy.url), dropped)
        await wait_until(lambda: proxy.held == 1, 10)
        # the pool dropped that reservation: the next job names another unit
        prefetcher.want(plane(job1, proxy.url), next_of(job2))
        await wait_until(lambda: prefetcher.dropped == 1 and proxy.held == 2, 10)
        proxy.release.set()
        await wait_until(lambda: prefetcher.fetched == 2, 10)
        assert source(job2).a in cache and source(job2).b in cache
        assert prefetcher.dropped == 1
