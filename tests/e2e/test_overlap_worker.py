"""The worker never waits for its own results (SPEC §12.7, prefetch and overlap): real pool,
real worker, real HTTP data plane on 127.0.0.1.

A :class:`~tests.support.holding_proxy.HoldingProxy` in front of the pool's data plane lets
every result ``PUT`` through to the pool but holds the pool's answer: the unit is delivered
and the pool has sent the next job, yet the worker's upload has not finished. The worker
must mine the next unit meanwhile, take its product, and keep it waiting behind the upload
in flight (one upload at a time); the verdicts are booked when the answers arrive. The
order is observed through the proxy, the pool's counters and the worker's stats, never by
timing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from protocol.useful import blob_id, plan_product
from tests.support.holding_proxy import HoldingProxy
from tests.support.http_proxy import FaultyProxy
from tests.support.running import WrappedBackend, running_worker, wait_until
from tests.support.useful_pool import (
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


class ScanLog(WrappedBackend):
    """The real BLAS backend; logs which workload each scan was of."""

    def __init__(self, inner: Any, unit_blobs: set[bytes]) -> None:
        super().__init__(inner)
        self.unit_blobs = unit_blobs
        self.root = b""
        self.units: list[bytes] = []  # work roots of the units prepared, in order
        self.log: list[tuple[bytes, bool]] = []  # (work root, want_product) per scan

    def prepare(self, workload: Any) -> None:
        self.root = workload.work_root
        if blob_id(workload.a.tobytes()) in self.unit_blobs and self.root not in self.units:
            self.units.append(self.root)
        super().prepare(workload)

    def scan(self, header: bytes, share_target: int, should_stop: Any, want: bool = False) -> Any:
        result = super().scan(header, share_target, should_stop, want)
        self.log.append((self.root, want))
        return result

    def scans_of(self, root: bytes) -> int:
        return sum(1 for r, _ in self.log if r == root)


@pytest.mark.parametrize("wait", [0.0, 5.0], ids=["mine-on", "wait-for-next-job"])
@pytest.mark.slow
async def test_the_next_unit_is_mined_while_the_last_result_uploads(tmp_path, wait):
    """With ``wait_after_product`` 0 a device mines on a unit whose product it took (as
    synthetic work); by default it waits for the pool's next job instead."""
    a, b = operands(128, 96, 64, seed=5)  # two units: two A blocks, one shared Bᵀ
    blobs = genuine_blobs(a, b)
    plan = plan_product(128, 64, 96, r=32, unit_m=64, unit_n=64)
    assert len(plan.units) == 2 and len(blobs) == 3
    device = ScanLog(blas(), set(blobs))
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        trio.open_nursery() as proxies,
    ):
        proxy = HoldingProxy(pool.handle.http_port, hold=b"PUT ")
        await proxies.start(proxy.serve)
        assert pool.handle.useful is not None
        pool.handle.useful.data_url = f"{proxy.url}/data"
        async with (
            running_worker(
                [pool.endpoint],
                [device],
                metrics_port=0,
                useful=replace(useful_settings(tmp_path), wait_after_product=wait),
            ) as worker,
            httpx.AsyncClient(base_url=api_url(pool)) as customer,
        ):
            useful = worker.useful
            assert useful is not None
            stats = worker.stats
            work_id = await submit(customer, a, b)
            # the first unit's result is in the pool, its answer held: the pool has sent
            # the next unit, and the worker mines it and takes its product ...
            await wait_until(lambda: proxy.held == 1 and len(device.units) == 2, 30)
            first, second = device.units
            await wait_until(lambda: useful.delivery.waiting == 1, 30)
            assert useful.delivery.ahead == 1  # taken for denoising ahead; no upload yet
            # ... which waits behind the upload in flight
            scans = device.scans_of(second)
            if wait:  # the device waits for the next job: no header of a done unit
                await trio.sleep(1.0)  # a scan of this unit takes milliseconds
                assert device.scans_of(second) == scans
            else:  # the device mines on
                await wait_until(lambda: device.scans_of(second) >= scans + 3, 30)
                # the second unit's headers after its product was taken are not useful work
                assert [want for root, want in device.log if root == second][-3:] == [False] * 3
            assert proxy.held == 1, proxy.request_lines  # one upload at a time
            assert useful.delivery.uploading == first
            assert stats.useful_results == {"verified": 0, "rejected": 0, "failed": 0}
            proxy.release.set()
            await wait_done(customer, work_id, 60)
            c = await fetch_result(customer, work_id)
            assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
            await wait_until(lambda: stats.useful_results["verified"] == 2, 30)
            assert stats.useful_results == {"verified": 2, "rejected": 0, "failed": 0}
            assert proxy.held == 2  # each result went up once

            # the shared Bᵀ was served once for both units: the cache kept it
            served = metric(
                pool.handle.registry,
                "matmine_pool_data_bytes_total",
                'direction="out",path="http"',
            )
            assert served == sum(blobs.values())
            results = sum(unit.result_bytes for unit in plan.units)
            assert stats.useful_bytes == {"in": sum(blobs.values()), "out": results}

            # MACs by kind add up; exactly one header per unit was useful (one device)
            kinds = dict(stats.scanned_macs)
            assert kinds["useful"] == sum(u.shape.macs_per_header for u in plan.units)
            assert kinds["synthetic"] > 0
            assert kinds["useful"] + kinds["synthetic"] == sum(
                d.macs for d in stats.devices.values()
            )
            async with httpx.AsyncClient() as scraper:
                base = worker.metrics_urls[0]
                text = (await scraper.get(f"{base}/metrics")).text
                summary = (await scraper.get(f"{base}/api/summary")).json()
            for kind in ("useful", "synthetic"):
                line = f'matmine_worker_scanned_macs_total{{kind="{kind}"}} '
                assert any(x.startswith(line) for x in text.splitlines()), kind
            assert f'matmine_worker_useful_bytes_total{{direction="out"}} {float(results)}' in text
            assert summary["useful"]["scanned_macs"]["useful"] == kinds["useful"]
            assert summary["useful"]["bytes"]["in"] == sum(blobs.values())
            assert 0 < summary["useful"]["useful_fraction"] < 1
        proxies.cancel_scope.cancel()


async def test_a_background_upload_cut_midway_resumes_and_is_verified(tmp_path):
    a, b = operands(64, 96, 64, seed=6)  # one unit: its A, its Bᵀ, then its result
    result_bytes = 64 * 64 * 4
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        trio.open_nursery() as proxies,
    ):
        # the first body going up is the result PUT's (blob GETs send none): cut it midway,
        # on whichever connection it travels
        proxy = FaultyProxy(
            pool.handle.http_port, direction="up", cut_after=5000, faulty=10**6, cut_limit=1
        )
        await proxies.start(proxy.serve)
        assert pool.handle.useful is not None
        pool.handle.useful.data_url = f"{proxy.url}/data"
        async with (
            running_worker([pool.endpoint], [blas()], useful=useful_settings(tmp_path)) as worker,
            httpx.AsyncClient(base_url=api_url(pool)) as customer,
        ):
            work_id = await submit(customer, a, b)
            await wait_done(customer, work_id, 60)
            c = await fetch_result(customer, work_id)
            assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
            stats = worker.stats
            await wait_until(lambda: stats.useful_results["verified"] == 1, 30)
            assert proxy.cuts == 1 and proxy.connections >= 4
            assert stats.useful_results == {"verified": 1, "rejected": 0, "failed": 0}
            # the cut piece went twice: what the pool held was kept, the rest sent again
            assert result_bytes < stats.useful_bytes["out"] < 2 * result_bytes
            served = metric(
                pool.handle.registry, "matmine_pool_data_bytes_total", 'direction="in",path="http"'
            )
            assert served == result_bytes
        proxies.cancel_scope.cancel()
