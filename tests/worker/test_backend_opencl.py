"""The OpenCL backend (PoCL in CI) against the mmpow-1 vectors and the reference miner."""

import logging
import os

import numpy as np
import pytest

from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from tests.support.backend_checks import (
    CASES,
    check_vector_case,
    check_winners,
    working_opencl_device,
)
from worker.autotune import (
    CACHE_FILE,
    ITEM_CONFIG,
    SAFE_CONFIG,
    Autotuner,
    KernelConfig,
    shape_key,
)
from worker.backends import BackendError, open_backends
from worker.backends.opencl import OpenCLBackend, list_opencl_devices

cl = pytest.importorskip("pyopencl")
if not list_opencl_devices():
    pytest.skip("no OpenCL platform", allow_module_level=True)

pytestmark = pytest.mark.opencl
DEVICE = working_opencl_device()  # not always 0:0: a broken platform may come first

SMALL = KernelConfig(bm=16, bn=16, wm=4, wn=4, kc=16, vw=4, acc_float=True)
# 16 work-items across, each with interleaved columns j*16+lx (the other fold path)
INTERLEAVED = KernelConfig(bm=16, bn=16, wm=4, wn=1, kc=16, vw=4, interleave=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("matmine-cache")


@pytest.fixture(scope="module")
def backends(cache_dir):
    """Both kernel styles on one device, each compiled once (16×16 blocks fit every shape)."""
    return {
        "tiled": OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=SMALL),
        "item": OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=ITEM_CONFIG),
        "interleaved": OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=INTERLEAVED),
    }


@pytest.fixture(params=["tiled", "item", "interleaved"])
def backend(request, backends):
    return backends[request.param]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_tickets_and_product(case, backend):
    check_vector_case(backend, case)


@pytest.mark.parametrize("shape", [Shape(64, 96, 256, 64), Shape(32, 48, 512, 128)])
def test_winners_are_exactly_the_reference_winners(shape, backend):
    check_winners(backend, shape)


def test_winner_buffer_overflow_falls_back_to_host_digests(cache_dir):
    shape = Shape(48, 32, 128, 32)
    workload = Workload.synthetic(bytes(32), shape)
    small = OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=SMALL, winner_cap=2)
    small.prepare(workload)
    header = os.urandom(128)
    result = small.scan(header, 1 << 256, lambda: False)
    assert result.winners == mine_header(header, workload).winners(1 << 256, shape.k)


def test_job_switch_mid_scan(cache_dir):
    shape = Shape(128, 32, 256, 64)
    workload = Workload.synthetic(bytes(32), shape)
    # tiny launch budget: every launch covers one block row of tiles (8 launches in all)
    dev = OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=SMALL, launch_seconds=1e-9)
    dev.prepare(workload)
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3

    result = dev.scan(os.urandom(128), 1 << 256, stop_after_three, want_product=True)
    assert not result.complete
    assert result.product is None  # a partial product is no product
    assert result.macs == 3 * 16 * shape.n * shape.k
    assert {ti for ti, _, _ in result.winners} == {0, 1, 2}
    header = os.urandom(128)  # the new job
    again = dev.scan(header, 1 << 256, lambda: False, want_product=True)
    assert again.complete
    reference = mine_header(header, workload)
    assert again.winners == reference.winners(1 << 256, shape.k)
    assert np.array_equal(again.product, reference.noisy_product)


def test_plain_gemm_is_the_plain_product(backend):
    shape = Shape(32, 48, 256, 64)
    workload = Workload.synthetic(bytes(range(32)), shape)
    backend.prepare(workload)
    expected = workload.a.astype(np.int64) @ workload.bt.astype(np.int64).T
    assert np.array_equal(backend.plain_gemm(), expected)
    assert np.array_equal(backend.plain_gemm(banded=False), expected)


def test_autotune_cache_round_trip(cache_dir, tmp_path):
    shape = Shape(64, 64, 256, 64)
    workload = Workload.synthetic(bytes(32), shape)
    dev = OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=SMALL)
    dev.prepare(workload)
    other = KernelConfig(bm=32, bn=32, wm=4, wn=4, kc=16, vw=4, acc_float=True)
    key = shape_key("dev", "drv", shape)
    tuner = Autotuner(tmp_path)
    first = tuner.tune(key, [SMALL, other], lambda c: dev.measure(c, seconds=0.05))
    assert not first.from_cache and set(first.rates) == {str(SMALL), str(other)}
    assert (tmp_path / CACHE_FILE).exists()
    again = Autotuner(tmp_path).tune(key, [SMALL, other], lambda c: pytest.fail("re-measured"))
    assert again.from_cache and again.config == first.config
    # a corrupt cache file is ignored (re-measured), not fatal
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert Autotuner(tmp_path).lookup(key) is None
    # a backend that autotunes records its choice under its device key
    tuned = OpenCLBackend(*DEVICE, cache_dir=tmp_path, tune_seconds=0.01)
    tuned.prepare(workload)
    device_key = tuned.autotune_key(shape)
    assert tuned.device.name.strip() in device_key and "64x64x256/r64" in device_key
    assert Autotuner(tmp_path).lookup(device_key) == tuned.config


def test_devices_and_bad_input(cache_dir):
    devices = list_opencl_devices()
    assert devices and devices[0].compute_units > 0 and devices[0].memory > 0
    (dev,) = open_backends("opencl", [devices[0].spec], cache_dir=cache_dir, config=SMALL)
    assert dev.name == f"opencl:{devices[0].spec}"
    # what `matmine-worker mine` keeps to reopen a device it opened without --devices
    everything = open_backends("opencl", None, cache_dir=cache_dir, config=SMALL)
    assert [f"{b.platform_index}:{b.device_index}" for b in everything] == [d.spec for d in devices]
    with pytest.raises(BackendError, match="PLATFORM:DEVICE"):
        open_backends("opencl", ["gpu0"])
    with pytest.raises(BackendError, match="no OpenCL device"):
        OpenCLBackend(99, 0, cache_dir=cache_dir)
    with pytest.raises(BackendError, match="prepare"):
        dev.scan(bytes(128), 1, lambda: False)
    with pytest.raises(BackendError, match="does not fit"):
        OpenCLBackend(*DEVICE, cache_dir=cache_dir, config=KernelConfig(bm=64)).prepare(
            Workload.synthetic(bytes(32), Shape(32, 32, 128, 32))
        )
    dev.prepare(Workload.synthetic(bytes(32), Shape(16, 16, 128, 32)))
    with pytest.raises(BackendError, match="128 bytes"):
        dev.scan(bytes(100), 1, lambda: False)
    assert SAFE_CONFIG.fits(Shape(16, 16, 128, 32), 1024)


def test_autotune_progress_and_the_chosen_kernel_are_logged(tmp_path, caplog):
    """A rig owner sees the tuning run (each candidate's rate) and the kernel chosen; the
    second device on the same shape finds the cache and only logs the choice."""
    workload = Workload.synthetic(bytes(32), Shape(64, 64, 256, 64))
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        tuned = OpenCLBackend(*DEVICE, cache_dir=tmp_path, tune_seconds=0.01)
        tuned.prepare(workload)
    lines = [r.getMessage() for r in caplog.records]
    assert any("autotuning" in m and "once per shape" in m for m in lines), lines
    assert any(m.startswith("autotune 1/") and "GMAC/s" in m for m in lines), lines
    assert any(f"kernel {tuned.config}" in m for m in lines), lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        OpenCLBackend(*DEVICE, cache_dir=tmp_path, tune_seconds=0.01).prepare(workload)
    lines = [r.getMessage() for r in caplog.records]
    assert not any("autotun" in m for m in lines) and any(
        f"kernel {tuned.config}" in m for m in lines
    )
