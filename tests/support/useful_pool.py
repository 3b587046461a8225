"""A real pool with its HTTP work API and useful work, and a customer's side of it."""

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
from tests.support.running import RunningPool, WrappedBackend, pool_config
from worker.backends import open_backends
from worker.config import PoolEndpoint, UsefulConfig

SHARE_DIFFICULTY = 2.0**-6  # tiny headers mine at ~1000/s here: ≈ 16 shares/s, no flood


UNIT = 64


@asynccontextmanager
async def running_useful_pool(
    data_dir: Path, data_plane: bool = True, **useful: Any
) -> AsyncIterator[RunningPool]:
    """The real pool with its HTTP API on 127.0.0.1 and small useful-work units; its blob
    jobs name the HTTP data plane unless ``data_plane`` is False (the stratum path only,
    as for a worker that does not know it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = pool_config(data_dir, share_difficulty=SHARE_DIFFICULTY)
    config.http.enabled = True
    config.http.host = "127.0.0.1"
    config.http.port = 0
    # an idle session picks a newly queued unit up with its next job at the latest
    config.work.job_refresh_seconds = 1.0
    # units cut along m and n unless a test asks for whole-B units (unit_b_max_bytes)
    settings = {"unit_m": UNIT, "unit_n": UNIT, "r": 32, "unit_b_max_bytes": 0, **useful}
    for key, value in settings.items():
        setattr(config.useful, key, value)
    validate(config)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        if not data_plane and handle.useful is not None:
            handle.useful.data_url = None
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


def genuine_blobs(
    a: np.ndarray, b: np.ndarray, unit_m: int = UNIT, unit_n: int = UNIT, r: int = 32
) -> dict[bytes, int]:
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
    answer = await client.post(
        "/api/work", content=npy(a) + npy(b), headers={"Content-Type": "application/x-npy"}
    )
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
    return UsefulConfig(enabled=True, cache_dir=str(tmp_path / "blobs"), cache_max_bytes=max_bytes)


@dataclass
class TamperingProxy:
    """Forwards worker ↔ pool; flips one byte of the first ``work.get_blob`` answer."""

    pool: PoolEndpoint
    tampered: int = 0
    blob_answers: int = 0
    connections: int = 0
    port: int = 0
    spoiled_ids: list[bytes] = field(default_factory=list)  # ids of whole spoiled blobs

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
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
    async def _upstream(
        src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in src:
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _downstream(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
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
