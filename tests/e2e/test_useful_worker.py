"""The worker's side of useful work: the exact product from a mined header, the blob
cache's size bound and its byte counter under a real pool, the capability switch, and
the ``[useful]`` configuration."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from protocol.envelope import ErrorInfo, Response
from protocol.errors import ErrorCode
from protocol.header import Header
from protocol.useful import RESULT_DTYPE
from protocol.workload import Shape, Workload
from tests.support.backend_checks import working_opencl_device
from tests.support.running import WrappedBackend, running_worker, wait_until
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
from worker.backends import ScanResult, open_backends
from worker.cli import build_parser, parse_size
from worker.config import (
    ConfigError,
    PoolEndpoint,
    UsefulConfig,
    WorkerConfig,
    config_from_dict,
    with_overrides,
)
from worker.delivery import exact_product


def header(time_: int) -> bytes:
    return Header(1, 1, bytes(32), bytes(32), bytes(32), time_, 0x1F00FFFF).encode()


@pytest.mark.parametrize("kind", ["blas", pytest.param("opencl", marks=pytest.mark.opencl)])
def test_the_denoised_product_of_any_mined_header_is_exactly_a_times_b(kind):
    rng = np.random.default_rng(3)
    shape = Shape(48, 32, 128, 32)
    a = rng.integers(-64, 65, size=(48, 128), dtype=np.int8)
    bt = rng.integers(-64, 65, size=(32, 128), dtype=np.int8)
    workload = Workload(shape, a, bt)
    if kind == "opencl":
        pytest.importorskip("pyopencl")
        working_opencl_device()  # skips with every device's reason when none works
    backend = blas() if kind == "blas" else open_backends("opencl", None)[0]  # PoCL here
    backend.prepare(workload)
    expected = a.astype(np.int64) @ bt.astype(np.int64).T
    for t in (1000, 1001):
        noisy = backend.product(header(t))
        assert not np.array_equal(noisy.astype(np.int64), expected)  # the noise is there
        raw = exact_product(workload, header(t), noisy)
        c = np.frombuffer(raw, dtype=RESULT_DTYPE).reshape(48, 32)
        assert np.array_equal(c.astype(np.int64), expected)
    # a product of one header denoised with another header's seed is wrong
    wrong = exact_product(workload, header(1001), backend.product(header(1000)))
    assert not np.array_equal(np.frombuffer(wrong, dtype=RESULT_DTYPE).reshape(48, 32), expected)


async def test_blob_cache_stays_within_its_bound_and_bytes_are_counted(tmp_path):
    a, b = operands(256, 96, 40, seed=4)  # 4 A blocks of 64×128 (8 KiB), one Bᵀ 48×128
    blobs = genuine_blobs(a, b)
    a_block, b_block = 64 * 128, 48 * 128
    assert sorted(blobs.values()) == [b_block] + [a_block] * 4
    bound = 2 * a_block  # room for one A block and the Bᵀ block, not two A blocks
    largest = 0
    device = RecordingBackend(blas())
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        running_worker(
            [pool.endpoint], [device], metrics_port=0, useful=useful_settings(tmp_path, bound)
        ) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
        trio.open_nursery() as nursery,
    ):
        cache = worker.useful.cache

        async def watch() -> None:
            nonlocal largest
            while True:
                largest = max(largest, cache.total_bytes)
                await trio.sleep(0.005)

        nursery.start_soon(watch)
        work_id = await submit(customer, a, b)
        await wait_done(customer, work_id, 60)
        c = await fetch_result(customer, work_id)
        nursery.cancel_scope.cancel()

        assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
        assert 0 < largest <= bound and cache.total_bytes <= bound
        assert len(list(cache.dir.glob("*.blob"))) <= 2
        # LRU: the Bᵀ block every unit uses stays cached; each A block is fetched once
        s = worker.stats
        assert s.blob_bytes == 4 * a_block + b_block
        assert s.useful_results["verified"] == 4
        async with httpx.AsyncClient() as scraper:
            text = (await scraper.get(f"{worker.metrics_urls[0]}/metrics")).text
        assert f"matmine_worker_blob_bytes_total {float(s.blob_bytes)}" in text
        assert 'matmine_worker_useful_results_total{outcome="verified"} 4.0' in text


async def test_a_blob_larger_than_the_cache_is_mined_but_not_kept(tmp_path):
    a, b = operands(40, 96, 24, seed=5)
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        running_worker([pool.endpoint], [blas()], useful=useful_settings(tmp_path, 1000)) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
    ):
        work_id = await submit(customer, a, b)
        await wait_done(customer, work_id, 60)
        c = await fetch_result(customer, work_id)
        assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
        assert worker.useful.cache.total_bytes == 0
        assert worker.stats.blob_bytes == sum(genuine_blobs(a, b).values())
        assert metric(worker.registry, "matmine_worker_blob_bytes_total") == worker.stats.blob_bytes


@pytest.mark.slow
async def test_a_worker_without_useful_work_gets_only_synthetic_jobs(tmp_path):
    a, b = operands(40, 96, 24, seed=6)
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        running_worker([pool.endpoint], [blas()], useful=UsefulConfig(enabled=False)) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
    ):
        assert worker.useful is None
        work_id = await submit(customer, a, b)
        jobs = worker.failover.active.jobs_received if worker.failover.active else 0
        with trio.fail_after(20):  # a few job refreshes (1 s apart) go by
            while worker.failover.active is None or worker.failover.active.jobs_received < jobs + 3:
                await trio.sleep(0.1)
        status = (await customer.get(f"/api/work/{work_id}")).json()
        assert status["state"] == "queued"
        assert worker.stats.blob_bytes == 0 and worker.stats.shares["accepted"] >= 1
        assert not (tmp_path / "blobs").exists()


# --- configuration ----------------------------------------------------------------------


def test_useful_section_of_the_config_file():
    config = config_from_dict(
        {"useful": {"enabled": False, "cache_dir": "/tmp/x", "cache_max_bytes": 4096}}
    )
    assert (config.useful.enabled, config.useful.cache_dir, config.useful.cache_max_bytes) == (
        False,
        "/tmp/x",
        4096,
    )
    assert str(config.useful.cache_path()) == "/tmp/x"
    with pytest.raises(ConfigError, match=r"unknown key useful\.size"):
        config_from_dict({"useful": {"size": 1}})
    with pytest.raises(ConfigError, match=r"useful\.cache_max_bytes must be an integer"):
        config_from_dict({"useful": {"cache_max_bytes": "1G"}})
    bad = config_from_dict(
        {"pool": [{"url": "127.0.0.1:1"}], "login": "a", "useful": {"cache_max_bytes": -1}}
    )
    with pytest.raises(ConfigError, match="cache_max_bytes must be ≥ 0"):
        bad.validate()


def test_default_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert WorkerConfig().useful.cache_path() == tmp_path / "matmine-worker" / "blobs"


def test_useful_flags_override_the_file():
    args = build_parser().parse_args(
        ["mine", "--no-useful", "--blob-cache", "/tmp/c", "--blob-cache-max", "64M"]
    )
    config = with_overrides(
        WorkerConfig(),
        no_useful=args.no_useful,
        blob_cache=args.blob_cache,
        blob_cache_max=args.blob_cache_max,
    )
    assert config.useful.enabled is False
    assert config.useful.cache_dir == "/tmp/c"
    assert config.useful.cache_max_bytes == 64 << 20
    untouched = with_overrides(WorkerConfig(), no_useful=None)
    assert untouched.useful.enabled is True


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("1k", 1024), ("2MiB", 2 << 20), ("1.5G", 3 << 29), ("0", 0)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1M", "1X", "inf", "1e400K", "nan"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


# --- the product in the same pass, and old backends without it ---------------------------


class NoProductBackend(WrappedBackend):
    """A backend whose ``scan`` never gives the product, even when asked
    (``want_product``): the real BLAS backend underneath."""

    def scan(
        self, header: bytes, share_target: int, should_stop: Any, want_product: bool = False
    ) -> ScanResult:
        return self.inner.scan(header, share_target, should_stop)


async def test_a_backend_without_want_product_still_delivers_through_product(tmp_path):
    a, b = operands(40, 96, 24, seed=8)
    device = NoProductBackend(blas())
    async with (
        running_useful_pool(tmp_path / "pool") as pool,
        running_worker([pool.endpoint], [device], useful=useful_settings(tmp_path)) as worker,
        httpx.AsyncClient(base_url=api_url(pool)) as customer,
    ):
        work_id = await submit(customer, a, b)
        await wait_done(customer, work_id, 60)
        c = await fetch_result(customer, work_id)
        assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
        assert worker.stats.useful_results["verified"] == 1
        assert device.product_calls == 1  # the fallback: one second pass for the one unit
        assert worker.stats.devices[device.name].restarts == 0


# --- error 21 to work.get_blob ----------------------------------------------------------


class StaleBlobProxy(TamperingProxy):
    """Forwards worker ↔ pool; answers the first ``stale`` ``work.get_blob`` requests with
    error 21 instead of the pool's data, as a pool does when the unit stopped being the
    session's between the job and the fetch."""

    def __init__(self, pool: PoolEndpoint, stale: int = 1) -> None:
        super().__init__(pool)
        self.stale = stale

    def _maybe_tamper(self, frame: dict) -> dict:
        result = frame.get("result")
        if not (isinstance(result, dict) and set(result) == {"data", "total"}):
            return frame
        self.blob_answers += 1
        if self.tampered >= self.stale:
            return frame
        self.tampered += 1
        return Response(
            frame["id"],
            error=ErrorInfo(
                ErrorCode.STALE,
                "work.get_blob: blob is not an operand of this session's current work unit",
            ),
        ).to_wire()


@pytest.mark.slow
async def test_error_21_to_get_blob_waits_for_the_next_job_without_reconnecting(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="worker")
    a, b = operands(40, 96, 24, seed=7)
    device = RecordingBackend(blas())
    async with (
        running_useful_pool(tmp_path / "pool", data_plane=False) as pool,
        trio.open_nursery() as nursery,
    ):
        proxy = StaleBlobProxy(pool.endpoint)
        port = await nursery.start(proxy.serve)
        async with (
            running_worker(
                [PoolEndpoint("127.0.0.1", port)], [device], useful=useful_settings(tmp_path)
            ) as worker,
            httpx.AsyncClient(base_url=api_url(pool)) as customer,
        ):
            await wait_until(lambda: worker.failover.active is not None, 10)
            session = worker.failover.active
            work_id = await submit(customer, a, b)
            await wait_done(customer, work_id, 60)
            c = await fetch_result(customer, work_id)
            s = worker.stats
            assert proxy.tampered == 1 and proxy.blob_answers >= 2
            # the refused fetch left the session alone: same connection, no device restart
            assert proxy.connections == 1 and worker.failover.active is session
            assert s.devices[device.name].restarts == 0 and s.blobs_rejected == 0
            stale = [r for r in caplog.records if "no longer this session's" in r.getMessage()]
            assert len(stale) == 1 and stale[0].levelno == logging.INFO
            assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]
            # the next job (a refresh of the same unit) fetched the operands and finished it
            assert np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
            assert s.useful_results == {"verified": 1, "rejected": 0, "failed": 0}
            assert s.blob_bytes == sum(genuine_blobs(a, b).values())
        nursery.cancel_scope.cancel()
