"""Model jobs through the real pool and the real worker on loopback (SPEC §12.12.8): a
3-layer model registered over HTTP, a batch inferred (``POST /api/work/infer``), units
leased to the worker's ``"model-1"`` session as stratum jobs, layer shares submitted as
the layers finish and held until the audit, ``Y`` equal to ``reference_pass`` bit for bit,
the weights fetched once for two units; a worker that fakes one row of one layer is
caught by the audit, its shares are voided and the unit goes to another worker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from protocol.header import Header
from protocol.model import reference_pass
from protocol.model_work import layer_shape
from tests.support.model_jobs import batch, make_model
from tests.support.model_pool import failed_cheat, infer, model_pool, model_settings, wait_done
from tests.support.running import WrappedBackend, running_worker
from tests.support.useful_pool import blas, useful_settings


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


async def test_a_faked_row_is_caught_by_the_audit_and_its_shares_voided(tmp_path: Path) -> None:
    model = make_model()
    x = batch(32, model.input_width, seed=5)
    async with (
        model_pool(tmp_path / "pool") as pool,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        desk = pool.handle.context.models
        async with failed_cheat(pool, client, tmp_path, model, x) as (item, cheat):
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
