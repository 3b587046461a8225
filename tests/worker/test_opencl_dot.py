"""The inner products of the OpenCL kernel (``MMPOW_DOT``): which one a device gets (a pure
function of its vendor, type, extensions, features and compute capability), the fallback
when a claimed fast path fails, the forced setting, and every variant PoCL builds giving
bit-identical tickets and products to the reference."""

import logging
import os

import pytest

from tests.support.backend_checks import CASES, check_vector_case, check_winners
from toolkit.settings import ConfigError
from worker.autotune import DOT_CHOICES, DOT_VARIANTS, ITEM_CONFIG, SAFE_CONFIG, KernelConfig
from worker.backends.base import DeviceUnusable
from worker.backends.opencl_dot import (
    KHR_EXTENSION,
    KHR_PACKED_FEATURE,
    DeviceTraits,
    claimed_paths,
    dot_plan,
    select_dot,
)
from worker.config import config_from_dict, default_config_text, with_overrides
from worker.stats import WorkerStats

NV_EXT = frozenset({"cl_khr_fp64", "cl_nv_device_attribute_query"})
NVIDIA = "NVIDIA Corporation"
AMD = "Advanced Micro Devices, Inc."
INTEL = "Intel(R) Corporation"
FEATURES_30 = frozenset({"__opencl_c_int64", KHR_PACKED_FEATURE})

# (what, traits, the paths tried in order under "auto")
DEVICES = [
    (
        "H200",
        DeviceTraits(NVIDIA, True, NV_EXT, None, "OpenCL 3.0 CUDA", (9, 0)),
        ["ptx_mma", "ptx_dp4a"],
    ),
    (
        "A100",
        DeviceTraits(NVIDIA, True, NV_EXT, None, "OpenCL 3.0 CUDA", (8, 0)),
        ["ptx_mma", "ptx_dp4a"],
    ),
    ("T4 sm_75 (no m16n8k32)", DeviceTraits(NVIDIA, True, NV_EXT, None, "", (7, 5)), ["ptx_dp4a"]),
    ("GTX 1080 sm_61", DeviceTraits(NVIDIA, True, NV_EXT, None, "", (6, 1)), ["ptx_dp4a"]),
    ("GTX 1060 sm_60 (no dp4a)", DeviceTraits(NVIDIA, True, NV_EXT, None, "", (6, 0)), []),
    ("Maxwell sm_52", DeviceTraits(NVIDIA, True, NV_EXT, None, "", (5, 2)), []),
    # tensor cores only when the device says it has them
    ("NVIDIA, no capability", DeviceTraits(NVIDIA, True, frozenset(), None), ["ptx_dp4a"]),
    ("NVIDIA, not a GPU", DeviceTraits(NVIDIA, False, NV_EXT, None, "", (9, 0)), []),
    (
        "MI300 (khr too)",
        DeviceTraits(AMD, True, frozenset({KHR_EXTENSION}), None),
        ["khr_packed", "amd_sdot4"],
    ),
    ("Radeon (no khr)", DeviceTraits(AMD, True, frozenset({"cl_khr_fp16"}), None), ["amd_sdot4"]),
    (
        "Arc, OpenCL 3.0",
        DeviceTraits(INTEL, True, frozenset({KHR_EXTENSION}), FEATURES_30),
        ["khr_packed"],
    ),
    (
        "khr without the packed feature",
        DeviceTraits(INTEL, True, frozenset({KHR_EXTENSION}), frozenset({"__opencl_c_int64"})),
        [],
    ),
    (
        "Intel, pre-3.0 (no features)",
        DeviceTraits(INTEL, True, frozenset({KHR_EXTENSION}), None),
        ["khr_packed"],
    ),
    (
        "Intel GPU without khr",
        DeviceTraits(INTEL, True, frozenset({"cl_khr_fp16"}), FEATURES_30),
        [],
    ),
    (
        "PoCL on an AMD CPU",
        DeviceTraits(
            "AuthenticAMD", False, frozenset({"cl_khr_fp64"}), frozenset(), "OpenCL 3.0 PoCL"
        ),
        [],
    ),
    ("PoCL on an Intel CPU", DeviceTraits("GenuineIntel", False, frozenset(), frozenset()), []),
]

BY_NAME = {what: traits for what, traits, _ in DEVICES}


@pytest.mark.parametrize(("what", "traits", "fast"), DEVICES, ids=[d[0] for d in DEVICES])
def test_auto_tries_the_claimed_fast_paths_then_portable(what, traits, fast):
    assert [name for name, _ in claimed_paths(traits)] == fast
    assert dot_plan(traits, "auto") == [*fast, "portable"]
    for forced in DOT_VARIANTS:  # a forced path is tried alone, whatever the device claims
        assert dot_plan(traits, forced) == [forced]


def test_device_traits_read_what_a_driver_reports_and_nothing_it_refuses():
    from types import SimpleNamespace

    from worker.backends.opencl_dot import device_traits

    h200 = SimpleNamespace(  # what pyopencl shows of an NVIDIA driver's device
        type=4,
        vendor="NVIDIA Corporation ",
        extensions="cl_khr_fp64 cl_nv_device_attribute_query  cl_khr_int64_base_atomics",
        version="OpenCL 3.0 CUDA",
        compute_capability_major_nv=9,
        compute_capability_minor_nv=0,
    )
    traits = device_traits(h200)
    assert (traits.vendor, traits.gpu, traits.compute_capability) == (NVIDIA, True, (9, 0))
    assert traits.opencl_c_features is None  # not reported: the khr feature is not required
    assert dot_plan(traits, "auto") == ["ptx_mma", "ptx_dp4a", "portable"]

    class Refusing:  # a broken driver: every query fails
        def __getattr__(self, name):
            raise RuntimeError("clGetDeviceInfo failed: INVALID_VALUE")

    broken = device_traits(Refusing())
    assert (broken.vendor, broken.gpu, broken.extensions) == ("", False, frozenset())
    assert dot_plan(broken, "auto") == ["portable"]


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="dot must be one of"):
        dot_plan(BY_NAME["H200"], "dp4a")


def tries(outcomes: dict[str, str | None]):
    """A ``try_variant`` answering from a table (None = builds and passes), recording calls."""
    called: list[str] = []

    def try_variant(variant: str) -> str | None:
        called.append(variant)
        return outcomes[variant]

    return try_variant, called


def test_a_fast_path_that_fails_falls_back_to_portable_with_its_reason():
    mi300 = BY_NAME["MI300 (khr too)"]
    try_variant, called = tries(
        {"khr_packed": "kernels do not build: no dot_acc_sat", "amd_sdot4": None, "portable": None}
    )
    choice = select_dot(mi300, "auto", try_variant)
    assert called == ["khr_packed", "amd_sdot4"]  # stops at the first that passes
    assert choice.variant == "amd_sdot4" and not choice.forced
    assert choice.refused == (("khr_packed", "kernels do not build: no dot_acc_sat"),)
    try_variant, called = tries(
        {
            "khr_packed": "no build",
            "amd_sdot4": "results differ from the CPU reference",
            "portable": None,
        }
    )
    choice = select_dot(mi300, "auto", try_variant)
    assert called == ["khr_packed", "amd_sdot4", "portable"]
    assert choice.variant == "portable"
    assert "amd_sdot4: results differ" in choice.describe()


def test_portable_failing_too_is_the_device_unusable_with_portables_reason():
    h200 = BY_NAME["H200"]
    outcomes = {
        "ptx_mma": "results differ from the CPU reference",
        "ptx_dp4a": "ptxas: dp4a needs sm_61",
        "portable": "kernels do not build: x",
    }
    try_variant, called = tries(outcomes)
    with pytest.raises(DeviceUnusable) as caught:
        select_dot(h200, "auto", try_variant, "opencl:0:0")
    assert called == ["ptx_mma", "ptx_dp4a", "portable"]
    assert caught.value.reason.startswith("kernels do not build: x")
    assert "ptx_dp4a: ptxas: dp4a needs sm_61" in caught.value.reason
    assert "ptx_mma: results differ" in caught.value.reason
    outcomes["ptx_mma"] = None  # tensor cores that pass are the first choice
    assert select_dot(h200, "auto", tries(outcomes)[0]).variant == "ptx_mma"


def test_a_forced_path_is_used_or_the_device_is_unusable():
    pocl = BY_NAME["PoCL on an Intel CPU"]
    try_variant, called = tries({"packed": None})
    choice = select_dot(pocl, "packed", try_variant)
    assert (choice.variant, choice.forced, called) == ("packed", True, ["packed"])
    try_variant, called = tries({"ptx_dp4a": "kernels do not build: asm"})
    with pytest.raises(DeviceUnusable, match="forced inner product ptx_dp4a: kernels do not build"):
        select_dot(pocl, "ptx_dp4a", try_variant)
    assert called == ["ptx_dp4a"]  # no silent fallback to a slower kernel


def test_kernel_config_with_dot():
    packed = SAFE_CONFIG.with_dot("ptx_dp4a")
    assert packed.dot == "ptx_dp4a" and not packed.acc_float and packed.valid()
    assert "-DMMPOW_DOT=DOT_PTX_DP4A" in packed.build_options()
    assert "-DMMPOW_DOT=DOT_PORTABLE" in SAFE_CONFIG.build_options()
    assert packed.with_dot("portable").dot == "portable"
    assert ITEM_CONFIG.with_dot("khr_packed") == ITEM_CONFIG  # the item kernel has its own
    assert KernelConfig(kc=16, vw=2).with_dot("packed").valid()
    assert not KernelConfig(kc=18, vw=2, dot="packed").valid()  # packs 4 per word
    assert not KernelConfig(dot="dp4a").valid()
    assert "ptx_dp4a" in packed.label and "mine_item" in ITEM_CONFIG.label
    mma = KernelConfig(64, 64, 8, 8, 16, 8, True).with_dot("ptx_mma")
    assert (mma.kc, mma.local_size, mma.acc_float) == (32, (32, 4), False) and mma.valid()
    assert "-DMMPOW_DOT=DOT_PTX_MMA" in mma.build_options()
    assert SAFE_CONFIG.with_dot("mma_emulated").local_size == (32, 1)
    assert not KernelConfig(64, 1024, kc=32, dot="ptx_mma").valid()  # 32 tiles a warp at most


def test_the_dot_setting():
    assert config_from_dict({}).opencl.dot == "auto"
    assert config_from_dict({"opencl": {"dot": "portable"}}).opencl.dot == "portable"
    flagged = with_overrides(config_from_dict({}), dot="packed")
    assert flagged.opencl.dot == "packed"
    base = {"pool": [{"url": "127.0.0.1:3333"}], "login": "x"}
    with pytest.raises(ConfigError, match="dot"):
        config_from_dict({**base, "opencl": {"dot": "tensor"}}).validate()
    text = default_config_text()
    assert "[opencl]" in text and 'dot = "auto"' in text
    assert set(DOT_CHOICES) == {"auto", *DOT_VARIANTS}


def test_the_summary_names_each_devices_kernel():
    stats = WorkerStats()
    stats.device("opencl:0:0").kernel = "mine 64x64/4x4 kc16 ptx_dp4a"
    assert stats.summary()["devices"][0]["kernel"] == "mine 64x64/4x4 kc16 ptx_dp4a"


# -- on PoCL -----------------------------------------------------------------------------


def opencl_device() -> tuple[int, int]:
    """$MATMINE_TEST_DEVICE ("P:D", how tests/bench/gpu_check.sh names the GPU), else the
    first device that works."""
    pytest.importorskip("pyopencl")
    from tests.support.backend_checks import working_opencl_device

    spec = os.environ.get("MATMINE_TEST_DEVICE")
    if spec:
        platform, device = (int(part) for part in spec.split(":"))
        return platform, device
    return working_opencl_device()


@pytest.fixture(scope="module")
def pocl(tmp_path_factory):
    """Per variant: a backend with it forced (16×16 tiled blocks fit every shape), or the
    reason it does not build on this device."""
    from worker.backends.opencl import OpenCLBackend

    device = opencl_device()
    cache = tmp_path_factory.mktemp("dot-cache")
    built, refused = {}, {}
    for variant in DOT_VARIANTS:
        backend = OpenCLBackend(*device, cache_dir=cache, config=SAFE_CONFIG, dot=variant)
        try:
            backend.self_test()
        except DeviceUnusable as exc:
            refused[variant] = exc.reason
        else:
            built[variant] = backend
    return device, built, refused


@pytest.mark.opencl
def test_pocl_builds_the_c_variants_and_refuses_the_rest_at_build(pocl):
    _, built, refused = pocl
    assert {"portable", "packed", "mma_emulated"} <= set(built)
    for variant, reason in refused.items():
        # a fast path that is not there fails to build; none builds and computes wrong results
        assert reason.startswith(f"forced inner product {variant}: kernels do not build"), reason


@pytest.mark.opencl
@pytest.mark.parametrize("variant", DOT_VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_every_variant_pocl_builds_matches_the_vectors(pocl, variant, case):
    _, built, refused = pocl
    if variant not in built:
        pytest.skip(f"{variant} does not build here: {refused[variant]}")
    backend = built[variant]
    check_vector_case(backend, case)
    assert backend.config.dot == variant and variant in backend.kernel


@pytest.mark.opencl
@pytest.mark.parametrize("variant", DOT_VARIANTS)
def test_every_variant_pocl_builds_finds_exactly_the_reference_winners(pocl, variant):
    from protocol.workload import Shape

    _, built, refused = pocl
    if variant not in built:
        pytest.skip(f"{variant} does not build here: {refused[variant]}")
    check_winners(built[variant], Shape(64, 96, 256, 64))
    check_winners(built[variant], Shape(32, 48, 512, 128))


@pytest.mark.opencl
@pytest.mark.parametrize("variant", DOT_VARIANTS)
def test_every_variant_pocl_builds_is_exact_at_the_extremes(pocl, variant):
    """Entries of ±64 only: the noisy operands reach ±127 (SPEC §7), every packed byte's
    sign matters and every product is as large as the rules allow."""
    import numpy as np

    from protocol.ticket import mine_header
    from protocol.workload import Shape, Workload

    _, built, refused = pocl
    if variant not in built:
        pytest.skip(f"{variant} does not build here: {refused[variant]}")
    shape = Shape(32, 32, 256, 64)
    rng = np.random.default_rng(7)
    a = (rng.integers(0, 2, (shape.m, shape.k)) * 128 - 64).astype(np.int8)
    bt = (rng.integers(0, 2, (shape.n, shape.k)) * 128 - 64).astype(np.int8)
    bt[:16] = -a[:16]  # tiles whose every product is -64·64 before noise
    workload = Workload(shape, a, bt)
    header = bytes(range(128, 256))
    reference = mine_header(header, workload)
    noisy = reference.noisy_product
    assert np.abs(noisy).max() > 64 * 64 * shape.k // 2  # really at the extremes
    backend = built[variant]
    backend.prepare(workload)
    result = backend.scan(header, 1 << 256, lambda: False, want_product=True)
    assert result.winners == reference.winners(1 << 256, shape.k)
    assert np.array_equal(result.product, noisy)


@pytest.mark.opencl
def test_auto_on_pocl_follows_what_it_claims(pocl, caplog):
    from worker.backends.opencl import OpenCLBackend
    from worker.backends.opencl_dot import device_traits

    device, _, _ = pocl
    backend = OpenCLBackend(*device, config=SAFE_CONFIG)
    traits = device_traits(backend.device)
    assert (KHR_EXTENSION in traits.extensions) == ("khr_packed" in dot_plan(traits, "auto"))
    with caplog.at_level(logging.INFO, logger="worker.backends.opencl"):
        backend.self_test()
    assert backend.dot_choice is not None and not backend.dot_choice.forced
    assert backend.dot == dot_plan(traits, "auto")[0] or backend.dot_choice.refused
    assert f"inner product {backend.dot}" in caplog.text


@pytest.mark.opencl
def test_claimed_fast_paths_that_do_not_build_fall_back_to_portable(pocl, caplog):
    """PoCL as if it claimed every fast path: each really fails to build (the compiler's
    reason kept, one warning line each) and the device mines with portable."""
    from worker.backends.opencl import OpenCLBackend
    from worker.backends.opencl_tuning import choose_dot

    device, _, refused = pocl
    claiming = DeviceTraits(AMD, True, frozenset({KHR_EXTENSION}), None)  # khr, then sdot4
    backend = OpenCLBackend(*device, config=SAFE_CONFIG)
    if {"khr_packed", "amd_sdot4"} - set(refused):
        pytest.skip("this device builds a fast path")
    with caplog.at_level(logging.INFO, logger="worker.backends.opencl"):
        choice = choose_dot(backend, claiming)
    assert choice.variant == "portable" == backend.dot
    assert [name for name, _ in choice.refused] == ["khr_packed", "amd_sdot4"]
    assert "dot_acc_sat_4x8packed_ss_int" in choice.refused[0][1]
    assert "__builtin_amdgcn_sdot4" in choice.refused[1][1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "trying amd_sdot4" in warnings[0].getMessage()
    assert "kernels do not build" in warnings[1].getMessage()
    assert "trying portable" in warnings[1].getMessage()
    backend.self_test()  # the choice is kept, and the portable kernel passes


@pytest.mark.opencl
def test_a_forced_path_that_does_not_build_skips_the_device(pocl):
    from worker.backends import BackendError, open_backends

    device, _, refused = pocl
    spec = f"{device[0]}:{device[1]}"
    if "ptx_dp4a" not in refused:
        pytest.skip("this device builds inline PTX")
    with pytest.raises(BackendError, match="forced inner product ptx_dp4a: kernels do not build"):
        open_backends("opencl", [spec], config=SAFE_CONFIG, dot="ptx_dp4a")
    with pytest.raises(BackendError, match="dot must be one of"):
        open_backends("opencl", [spec], dot="tensor")
    assert open_backends("opencl", [spec], config=SAFE_CONFIG, dot="packed")[0].dot == "packed"


@pytest.mark.opencl
def test_autotuned_candidates_carry_the_devices_inner_product(pocl, tmp_path):
    from protocol.workload import Shape, Workload
    from worker.backends.opencl import OpenCLBackend

    device, _, _ = pocl
    shape = Shape(64, 64, 256, 64)
    packed = OpenCLBackend(*device, cache_dir=tmp_path, dot="packed", tune_seconds=0.02)
    portable = OpenCLBackend(*device, cache_dir=tmp_path, dot="portable", tune_seconds=0.02)
    # one autotune cache, kept apart by inner product
    assert packed.autotune_key(shape) != portable.autotune_key(shape)
    packed.prepare(Workload.synthetic(bytes(32), shape))
    assert packed.config is not None
    assert packed.config.item or packed.config.dot == "packed"
    assert packed.kernel == packed.config.label


def worker_cli(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.opencl
@pytest.mark.slow
def test_devices_and_bench_name_the_inner_product(pocl):
    device, _, refused = pocl
    spec = f"{device[0]}:{device[1]}"
    listed = worker_cli("devices")
    header, *rows = listed.stdout.splitlines()
    assert "dot" in header.split()
    row = next(r for r in rows if r.startswith(spec))
    from worker.backends.opencl import OpenCLBackend

    chosen = OpenCLBackend(*device, config=SAFE_CONFIG).dot  # what auto chooses here
    assert row.rstrip().endswith("ok") and f" {chosen} " in row
    shape = ("--shape", "64x64x256:64", "--seconds", "0.2", "--devices", spec)
    packed = worker_cli("bench", "--backend", "opencl", "--dot", "mma_emulated", *shape)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert "OK" in packed.stdout and "[mine" in packed.stdout
    if "ptx_mma" in refused:
        forced = worker_cli("bench", "--backend", "opencl", "--dot", "ptx_mma", *shape)
        assert forced.returncode == 1
        assert "forced inner product ptx_mma: kernels do not build" in forced.stderr


@pytest.mark.opencl
async def test_the_summary_names_the_kernel_that_mines(pocl, tmp_path):
    """A real worker mining on PoCL with the packed inner product against a real pool: its
    /api/summary says which kernel runs."""
    import httpx

    from tests.support.running import running_pool, running_worker, wait_until
    from worker.backends.opencl import OpenCLBackend

    device, _, _ = pocl
    backend = OpenCLBackend(*device, cache_dir=tmp_path, config=SAFE_CONFIG, dot="packed")
    backend.self_test()
    async with (
        running_pool(tmp_path) as pool,
        running_worker([pool.endpoint], [backend], metrics_port=0) as worker,
    ):
        await wait_until(lambda: worker.stats.device(backend.name).scans >= 1, 30)
        (url,) = worker.metrics_urls
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            summary = (await http.get("/api/summary")).json()
    (entry,) = summary["devices"]
    assert entry["name"] == backend.name
    assert entry["kernel"] == backend.kernel == "mine 16x16/4x4 kc16 packed"
