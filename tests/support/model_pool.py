"""The real pool with model jobs on for the end-to-end tests, and its customer's side: a
model registered and a batch inferred over HTTP, ``Y`` fetched once done; a cheating
device that fakes one row of one layer."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from pool.app import run_pool
from pool.config_rules import validate
from protocol.model import Model, save_model
from protocol.model_work import weight_roots
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


@asynccontextmanager
async def failed_cheat(
    pool: RunningPool, client: httpx.AsyncClient, tmp: Path, model: Model, x: np.ndarray
) -> AsyncIterator[tuple[int, FakingBackend]]:
    """A worker that fakes row 9 of layer 1 (its own check off) runs a batch of ``x``, every
    pair of its unit drawn, until the audit failed; yields the batch and the cheat while
    the worker is still connected."""
    cheat = FakingBackend(blas(), weight_roots(model, 32)[1], row=9)
    pool.handle.context.models.config.challenges = 4000  # every pair of the tiny unit
    async with running_worker(
        [pool.endpoint],
        [cheat],
        useful=useful_settings(tmp / "c"),
        model=model_settings(tmp / "c", check_products=False),
    ) as worker:
        item = await infer(client, model, x)
        with trio.fail_after(60):
            while worker.models is None or not worker.models.results["failed"]:
                await trio.sleep(0.05)
        yield item, cheat
