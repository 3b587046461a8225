"""Useful work end to end over the HTTP data plane (SPEC §12.7): real pool, real worker.

The worker sees a blob job that names the data plane, fetches the operands with ``GET``
and returns each unit's C with ``PUT``; the stratum connection carries only control. A
pool whose data plane cannot be reached leaves the worker on the stratum ``work.*`` path,
and so does a pool that names none (what an old worker always uses).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from protocol.useful import plan_product
from tests.support.running import free_port, running_worker
from tests.support.useful_pool import (
    RecordingBackend,
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


def data_bytes(pool, direction: str, path: str) -> float:
    labels = f'direction="{direction}",path="{path}"'
    return metric(pool.handle.registry, "matmine_pool_data_bytes_total", labels)


@pytest.mark.parametrize("plane", ["http", "unreachable", "stratum"])
async def test_product_round_trips_exactly_on_every_path(tmp_path, plane):
    a, b = operands(100, 96, 80, seed=3)  # 2×2 units
    expected = a.astype(np.int64) @ b.astype(np.int64)
    blobs = genuine_blobs(a, b)
    async with (
        running_useful_pool(tmp_path / "pool", data_plane=plane != "stratum") as pool,
        running_worker(
            [pool.endpoint], [RecordingBackend(blas())], useful=useful_settings(tmp_path)
        ) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
    ):
        useful = pool.handle.useful
        assert useful is not None
        if plane == "unreachable":  # nothing listens there: the worker falls back
            useful.data_url = f"http://127.0.0.1:{free_port()}/data"
        work_id = await submit(customer, a, b)
        await wait_done(customer, work_id, 60)
        c = await fetch_result(customer, work_id)
        assert np.array_equal(c.astype(np.int64), expected)
        assert worker.stats.useful_results == {"verified": 4, "rejected": 0, "failed": 0}
        assert worker.stats.blob_bytes == sum(blobs.values())  # each blob fetched once
        plan = plan_product(100, 80, 96, r=32, unit_m=64, unit_n=64)
        result_bytes = sum(unit.result_bytes for unit in plan.units)
        http_out, http_in = data_bytes(pool, "out", "http"), data_bytes(pool, "in", "http")
        st_out, st_in = data_bytes(pool, "out", "stratum"), data_bytes(pool, "in", "stratum")
        if plane == "http":
            assert http_out == sum(blobs.values()) and http_in == result_bytes
            assert st_out == 0 and st_in == 0  # the stratum connection carried control only
        else:
            assert http_out == 0 and http_in == 0
            assert st_out == sum(blobs.values()) and st_in == result_bytes
