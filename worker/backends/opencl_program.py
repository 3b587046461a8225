"""The OpenCL side of mmpow-1 that holds no device: pyopencl, the kernel program, its
buffers and the known-answer test.

``kernel_source`` is the OpenCL C text (``worker/kernels/mmpow1.cl``, package data) and
``source_tag`` its version for the autotune cache; ``compiler_reason`` cuts a failed
build's log to its reason; ``device_buffers`` are the buffers one workload needs;
``self_test_shape`` and ``reference_mismatch`` make the small job a device must get right
before it gets work.
"""

from __future__ import annotations

import hashlib
import importlib
from importlib import resources
from typing import Any

import numpy as np

from protocol.ticket import mine_header
from protocol.workload import Shape, Workload

from ..autotune import KernelConfig
from .base import BackendError, ScanResult

cl: Any
try:
    cl = importlib.import_module("pyopencl")
except ImportError:  # pragma: no cover - depends on the environment
    cl = None

WINNER_WORDS = 10  # ti, tj, 8 digest words
SELF_TEST_SEED = b"matmine opencl self-test".ljust(32, b"\0")
SELF_TEST_HEADER = bytes(range(128))
_LOG_FRAME = ("clBuildProgram failed", "Build on ", "(options:")
LAUNCH_RULES = "item kernels in work-groups of 1"  # change it when launches change


def require_cl() -> None:
    """Raise ``BackendError`` unless pyopencl is installed."""
    if cl is None:
        raise BackendError("pyopencl is not installed (pip install matmine[opencl])")


def kernel_source() -> str:
    """The OpenCL C source of the mmpow-1 kernels."""
    return resources.files("worker").joinpath("kernels/mmpow1.cl").read_text()


def source_tag() -> str:
    """A short hash of the kernel source and launch rules: autotune choices are remembered
    per kernel version."""
    text = kernel_source() + f"\nlaunch rules: {LAUNCH_RULES}"
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def compiler_reason(error: BaseException, max_lines: int = 2) -> str:
    """The compiler's own words from a failed build or launch: its first error line(s).

    pyopencl's message frames the whole build log ("Build on <device>: ... (options: ...)");
    the lines that say ``error`` are the reason, else the log's first line, else the
    message's first line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    body = [line for line in lines if not line.startswith(_LOG_FRAME)]
    errors = [line for line in body if "error" in line.lower()]
    chosen = (errors or body or lines or [type(error).__name__])[:max_lines]
    return "; ".join(dict.fromkeys(line[:240] for line in chosen))


def u32_words(value: bytes) -> np.ndarray:
    """``value`` as little-endian 32-bit words, the way the kernels take keys and limits."""
    return np.frombuffer(value, dtype="<u4").astype(np.uint32)


def device_buffers(
    context: cl.Context, workload: Workload, winner_cap: int
) -> dict[str, cl.Buffer]:
    """The device buffers of ``workload`` on ``context``, its operands copied in."""
    shape = workload.shape
    mf = cl.mem_flags
    ctx = context
    return {
        "a": cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=workload.a),
        "bt": cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=workload.bt),
        "a_noisy": cl.Buffer(ctx, mf.READ_WRITE, workload.a.nbytes),
        "bt_noisy": cl.Buffer(ctx, mf.READ_WRITE, workload.bt.nbytes),
        "fa": cl.Buffer(ctx, mf.READ_ONLY, 2 * shape.k),
        "ga": cl.Buffer(ctx, mf.READ_ONLY, 2 * shape.k),
        "fb": cl.Buffer(ctx, mf.READ_ONLY, 2 * shape.k),
        "gb": cl.Buffer(ctx, mf.READ_ONLY, 2 * shape.k),
        "eal": cl.Buffer(ctx, mf.READ_ONLY, shape.m * shape.r),
        "ebr": cl.Buffer(ctx, mf.READ_ONLY, shape.n * shape.r),
        "key": cl.Buffer(ctx, mf.READ_ONLY, 32),
        "limit": cl.Buffer(ctx, mf.READ_ONLY, 32),
        "j": cl.Buffer(ctx, mf.READ_WRITE, shape.tiles * 64),
        "count": cl.Buffer(ctx, mf.READ_WRITE, 4),
        "winners": cl.Buffer(ctx, mf.READ_WRITE, 4 * WINNER_WORDS * winner_cap),
        "no_acc": cl.Buffer(ctx, mf.READ_WRITE, 4),
    }


def self_test_shape(config: KernelConfig) -> Shape:
    """The small job of a configuration's known-answer test: two block rows, one block
    column (32×32 tiles for the one-tile-per-item kernel)."""
    if config.item:
        return Shape(32, 32, 128, 32)
    r = max(32, config.kc)
    return Shape(2 * config.bm, config.bn, 4 * r, r)


def reference_mismatch(result: ScanResult, workload: Workload) -> str | None:
    """How a scan of ``SELF_TEST_HEADER`` (every ticket, with the product) differs from the
    CPU reference on ``workload``; None when every ticket's digest and the product match."""
    shape = workload.shape
    reference = mine_header(SELF_TEST_HEADER, workload)
    expected = dict(((ti, tj), d) for ti, tj, d in reference.winners(1 << 256, shape.k))
    got = {(ti, tj): d for ti, tj, d in result.winners}
    wrong = sum(got.get(tile) != digest for tile, digest in expected.items())
    wrong += len(set(got) - set(expected))
    product_ok = result.product is not None and np.array_equal(
        result.product, reference.noisy_product
    )
    if wrong or not product_ok:
        return (
            f"results differ from the CPU reference ({wrong} of {shape.tiles} tickets "
            f"wrong, product {'right' if product_ok else 'wrong'})"
        )
    return None
