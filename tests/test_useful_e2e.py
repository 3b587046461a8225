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

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio
from prometheus_client import generate_latest

from pool.app import run_pool
from pool.config import validate
from protocol.framing import FrameDecoder, encode_frame
from protocol.useful import blob_id, plan_product, unit_operands
from worker.backends import open_backends
from worker.config import PoolEndpoint, UsefulConfig

from .worker_helpers import RunningPool, WrappedBackend, pool_config, running_worker

SHARE_DIFFICULTY = 2.0**-6  # tiny headers mine at ~1000/s here: ≈ 16 shares/s, no flood
UNIT = 64


@asynccontextmanager
async def running_useful_pool(data_dir: Path, **useful: Any) -> AsyncIterator[RunningPool]:
    """The real pool with its HTTP API on 127.0.0.1 and small useful-work units."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = pool_config(data_dir, share_difficulty=SHARE_DIFFICULTY)
    config.http.enabled = True
    config.http.host = "127.0.0.1"
    config.http.port = 0
    # an idle session picks a newly queued unit up with its next job at the latest
    config.work.job_refresh_seconds = 1.0
    settings = {"unit_m": UNIT, "unit_n": UNIT, "r": 32, **useful}
    for key, value in settings.items():
        setattr(config.useful, key, value)
    validate(config)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        yield RunningPool(handle, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


def api_url(pool: RunningPool) -> str:
    return f"http://127.0.0.1:{pool.handle.http_port}"


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def operands(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-64, 65, size=(m, k), dtype=np.int8)
    b = rng.integers(-64, 65, size=(k, n), dtype=np.int8)
    return a, b


def genuine_blobs(a: np.ndarray, b: np.ndarray, unit_m: int = UNIT, unit_n: int = UNIT,
                  r: int = 32) -> dict[bytes, int]:
    """Every operand blob the pool makes of ``A·B``: id → size in bytes."""
    plan = plan_product(a.shape[0], b.shape[1], a.shape[1], r=r, unit_m=unit_m, unit_n=unit_n)
    blobs: dict[bytes, int] = {}
    bt = np.ascontiguousarray(b.T)
    for unit in plan.units:
        ua, ub = unit_operands(a, bt, unit)
        for x in (ua, ub):
            blobs[blob_id(x.tobytes())] = x.size
    return blobs


async def submit(client: httpx.AsyncClient, a: np.ndarray, b: np.ndarray) -> str:
    answer = await client.post("/api/work", content=npy(a) + npy(b),
                               headers={"Content-Type": "application/x-npy"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def wait_done(client: httpx.AsyncClient, work_id: str, timeout: float) -> dict:
    with trio.fail_after(timeout):
        while True:
            status = (await client.get(f"/api/work/{work_id}")).json()
            assert status["state"] != "failed", status
            if status["state"] == "done":
                return status
            await trio.sleep(0.1)


async def fetch_result(client: httpx.AsyncClient, work_id: str) -> np.ndarray:
    answer = await client.get(f"/api/work/{work_id}/result")
    assert answer.status_code == 200, answer.text
    return np.load(io.BytesIO(answer.content), allow_pickle=False)


def metric(registry: Any, name: str, labels: str = "") -> float:
    """One sample of a prometheus registry, read from its text exposition."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise KeyError(key)


class RecordingBackend(WrappedBackend):
    """The real BLAS backend; remembers the blob ids of every workload it was given."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.prepared: list[tuple[bytes, bytes]] = []

    def prepare(self, workload: Any) -> None:
        self.prepared.append((blob_id(workload.a.tobytes()), blob_id(workload.bt.tobytes())))
        super().prepare(workload)


def blas() -> Any:
    return open_backends("blas", None, threads=1)[0]


def useful_settings(tmp_path: Path, max_bytes: int = 1 << 26) -> UsefulConfig:
    return UsefulConfig(enabled=True, cache_dir=str(tmp_path / "blobs"),
                        cache_max_bytes=max_bytes)


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
        assert metric(pool.handle.registry, "matmine_pool_result_checks_total",
                      'outcome="pass"') == 4
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


@dataclass
class TamperingProxy:
    """Forwards worker ↔ pool; flips one byte of the first ``work.get_blob`` answer."""

    pool: PoolEndpoint
    tampered: int = 0
    blob_answers: int = 0
    connections: int = 0
    port: int = 0
    spoiled_ids: list[bytes] = field(default_factory=list)  # ids of whole spoiled blobs

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, worker: trio.SocketStream) -> None:
        self.connections += 1
        pool = await trio.open_tcp_stream(self.pool.host, self.pool.port)
        async with worker, pool, trio.open_nursery() as nursery:
            nursery.start_soon(self._upstream, worker, pool, nursery.cancel_scope)
            nursery.start_soon(self._downstream, pool, worker, nursery.cancel_scope)

    @staticmethod
    async def _upstream(src: trio.SocketStream, dst: trio.SocketStream,
                        scope: trio.CancelScope) -> None:
        try:
            async for data in src:
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _downstream(self, src: trio.SocketStream, dst: trio.SocketStream,
                          scope: trio.CancelScope) -> None:
        decoder = FrameDecoder(1 << 20)
        try:
            async for data in src:
                out = b""
                for frame in decoder.feed(data):
                    out += encode_frame(self._maybe_tamper(frame))
                if out:
                    await dst.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _maybe_tamper(self, frame: dict) -> dict:
        result = frame.get("result")
        if not (isinstance(result, dict) and set(result) == {"data", "total"}):
            return frame
        self.blob_answers += 1
        data = result["data"]
        if self.tampered or not data:
            return frame
        self.tampered += 1
        spoiled = bytearray(data)
        spoiled[len(spoiled) // 2] ^= 0x01
        if len(spoiled) == result["total"]:  # the chunk is the whole blob
            self.spoiled_ids.append(blob_id(bytes(spoiled)))
        return {**frame, "result": {**result, "data": bytes(spoiled)}}


async def test_tampered_blob_chunk_is_rejected_and_never_mined(tmp_path):
    a, b = operands(40, 96, 24, seed=2)  # one unit: 48×32 padded, k 128
    expected = a.astype(np.int64) @ b.astype(np.int64)
    blobs = genuine_blobs(a, b)
    device = RecordingBackend(blas())
    async with running_useful_pool(tmp_path / "pool") as pool, trio.open_nursery() as nursery:
        proxy = TamperingProxy(pool.endpoint)
        port = await nursery.start(proxy.serve)
        async with (
            running_worker([PoolEndpoint("127.0.0.1", port)], [device],
                           useful=useful_settings(tmp_path)) as worker,
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
