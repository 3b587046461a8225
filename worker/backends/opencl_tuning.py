"""Choosing an OpenCL device's kernel configuration for a job shape: a fixed one, or the
autotuned best of the candidates (``worker.autotune``), with the tuning's progress logged."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from protocol.workload import Workload

from ..autotune import CANDIDATES, SAFE_CONFIG, Autotuner, KernelConfig, NoWorkingCandidate
from .base import BackendError, DeviceUnusable
from .opencl_program import compiler_reason

if TYPE_CHECKING:
    from .opencl_backend import OpenCLBackend

log = logging.getLogger("worker.backends.opencl")


def choose_config(backend: OpenCLBackend, workload: Workload) -> KernelConfig:
    """The kernel configuration ``backend`` mines ``workload`` with: the fixed one, else
    the autotuned best of the candidates that fit (measured once per device, driver, kernel
    version and shape, then cached), logging the tuning's progress."""
    shape = workload.shape
    max_wg = backend.device.max_work_group_size
    if backend.fixed_config is not None:
        if not backend.fixed_config.fits(shape, max_wg):
            raise BackendError(f"kernel configuration {backend.fixed_config} does not fit {shape}")
        return backend.fixed_config
    candidates = [c for c in CANDIDATES if c.fits(shape, max_wg)]
    if not candidates:
        return SAFE_CONFIG
    if not backend.autotune:
        return candidates[0]
    key = backend.autotune_key(shape)
    tuner = Autotuner(backend.cache_dir)
    if tuner.lookup(key) is None:
        log.info(
            "%s: autotuning %d kernel configurations for %s (about %.0f s, once per shape)",
            backend.description,
            len(candidates),
            shape,
            2 * len(candidates) * backend.tune_seconds,
        )
    tried = 0

    def measure(config: KernelConfig) -> float:
        nonlocal tried
        tried += 1
        rate = backend.measure(config, backend.tune_seconds)
        log.info("autotune %d/%d: %s %.2f GMAC/s", tried, 2 * len(candidates), config, rate / 1e9)
        return rate

    try:
        return tuner.tune(key, candidates, measure).config
    except NoWorkingCandidate as exc:
        first = next(iter(exc.errors.values()))
        if isinstance(first, DeviceUnusable):
            raise DeviceUnusable(backend.description, first.reason) from exc
        raise DeviceUnusable(
            backend.description, f"no kernel configuration runs: {compiler_reason(first)}"
        ) from exc
