"""Choosing an OpenCL device's kernel: its inner product once (``choose_dot``: the fastest
path the device claims that builds and passes the known-answer test, else portable, each
refusal logged in one line), then the configuration for a job shape: a fixed one, or the
autotuned best of the candidates (``worker.autotune``), with the tuning's progress logged."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from protocol.workload import Workload

from ..autotune import CANDIDATES, SAFE_CONFIG, Autotuner, KernelConfig, NoWorkingCandidate
from .base import BackendError, DeviceUnusable
from .opencl_dot import DeviceTraits, DotChoice, claimed_paths, device_traits, select_dot
from .opencl_program import compiler_reason

if TYPE_CHECKING:
    from .opencl_backend import OpenCLBackend

log = logging.getLogger("worker.backends.opencl")


def try_dot(backend: OpenCLBackend, variant: str) -> str | None:
    """None if inner product ``variant`` builds on ``backend`` and its safe configuration
    matches the reference (the known-answer test), else the reason it does not."""
    try:
        backend.check_config(SAFE_CONFIG.with_dot(variant))
    except DeviceUnusable as exc:
        return exc.reason
    except BackendError as exc:
        return str(exc)
    return None


def choose_dot(backend: OpenCLBackend, traits: DeviceTraits | None = None) -> DotChoice:
    """The inner product of ``backend``'s tiled kernel, chosen once: forced, or the first
    fast path the device claims (``traits``: read from it unless given) whose safe
    configuration builds and matches the reference, else portable. Logs the choice, and
    each path passed over with its reason, in one line each."""
    if backend.dot_choice is not None:
        return backend.dot_choice
    if traits is None:
        traits = device_traits(backend.device)

    choice = select_dot(traits, backend.dot_request, partial(try_dot, backend), backend.description)
    tried = [name for name, _ in choice.refused] + [choice.variant]
    for (variant, reason), following in zip(choice.refused, tried[1:], strict=True):
        log.warning(
            "%s: inner product %s not used (%s); trying %s",
            backend.description,
            variant,
            reason,
            following,
        )
    if choice.forced or choice.refused or claimed_paths(traits):
        log.info("%s: inner product %s", backend.description, choice.describe())
    else:
        log.info(
            "%s: inner product portable (no int8 dot product claimed: vendor %r, %s)",
            backend.description,
            traits.vendor,
            "GPU" if traits.gpu else "not a GPU",
        )
    backend.dot_choice = choice
    return choice


def choose_config(backend: OpenCLBackend, workload: Workload) -> KernelConfig:
    """The kernel configuration ``backend`` mines ``workload`` with: the fixed one, else
    the autotuned best of the candidates that fit (measured once per device, driver, kernel
    version and shape, then cached), logging the tuning's progress."""
    shape = workload.shape
    max_wg = backend.device.max_work_group_size
    dot = choose_dot(backend).variant
    if backend.fixed_config is not None:
        fixed = backend.fixed_config.with_dot(dot)
        if not fixed.fits(shape, max_wg):
            raise BackendError(f"kernel configuration {fixed} does not fit {shape}")
        return fixed
    # the tiled candidates with the device's inner product (dict: packed ones that differed
    # only in acc_float are one)
    with_dot = dict.fromkeys(c.with_dot(dot) for c in CANDIDATES)
    candidates = [c for c in with_dot if c.fits(shape, max_wg)]
    if not candidates:
        return SAFE_CONFIG.with_dot(dot)
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
