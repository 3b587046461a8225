"""Kernel build parameters per device and job shape: measure a few, cache the fastest.

The cache is a JSON file ``autotune.json`` under the cache dir (default ``~/.cache/matmine``,
or ``$MATMINE_CACHE_DIR``), keyed by device name, driver version and job shape.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from protocol.workload import TILE, Shape

CACHE_FILE = "autotune.json"

# The inner products of the tiled kernel (MMPOW_DOT in mmpow1.cl); which one a device gets
# is worker/backends/opencl_dot.py's choice. All but "portable" pack 4 int8 of the inner
# index in a uint: "packed" with a plain C dot4 (any device), khr_packed / amd_sdot4 /
# ptx_dp4a with one instruction; ptx_mma is another kernel, a warp per tile row on NVIDIA
# tensor cores (mma.sync m16n8k32), and mma_emulated that kernel with the mma done in C.
DOT_VARIANTS = (
    "portable",
    "packed",
    "khr_packed",
    "amd_sdot4",
    "ptx_dp4a",
    "ptx_mma",
    "mma_emulated",
)
MMA_VARIANTS = ("ptx_mma", "mma_emulated")
DOT_CHOICES = ("auto", *DOT_VARIANTS)  # what an operator may ask for ([opencl] dot, --dot)


def default_cache_dir() -> Path:
    """``$MATMINE_CACHE_DIR`` if set, else ``~/.cache/matmine``."""
    env = os.environ.get("MATMINE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "matmine"


@dataclass(frozen=True)
class KernelConfig:
    """Build parameters of the mining kernel (see worker/kernels/mmpow1.cl)."""

    bm: int = 32  # output rows per work-group
    bn: int = 32  # output columns per work-group
    wm: int = 4  # rows per work-item
    wn: int = 4  # columns per work-item
    kc: int = 16  # inner chunk staged in local memory
    vw: int = 4  # vector width of global loads
    acc_float: bool = True  # float32 multiply-add per slab, then int32
    item: bool = False  # one work-item per tile, explicit SIMD (mine_item; CPU devices)
    # columns j*16+lx of a work-item (needs bn == 16*wn); no candidate uses it (reported no
    # gain on PoCL): kept for explicit configs and the tests of that fold path
    interleave: bool = False
    dot: str = "portable"  # the inner product (DOT_VARIANTS); the item kernel has its own

    @property
    def kernel_name(self) -> str:
        return "mine_item" if self.item else "mine"

    @property
    def packed(self) -> bool:
        """The tiled kernel with 4 int8 packed per word (every dot variant but portable)."""
        return self.dot != "portable"

    @property
    def mma(self) -> bool:
        """The tensor-core kernel: work-groups of (32, bm / 16), one warp per tile row."""
        return self.dot in MMA_VARIANTS

    def with_dot(self, dot: str) -> KernelConfig:
        """This configuration with inner product ``dot`` (the item kernel keeps its own;
        a packed one accumulates in int32, so ``acc_float`` is off; the mma kernel takes
        the inner index 32 at a time and has no micro-tiles, so those are fixed)."""
        if self.item or dot == "portable":
            return replace(self, dot="portable")
        if dot in MMA_VARIANTS:
            return replace(
                self, dot=dot, acc_float=False, kc=32, vw=4, wm=4, wn=4, interleave=False
            )
        return replace(self, dot=dot, acc_float=False)

    @property
    def label(self) -> str:
        """A short name of the kernel this configuration builds, for logs and summaries."""
        if self.item:
            return "mine_item (one tile per work-item, float32 SIMD)"
        inner = self.dot if self.packed else f"portable {'float32' if self.acc_float else 'int32'}"
        if self.mma:
            return f"mine {self.bm}x{self.bn} warp/tile-row kc{self.kc} {inner}"
        return f"mine {self.bm}x{self.bn}/{self.wm}x{self.wn} kc{self.kc} {inner}"

    @property
    def local_size(self) -> tuple[int, int]:
        """Work-group size of the mining kernel.

        An item kernel does one whole tile per work-item with explicit SIMD, so it runs in
        work-groups of one: left to choose, PoCL made large groups that were slower and, for
        one launch over a 2048² output, crashed.
        """
        if self.item:
            return (1, 1)
        if self.mma:
            return (32, self.bm // TILE)
        return (self.bn // self.wn, self.bm // self.wm)

    def valid(self) -> bool:
        """Self-consistent parameters (independent of the job)."""
        return (
            self.bm % TILE == 0
            and self.bn % TILE == 0
            and TILE % self.wm == 0
            and TILE % self.wn == 0
            and self.kc % self.vw == 0
            and self.vw in (1, 2, 4, 8, 16)
            and self.bm > 0
            and self.bn > 0
            and self.dot in DOT_VARIANTS
            and not (self.packed and (self.item or self.kc % 4))
            and not (self.mma and (self.kc % 32 or self.bn > 32 * TILE))
        )

    def fits(self, shape: Shape, max_work_group_size: int) -> bool:
        """Usable for ``shape`` on a device with this work-group size limit."""
        if self.item:
            return self.valid()
        lx, ly = self.local_size
        return (
            self.valid()
            and shape.m % self.bm == 0
            and shape.n % self.bn == 0
            and shape.r % self.kc == 0
            and lx * ly <= max_work_group_size
        )

    def build_options(self, plain_gemm: bool = False) -> list[str]:
        """``-D`` defines for the OpenCL compiler."""
        return [
            f"-DBM={self.bm}",
            f"-DBN={self.bn}",
            f"-DWM={self.wm}",
            f"-DWN={self.wn}",
            f"-DKC={self.kc}",
            f"-DVW={self.vw}",
            f"-DACC_FLOAT={int(self.acc_float)}",
            f"-DPLAIN_GEMM={int(plain_gemm)}",
            f"-DINTERLEAVE={int(self.interleave and self.bn == TILE * self.wn)}",
            f"-DMMPOW_DOT=DOT_{self.dot.upper()}",
        ]


SAFE_CONFIG = KernelConfig(bm=16, bn=16, wm=4, wn=4, kc=16, vw=4, acc_float=True)
ITEM_CONFIG = KernelConfig(bm=16, bn=16, item=True)

CANDIDATES: tuple[KernelConfig, ...] = (
    ITEM_CONFIG,
    KernelConfig(32, 32, 4, 4, 16, 4, True),
    KernelConfig(64, 64, 4, 4, 16, 8, True),
    KernelConfig(64, 64, 8, 8, 32, 8, True),
    KernelConfig(32, 64, 4, 8, 32, 16, True),
    KernelConfig(64, 64, 4, 4, 16, 8, False),
    SAFE_CONFIG,
)


def shape_key(device_name: str, driver: str, shape: Shape) -> str:
    """The cache key of one device, driver and job shape."""
    return f"{device_name}|{driver}|{shape.m}x{shape.n}x{shape.k}/r{shape.r}"


class NoWorkingCandidate(RuntimeError):
    """Every candidate failed to build or run; ``errors`` maps each to its exception."""

    def __init__(self, errors: dict[str, Exception]) -> None:
        first = next(iter(errors.values()), None)
        super().__init__(f"no kernel configuration works ({len(errors)} tried): {first}")
        self.errors = errors


@dataclass
class TuneResult:
    """The chosen configuration, whether it came from the cache, and the measured rates."""

    config: KernelConfig
    from_cache: bool
    rates: dict[str, float]  # str(config) -> MAC/s, empty when cached


class Autotuner:
    """Chooses kernel build parameters per device and shape, remembering them on disk."""

    def __init__(self, cache_dir: Path | str | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.path = self.cache_dir / CACHE_FILE

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, key: str) -> KernelConfig | None:
        """The cached choice for ``key``, or None (also for a corrupt entry)."""
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            config = KernelConfig(**entry["config"])
        except (KeyError, TypeError):
            return None
        return config if config.valid() else None

    def store(self, key: str, config: KernelConfig, rates: dict[str, float]) -> None:
        """Record ``config`` for ``key`` (atomic replace of the JSON file)."""
        data = self._load()
        data[key] = {"config": asdict(config), "rates": rates}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".autotune-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def tune(
        self,
        key: str,
        candidates: Iterable[KernelConfig],
        measure: Callable[[KernelConfig], float],
        rounds: int = 2,
    ) -> TuneResult:
        """The cached choice for ``key``, or measure every candidate (MAC/s) and cache the best.

        Candidates are measured ``rounds`` times, in alternating order, and each keeps its
        best rate, so that one noisy trial does not decide. A candidate whose measurement
        raises is skipped; if all fail, ``NoWorkingCandidate`` is raised and nothing is cached.
        """
        cached = self.lookup(key)
        if cached is not None:
            return TuneResult(cached, True, {})
        candidates = list(candidates)
        if not candidates:
            raise ValueError("no kernel configuration to choose from")
        rates: dict[str, float] = {}
        failed: dict[str, Exception] = {}
        for round_ in range(rounds):
            for config in candidates if round_ % 2 == 0 else reversed(candidates):
                name = str(config)
                if name in failed:
                    continue
                try:
                    rate = measure(config)
                except Exception as exc:  # a candidate the device cannot build or run
                    failed[name] = exc
                    continue
                rates[name] = max(rate, rates.get(name, 0.0))
        if not rates:
            raise NoWorkingCandidate(failed)
        best = max(candidates, key=lambda c: rates.get(str(c), -1.0))
        self.store(key, best, rates)
        return TuneResult(best, False, rates)
