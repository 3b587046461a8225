"""Useful work end to end: a customer's product through the real pool and the real worker.

The customer submits ``A·B`` over the pool's HTTP work API; the pool splits it into units
and leases them to the worker as blob jobs; the worker fetches and verifies the operands
(``work.get_blob``), mines, denoises one header's product and returns each unit's C
(``work.result``); the pool checks it (Freivalds), credits the held shares and assembles
the product, which the customer fetches and compares with numpy's.

The tampering test puts a TCP proxy (test-side, not one of our parts) between the worker
and the pool that flips one byte inside the first ``work.get_blob`` answer.
"""

from __future__ import annotations

import httpx
import numpy as np
import trio

from protocol.useful import blob_id
from tests.support.running import running_worker
from tests.support.useful_pool import (
    RecordingBackend,
    TamperingProxy,
    api_url,
    blas,
    fetch_result,
    genuine_blobs,
    metric,
    operands,
    running_useful_pool,
    submit,
    useful_settings,
    wait_done,
)
from worker.config import PoolEndpoint


async def test_product_larger_than_a_unit_round_trip(tmp_path):
    a, b = operands(100, 96, 80, seed=1)  # 2×2 units of at most 64×64, k padded to 128
    expected = a.astype(np.int64) @ b.astype(np.int64)
    blobs = genuine_blobs(a, b)
    device = RecordingBackend(blas())
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        running_worker([pool.endpoint], [device], useful=useful_settings(tmp_path)) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
    ):
        work_id = await submit(customer, a, b)
        status = await wait_done(customer, work_id, 60)
        c = await fetch_result(customer, work_id)

        assert status["units"] == 4
        assert c.dtype == np.int32 and c.shape == (100, 80)
        assert np.array_equal(c.astype(np.int64), expected)
        s = worker.stats
        assert s.useful_results == {"verified": 4, "rejected": 0, "failed": 0}
        # every distinct operand blob fetched exactly once (units share A or Bᵀ blocks)
        assert s.blob_bytes == sum(blobs.values())
        assert metric(worker.registry, "matmine_worker_blob_bytes_total") == s.blob_bytes
        assert {x for pair in device.prepared for x in pair} >= set(blobs)
        # the pool credited the verified product's MACs and the held shares
        assert metric(pool.handle.registry, "matmine_pool_useful_macs_total") == 100 * 80 * 96
        assert (
            metric(pool.handle.registry, "matmine_pool_result_checks_total", 'outcome="pass"') == 4
        )
        # a unit's mining ends when its result is delivered (often after one header), so
        # the shares may come from the synthetic work that follows
        with trio.fail_after(20):
            while s.shares["accepted"] < 1:
                await trio.sleep(0.02)
        assert s.shares["accepted"] >= 1 and s.shares["rejected"] == 0
        assert await pool.shares_received() >= 1
        # each unit's product came from a mining scan itself: no second pass
        assert device.product_calls == 0
        assert sum(scan.product is not None for scan in device.scans) >= 4


# --- tampering ------------------------------------------------------------------------


async def test_tampered_blob_chunk_is_rejected_and_never_mined(tmp_path):
    a, b = operands(40, 96, 24, seed=2)  # one unit: 48×32 padded, k 128
    expected = a.astype(np.int64) @ b.astype(np.int64)
    blobs = genuine_blobs(a, b)
    device = RecordingBackend(blas())
    async with (
        running_useful_pool(tmp_path / "pool", data_plane=False) as pool,
        trio.open_nursery() as nursery,
    ):
        proxy = TamperingProxy(pool.endpoint)
        port = await nursery.start(proxy.serve)
        async with (
            running_worker(
                [PoolEndpoint("127.0.0.1", port)], [device], useful=useful_settings(tmp_path)
            ) as worker,
            httpx.AsyncClient(base_url=api_url(pool)) as customer,
        ):
            work_id = await submit(customer, a, b)
            await wait_done(customer, work_id, 60)
            c = await fetch_result(customer, work_id)
            s = worker.stats
            assert proxy.tampered == 1
            assert s.blobs_rejected == 1
            assert metric(worker.registry, "matmine_worker_blobs_rejected_total") == 1
            # the worker dropped that session and fetched the unit again on a new one
            assert proxy.connections >= 2
            assert np.array_equal(c.astype(np.int64), expected)
            # no device ever got a workload with the spoiled rows; it did get the real ones
            assert len(proxy.spoiled_ids) == 1
            mined = {x for pair in device.prepared for x in pair}
            assert proxy.spoiled_ids[0] not in mined
            assert set(blobs) <= mined
            # only verified blobs are in the cache
            cache = worker.useful.cache
            for path in cache.dir.glob("*.blob"):
                assert blob_id(path.read_bytes()).hex() == path.stem
                assert bytes.fromhex(path.stem) in blobs
            assert s.useful_results["verified"] == 1
        nursery.cancel_scope.cancel()
