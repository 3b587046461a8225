"""``OpenCLBackend``: the mmpow-1 mining pipeline on one OpenCL device (PoCL here, GPUs in
the field).

Per header the host derives the seed, the noise factors EAL/EBR and the index pairs
(cheap, with ``protocol.noise``); the device applies the noise, runs the tiled slab GEMM
with the XOR fold of every tile and the transcript J, hashes each J with keyed BLAKE3 and
appends the tiles that meet the share target to a small result buffer. Launches cover
bands of tile rows sized to about ``launch_seconds`` so that ``should_stop`` is honoured
quickly.

A device that cannot mine is found before it is given work: ``self_test`` chooses the
kernel's inner product (``opencl_dot``: the fastest the device claims that builds and passes,
else portable), builds its kernels and checks one small header (every ticket and the
product) against the CPU reference, and ``prepare`` does the same for the configuration it
chooses. Such a device raises ``DeviceUnusable`` with the compiler's own reason (its first
error line, not the whole log).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from protocol.noise import index_pairs, noise_factors, pow_seed
from protocol.workload import TILE, Shape, Workload

from ..autotune import (
    DOT_CHOICES,
    SAFE_CONFIG,
    KernelConfig,
    default_cache_dir,
)
from ..autotune import shape_key as autotune_key
from .base import (
    BackendError,
    DeviceUnusable,
    ScanResult,
    check_header,
    limit_of,
    never_stop,
    require_prepared,
    winners_of,
)
from .opencl_dot import AUTO, DotChoice
from .opencl_program import (
    SELF_TEST_HEADER,
    SELF_TEST_SEED,
    WINNER_WORDS,
    KernelCache,
    cl,
    compiler_reason,
    device_buffers,
    reference_mismatch,
    require_cl,
    self_test_shape,
    source_tag,
    u32_words,
)
from .opencl_tuning import choose_config, choose_dot

DEFAULT_WINNER_CAP = 256

log = logging.getLogger(__name__)


class OpenCLBackend:
    """mmpow-1 on one OpenCL device; matches ``protocol.ticket`` bit for bit."""

    def __init__(
        self,
        platform_index: int = 0,
        device_index: int = 0,
        *,
        cache_dir: Path | str | None = None,
        config: KernelConfig | None = None,
        autotune: bool = True,
        launch_seconds: float = 0.1,
        winner_cap: int = DEFAULT_WINNER_CAP,
        tune_seconds: float = 0.3,
        dot: str = AUTO,
    ) -> None:
        require_cl()
        try:
            platform = cl.get_platforms()[platform_index]
            self.device = platform.get_devices()[device_index]
        except (IndexError, cl.Error) as exc:
            raise BackendError(f"no OpenCL device {platform_index}:{device_index}") from exc
        if config is not None and not config.valid():
            raise BackendError(f"invalid kernel configuration {config}")
        if dot not in DOT_CHOICES:
            raise BackendError(f"dot must be one of {', '.join(DOT_CHOICES)}, got {dot!r}")
        if launch_seconds <= 0 or winner_cap < 1:
            raise BackendError("launch_seconds and winner_cap must be positive")
        self.name = f"opencl:{platform_index}:{device_index}"
        self.platform_index = platform_index  # "platform:device", as ``open_opencl`` takes
        self.device_index = device_index
        # how warnings name the device: spec, device name and platform version
        version = re.split(r"\s{2,}|,", platform.version.strip())[0]
        self.description = f"{self.name} ({self.device.name.strip()}, {version})"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        try:
            self.context = cl.Context([self.device])
            self.queue = cl.CommandQueue(self.context)
        except cl.Error as exc:
            raise DeviceUnusable(self.description, f"no context: {compiler_reason(exc)}") from exc
        self.launch_seconds = launch_seconds
        self.tune_seconds = tune_seconds
        self.winner_cap = winner_cap
        self.fixed_config = config
        self.autotune = autotune
        self.dot_request = dot  # "auto" or the inner product an operator forced
        self.dot_choice: DotChoice | None = None  # made by the self-test (choose_dot)
        self.config: KernelConfig | None = None
        self.kernels = KernelCache(self.context, self.description, self.cache_dir)
        self._workload: Workload | None = None
        self._bufs: dict[str, cl.Buffer] = {}
        self._band_tiles = 0
        self._macs_per_second = 0.0
        self._checked: set[KernelConfig] = set()  # configurations that passed the self-test

    @property
    def spec(self) -> str:
        """``"platform:device"``, the form ``open_opencl`` takes."""
        return f"{self.platform_index}:{self.device_index}"

    @property
    def dot(self) -> str:
        """The tiled kernel's inner product on this device (chosen on first use)."""
        return choose_dot(self).variant

    @property
    def kernel(self) -> str:
        """The kernel that mines: the prepared configuration's, else the inner product."""
        return self.config.label if self.config is not None else f"dot {self.dot}"

    # -- workload ------------------------------------------------------------------------

    def prepare(self, workload: Workload) -> None:
        """Upload A and Bᵀ (once per work_root) and choose the kernel configuration; a
        configuration not used before passes the self-test first (``DeviceUnusable``)."""
        if self._workload is not None and self._workload.work_root == workload.work_root:
            return
        self._upload(workload)
        try:
            config = choose_config(self, workload)
            self.check_config(config)
            log.info("%s: kernel %s for %s", self.description, config, workload.shape)
        except BaseException:
            self._workload = None  # not prepared: the next prepare starts again
            raise
        self.config = config

    def _upload(self, workload: Workload) -> None:
        """Device buffers for ``workload`` (its operands copied in); no configuration yet."""
        self._bufs = device_buffers(self.context, workload, self.winner_cap)
        self._workload = workload
        self._band_tiles = 0
        self.config = None

    # -- self-test -----------------------------------------------------------------------

    def self_test(self) -> None:
        """Build the kernels and check a small header against the CPU reference.

        Chooses the inner product first (each fast path tried is built and checked), then
        uses the fixed configuration if one was given, else the safe one (it fits every
        shape); raises ``DeviceUnusable`` with the reason. Run before a device gets work.
        """
        self.check_config((self.fixed_config or SAFE_CONFIG).with_dot(self.dot))

    def check_config(self, config: KernelConfig) -> None:
        """Known-answer test of ``config`` (once per configuration): every ticket's digest
        and the noisy product of one header of a small job must equal the reference's."""
        if config in self._checked:
            return
        shape = self_test_shape(config)
        if not config.fits(shape, self.device.max_work_group_size):
            raise BackendError(f"kernel configuration {config} does not fit this device")
        workload = Workload.synthetic(SELF_TEST_SEED, shape)
        saved = (self._workload, self._bufs, self.config, self._band_tiles)
        try:
            self._upload(workload)
            self.config = config
            result = self.scan(SELF_TEST_HEADER, 1 << 256, never_stop, want_product=True)
        except DeviceUnusable:
            raise
        except (cl.Error, BackendError) as exc:
            raise DeviceUnusable(
                self.description, f"kernels do not run: {compiler_reason(exc)}"
            ) from exc
        finally:
            self._workload, self._bufs, self.config, self._band_tiles = saved
        problem = reference_mismatch(result, workload)
        if problem is not None:
            raise DeviceUnusable(self.description, f"{problem} with {config}")
        self._checked.add(config)

    def autotune_key(self, shape: Shape) -> str:
        """The autotune cache key: device, driver, kernel source version and job shape."""
        driver = f"{self.device.driver_version.strip()}|kernel {source_tag()}|dot {self.dot}"
        return autotune_key(self.device.name.strip(), driver, shape)

    def measure(self, config: KernelConfig, seconds: float = 0.3) -> float:
        """MAC/s of ``config`` on the prepared workload (a few launches of one band)."""
        workload = require_prepared(self._workload)
        shape = workload.shape
        self._apply_noise(bytes(128), config)
        self._set_key_limit(bytes(32), 0)
        kernel = self.kernels.get(config, config.kernel_name)
        band = config.bm // TILE
        done, macs, start = 0, 0, time.perf_counter()
        while True:
            self._launch(kernel, config, done % shape.tiles_m, band, False)
            self.queue.finish()
            macs += band * TILE * shape.n * shape.k
            done += band
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or done >= shape.tiles_m:
                return macs / elapsed

    # -- one header ----------------------------------------------------------------------

    def _apply_noise(self, header: bytes, config: KernelConfig, zero_noise: bool = False) -> bytes:
        """A' and B'ᵀ on the device, in the layout ``config``'s kernel reads."""
        workload = require_prepared(self._workload)
        shape = workload.shape
        seed = pow_seed(header)
        bufs = self._bufs
        kernel = self.kernels.get(config, "apply_noise_packed" if config.item else "apply_noise")
        for side, rows, x, out, f_buf, g_buf, e_buf in (
            ("A", shape.m, "a", "a_noisy", "fa", "ga", "eal"),
            ("B", shape.n, "bt", "bt_noisy", "fb", "gb", "ebr"),
        ):
            f, g = index_pairs(seed, side, shape.k, shape.r)
            e = noise_factors(seed, side, 0, rows, shape.r).astype(np.int8)
            if zero_noise:
                e[:] = 0
            cl.enqueue_copy(self.queue, bufs[f_buf], f.astype(np.uint16))
            cl.enqueue_copy(self.queue, bufs[g_buf], g.astype(np.uint16))
            cl.enqueue_copy(self.queue, bufs[e_buf], e)
            kernel(
                self.queue,
                (shape.k, rows),
                None,
                bufs[x],
                bufs[e_buf],
                bufs[f_buf],
                bufs[g_buf],
                bufs[out],
                np.int32(shape.k),
                np.int32(shape.r),
            )
        return seed

    def _set_key_limit(self, seed: bytes, limit: int) -> None:
        cl.enqueue_copy(self.queue, self._bufs["key"], u32_words(seed))
        cl.enqueue_copy(self.queue, self._bufs["limit"], u32_words(limit.to_bytes(32, "little")))

    def _launch(
        self,
        kernel: cl.Kernel,
        config: KernelConfig,
        tile_row0: int,
        band_tiles: int,
        plain: bool,
        acc: cl.Buffer | None = None,
    ) -> None:
        shape = require_prepared(self._workload).shape
        bufs = self._bufs
        local = config.local_size
        if config.item:  # one tile per work-item
            global_size = (shape.tiles_n, band_tiles)
        else:
            lx, ly = local
            global_size = (shape.n // config.bn * lx, band_tiles * TILE // config.bm * ly)
        raw = plain and not config.item  # mine_item reads packed operands, made by the caller
        a, bt = (bufs["a"], bufs["bt"]) if raw else (bufs["a_noisy"], bufs["bt_noisy"])
        kernel(
            self.queue,
            global_size,
            local,
            a,
            bt,
            np.int32(shape.n),
            np.int32(shape.k),
            np.int32(shape.r),
            np.int32(tile_row0),
            bufs["key"],
            bufs["limit"],
            bufs["j"],
            bufs["count"],
            bufs["winners"],
            np.uint32(self.winner_cap),
            acc if acc is not None else bufs["no_acc"],
            np.int32(acc is not None),
        )

    def _run(
        self,
        header: bytes,
        limit: int,
        should_stop: Callable[[], bool],
        acc: cl.Buffer | None = None,
        plain: bool = False,
    ) -> ScanResult:
        check_header(header)
        workload = require_prepared(self._workload)
        config = self.config
        assert config is not None
        shape = workload.shape
        if plain:  # the plain GEMM kernel: no noise, fold, transcript or hash
            seed = bytes(32)
        else:
            seed = self._apply_noise(header, config)
            self._set_key_limit(seed, limit)
        kernel = self.kernels.get(config, config.kernel_name, plain_gemm=plain)
        step = config.bm // TILE
        band = self._band_tiles or step
        winners: list[tuple[int, int, bytes]] = []
        macs, row = 0, 0
        zero = np.zeros(1, dtype=np.uint32)
        count = np.zeros(1, dtype=np.uint32)
        while row < shape.tiles_m:
            if should_stop():
                return ScanResult(sorted(winners), macs, False)
            band = max(step, min(band, shape.tiles_m - row) // step * step)
            cl.enqueue_copy(self.queue, self._bufs["count"], zero)
            start = time.perf_counter()
            self._launch(kernel, config, row, band, plain, acc)
            cl.enqueue_copy(self.queue, count, self._bufs["count"])  # blocking
            elapsed = time.perf_counter() - start
            winners.extend(self._band_winners(int(count[0]), seed, limit, row, band))
            macs += band * TILE * shape.n * shape.k
            row += band
            band = self._next_band(band, elapsed, step)
        return ScanResult(sorted(winners), macs, True)

    def _next_band(self, band: int, elapsed: float, step: int) -> int:
        """Tile rows of the next launch, aiming at ``launch_seconds`` per launch."""
        if elapsed > 0:
            scale = min(4.0, max(0.25, self.launch_seconds / elapsed))
            band = max(step, int(band * scale) // step * step)
        self._band_tiles = band
        return band

    def _band_winners(
        self, count: int, seed: bytes, limit: int, row: int, band: int
    ) -> list[tuple[int, int, bytes]]:
        if count == 0:
            return []
        shape = require_prepared(self._workload).shape
        if count > self.winner_cap:  # overflow: digest the band's transcripts on the host
            j = np.empty((band, shape.tiles_n, 16), dtype=np.uint32)
            cl.enqueue_copy(self.queue, j, self._bufs["j"], src_offset=row * shape.tiles_n * 64)
            return winners_of(seed, j, limit, row, 0)
        raw = np.empty((count, WINNER_WORDS), dtype=np.uint32)
        cl.enqueue_copy(self.queue, raw, self._bufs["winners"])
        return [(int(w[0]), int(w[1]), w[2:].astype("<u4").tobytes()) for w in raw]

    # -- the Backend interface -----------------------------------------------------------

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool] = never_stop,
        want_product: bool = False,
    ) -> ScanResult:
        """Every ticket of ``header``; checks ``should_stop`` between launches.

        ``want_product``: the mining kernel also stores its final int32 accumulators
        (``write_acc``: one m × n write per header, no second GEMM) into a device buffer,
        read back as ``ScanResult.product`` once the scan completes.
        """
        workload = require_prepared(self._workload)
        limit = limit_of(share_target, workload.shape.k)
        if not want_product:
            return self._run(header, limit, should_stop)
        acc = self._acc_buffer()
        result = self._run(header, limit, should_stop, acc)
        if result.complete:
            out = np.empty((workload.shape.m, workload.shape.n), dtype=np.int32)
            cl.enqueue_copy(self.queue, out, acc)
            result.product = out
        return result

    def _acc_buffer(self) -> cl.Buffer:
        """The device buffer for a header's accumulators (made once per workload)."""
        acc = self._bufs.get("acc")
        if acc is None:
            shape = require_prepared(self._workload).shape
            acc = self._bufs["acc"] = cl.Buffer(
                self.context, cl.mem_flags.READ_WRITE, 4 * shape.m * shape.n
            )
        return acc

    def transcripts(self, header: bytes) -> np.ndarray:
        """J of every ticket (tiles_m × tiles_n × 16, uint32), as the device computed it."""
        shape = require_prepared(self._workload).shape
        self._run(header, 0, never_stop)
        j = np.empty((shape.tiles_m, shape.tiles_n, 16), dtype=np.uint32)
        cl.enqueue_copy(self.queue, j, self._bufs["j"])
        return j

    def product(self, header: bytes) -> np.ndarray:
        """The noisy product ``A'·B'`` (m × n int32), the input of ``protocol.denoise``."""
        shape = require_prepared(self._workload).shape
        out = np.empty((shape.m, shape.n), dtype=np.int32)
        acc = self._acc_buffer()
        self._run(header, 0, never_stop, acc)
        cl.enqueue_copy(self.queue, out, acc)
        return out

    def plain_gemm(self, banded: bool = True) -> np.ndarray:
        """``A·B`` (int32, no noise, fold or hash) with the same tiling: the benchmark baseline.

        ``banded``: the same launches as ``scan`` (bands sized to ``launch_seconds``), so
        that the PoW overhead compares like with like; otherwise one launch for the whole.
        """
        workload = require_prepared(self._workload)
        config = self.config
        assert config is not None
        shape = workload.shape
        out = np.empty((shape.m, shape.n), dtype=np.int32)
        acc = cl.Buffer(self.context, cl.mem_flags.WRITE_ONLY, out.nbytes)
        if config.item:  # packed copies of A and Bᵀ without noise
            self._apply_noise(bytes(128), config, zero_noise=True)
        if banded:
            self._run(bytes(128), 0, never_stop, acc, plain=True)
        else:
            kernel = self.kernels.get(config, config.kernel_name, plain_gemm=True)
            self._launch(kernel, config, 0, shape.tiles_m, True, acc)
        cl.enqueue_copy(self.queue, out, acc)
        return out
