"""Model jobs through the real pool and the real worker on loopback (SPEC §12.12.8): a
3-layer model registered over HTTP, a batch inferred (``POST /api/work/infer``), units
leased to the worker's ``"model-1"`` session as stratum jobs, layer shares submitted as
the layers finish and held until the audit, ``Y`` equal to ``reference_pass`` bit for bit,
the weights fetched once for two units; a worker that fakes one row of one layer is
caught by the audit, its shares are voided and the unit goes to another worker."""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from pool.app import run_pool
from pool.config_rules import validate
from protocol.header import Header
from protocol.model import Model, reference_pass, save_model
from protocol.model_work import layer_shape, weight_roots
from tests.support.model_jobs import batch, make_model
from tests.support.running import RunningPool, WrappedBackend, pool_config, running_worker
from tests.support.useful_pool import blas, npy, useful_settings
from worker.model_settings import ModelConfig


@asynccontextmanager
async def model_pool(data_dir: Path, network: float = 1e9) -> AsyncIterator[RunningPool]:
    """The real pool with its HTTP API; every ticket of a k' = 128 layer is a share."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = pool_config(data_dir, share_difficulty=1e-7, network_difficulty=network)
    config.http.enabled, config.http.host, config.http.port = True, "127.0.0.1", 0
    config.work.job_refresh_seconds = 1.0
    config.useful.r = config.models.r = 32
    config.models.unit_rows, config.models.budget_ppm = 32, 10**6  # 2 units of 64 rows
    config.limits.invalid_window = 10**6  # a voided unit's strike stays in view
    config.limits.invalid_min_shares = 10**6  # (and never escalates: not judged here)
    validate(config)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        yield RunningPool(handle, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


def model_settings(tmp: Path, **kw: Any) -> ModelConfig:
    return ModelConfig(cache_dir=str(tmp / "models"), **kw)


async def infer(client: httpx.AsyncClient, model: Model, x: np.ndarray) -> int:
    r = await client.post("/api/models", params={"name": "mlp3"}, content=save_model(model))
    assert r.status_code in (200, 201), r.text
    r = await client.post("/api/work/infer", params={"model": "mlp3"}, content=npy(x))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def wait_done(client: httpx.AsyncClient, item: int, seconds: float) -> np.ndarray:
    with trio.fail_after(seconds):
        while (await client.get(f"/api/work/infer/{item}")).json()["state"] != "done":
            await trio.sleep(0.05)
    r = await client.get(f"/api/work/infer/{item}/result")
    assert r.status_code == 200
    return np.load(io.BytesIO(r.content), allow_pickle=False)


async def test_a_batch_goes_through_the_pool_and_the_worker(tmp_path: Path) -> None:
    model = make_model()
    x = batch(64, model.input_width)
    async with (
        model_pool(tmp_path / "pool") as pool,
        running_worker(
            [pool.endpoint],
            [blas()],
            useful=useful_settings(tmp_path),
            model=model_settings(tmp_path),
        ) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        desk = pool.handle.context.models
        before = await pool.shares_received()
        item = await infer(client, model, x)
        y = await wait_done(client, item, 60)
        assert y.dtype == np.int32 and np.array_equal(y, reference_pass(model, x).output)
        assert worker.models is not None and worker.models.results["verified"] == 2
        leases = [lease for lease in desk.leases.values() if lease.verdict == (True, "")]
        assert len(leases) == 2 and all(lease.held for lease in leases)
        held = sum(len(lease.held) for lease in leases)
        with trio.fail_after(10):  # credited into the ledger once each audit passed
            while await pool.shares_received() - before < held:
                await trio.sleep(0.05)
        assert {h.share.head.layer for lease in leases for h in lease.held} == {0, 1, 2}
        blobs = sum(len(b) for b in desk._weights[model.model_id].blobs.values())
        assert desk.served_bytes == blobs + 64 * model.input_width  # the weights went out once
        assert worker.models.cache.stats.fetches == 1
        # the worker counts every layer it mined as useful scanned MACs of its device
        shapes = [layer_shape(model, i, 32, 32) for _ in range(2) for i in range(model.depth)]
        assert worker.stats.scanned_macs["useful"] == sum(s.m * s.n * s.k for s in shapes)
        assert worker.stats.useful_fraction is not None and worker.stats.useful_fraction > 0
        # the passes count as verified useful work, their layer shares as mined useful work
        stats = (await client.get("/api/pool")).json()["useful"]
        assert stats["useful_macs"] == 64 * model.macs_per_row
        metrics = pool.handle.useful.metrics
        assert metrics.mined_macs == pytest.approx(
            sum(h.record.difficulty for lease in leases for h in lease.held) * 2**32
        )


class FakingBackend(WrappedBackend):
    """A cheating device: on the layer whose weights have ``b_root``, row ``row`` of the
    product is altered (the worker's own Freivalds check is off)."""

    def __init__(self, inner: Any, b_root: bytes, row: int) -> None:
        super().__init__(inner)
        self.b_root, self.row, self.faking, self.faked = b_root, row, False, 0

    def prepare(self, workload: Any) -> None:
        self.faking = workload.b_root == self.b_root
        super().prepare(workload)

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        result = self.inner.scan(header, share_target, should_stop, want_product)
        if self.faking and want_product:
            product = result.product if result.product is not None else None
            if product is not None:
                product[self.row] += 1 << 20
                self.faked += 1
        return result

    def product(self, header: bytes) -> Any:
        product = self.inner.product(header)
        if self.faking:
            product[self.row] += 1 << 20
            self.faked += 1
        return product


async def test_a_faked_row_is_caught_by_the_audit_and_its_shares_voided(tmp_path: Path) -> None:
    model = make_model()
    x = batch(32, model.input_width, seed=5)
    cheat = FakingBackend(blas(), weight_roots(model, 32)[1], row=9)
    async with (
        model_pool(tmp_path / "pool") as pool,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        desk = pool.handle.context.models
        desk.config.challenges = 4000  # every pair of the tiny unit is drawn
        async with running_worker(
            [pool.endpoint],
            [cheat],
            useful=useful_settings(tmp_path / "c"),
            model=model_settings(tmp_path / "c", check_products=False),
        ) as worker:
            item = await infer(client, model, x)
            with trio.fail_after(60):
                while worker.models is None or not worker.models.results["failed"]:
                    await trio.sleep(0.05)
            (lease,) = desk.leases.values()
            assert cheat.faked and lease.verdict is not None and not lease.verdict[0]
            assert "row 9" in lease.verdict[1] and "layer 1" in lease.verdict[1]
            assert lease.voided > 0 and not lease.held
            session = [s for s in pool.handle.context.sessions if s.work_key == lease.session]
            with trio.fail_after(10):  # counted against it like a wrong product
                while not session[0].judge.invalid_fraction > 0:
                    await trio.sleep(0.05)
            h = pool.handle
            records = [held.record for held in lease.void]
            new = await trio.to_thread.run_sync(h.ledger.insert_shares, records)
            assert new == len(records)  # none of its shares had been credited
        async with running_worker(
            [pool.endpoint],
            [blas()],
            useful=useful_settings(tmp_path / "h"),
            model=model_settings(tmp_path / "h"),
        ):
            y = await wait_done(client, item, 60)
        assert np.array_equal(y, reference_pass(model, x).output)


class HeldFirstPass(WrappedBackend):
    """A device whose first model layer (a scan with its product) waits for ``go``."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.waiting, self.go = threading.Event(), threading.Event()

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        if want_product and not self.waiting.is_set():
            self.waiting.set()
            self.go.wait(30)
        return self.inner.scan(header, share_target, should_stop, want_product)


async def test_a_unit_leased_again_after_a_reconnect_is_run_again(tmp_path: Path) -> None:
    model = make_model(dims=((40, 24),))
    x = batch(32, model.input_width, seed=9)
    device = HeldFirstPass(blas())
    async with (
        model_pool(tmp_path / "pool") as pool,
        running_worker(
            [pool.endpoint],
            [device],
            useful=useful_settings(tmp_path),
            model=model_settings(tmp_path),
        ) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        item = await infer(client, model, x)
        await trio.to_thread.run_sync(device.waiting.wait, 30)
        first = worker.failover.active
        assert first is not None
        first.close()  # the lease ends with the connection; the unit is queued again
        with trio.fail_after(10):
            while worker.failover.active in (None, first):
                await trio.sleep(0.05)
        device.go.set()  # the first lease's pass goes on; its delivery is refused
        y = await wait_done(client, item, 60)  # the unit, leased again, was run again
        assert np.array_equal(y, reference_pass(model, x).output)
        assert worker.models is not None and worker.models.results["verified"] == 1
        assert len(pool.handle.context.models.leases) == 2


async def test_a_layer_share_that_meets_the_network_is_a_block_the_node_accepts(
    tmp_path: Path,
) -> None:
    model = make_model()
    x = batch(64, model.input_width, seed=7)
    async with (
        model_pool(tmp_path / "pool", network=4e-7) as pool,  # about one ticket in four
        running_worker(
            [pool.endpoint],
            [blas()],
            useful=useful_settings(tmp_path),
            model=model_settings(tmp_path),
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        desk = pool.handle.context.models
        item = await infer(client, model, x)
        y = await wait_done(client, item, 60)
        assert np.array_equal(y, reference_pass(model, x).output)
        h = pool.handle
        blocks = await trio.to_thread.run_sync(h.ledger.blocks, 500, limiter=h.ledger_limiter)
        layer_headers = {
            Header.decode(held.share.head.header).hash()
            for lease in desk.leases.values()
            for held in lease.held
        }
        found = [b for b in blocks if b.hash in layer_headers]
        assert found, "no block from a model layer share"
        # At one ticket in four, two blocks of one template can race: the node takes the
        # first and refuses the other as "stale". Nothing else may refuse a layer block.
        assert any(b.status != "rejected" for b in found)
        assert all(b.reason == "stale" for b in found if b.status == "rejected"), found
