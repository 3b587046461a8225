"""The OpenCL backend: devices found, opened and probed; ``OpenCLBackend`` mines on one.

``list_opencl_devices`` lists every device of every platform; ``open_opencl`` opens and
self-tests the ones asked for (default: all), skipping a device that cannot mine with one
warning and keeping the rest; ``probe_kernels`` says of each whether it can mine and with
which inner product (what ``matmine-worker devices`` shows; ``probe_devices`` the same
without it). The pipeline itself is ``opencl_backend.py``; the kernel program, its buffers
and the known-answer test are ``opencl_program.py``; the inner product ``opencl_dot.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import BackendError, DeviceInfo, DeviceUnusable
from .opencl_backend import OpenCLBackend
from .opencl_program import cl, compiler_reason, kernel_source, require_cl

log = logging.getLogger(__name__)


def list_opencl_devices() -> list[DeviceInfo]:
    """Every OpenCL device of every platform; empty if there is no OpenCL at all."""
    if cl is None:
        return []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # no ICD / no platform
        return []
    found = []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for di, device in enumerate(devices):
            found.append(
                DeviceInfo(
                    platform_index=pi,
                    device_index=di,
                    platform=platform.name.strip(),
                    name=device.name.strip(),
                    driver=device.driver_version.strip(),
                    compute_units=device.max_compute_units,
                    memory=device.global_mem_size,
                )
            )
    return found


def _parse_spec(spec: str) -> tuple[int, int]:
    try:
        pi, di = (int(part) for part in spec.split(":"))
    except ValueError as exc:
        raise BackendError(f"bad OpenCL device {spec!r}: expected PLATFORM:DEVICE") from exc
    return pi, di


def open_device(spec: str, *, self_test: bool = True, **options: Any) -> OpenCLBackend:
    """One device by its ``"platform:device"`` spec, self-tested (``DeviceUnusable``)."""
    pi, di = _parse_spec(spec)
    backend = OpenCLBackend(pi, di, **options)
    if self_test:
        backend.self_test()
    return backend


def open_opencl(
    specs: list[str] | None, *, self_test: bool = True, **options: object
) -> list[OpenCLBackend]:
    """Backends for ``"platform:device"`` specs (default: every device found).

    A device that cannot be opened or fails its self-test is skipped with one warning
    naming it and the reason; ``BackendError`` only when no device is left.
    """
    require_cl()
    if specs is None:
        specs = [d.spec for d in list_opencl_devices()]
        if not specs:
            raise BackendError("no OpenCL device found (is an OpenCL driver or PoCL installed?)")
    for spec in specs:
        _parse_spec(spec)  # a malformed spec is a usage error, before anything is opened
    backends, skipped = [], []
    for spec in specs:
        try:
            backend = open_device(spec, self_test=self_test, **options)
        except DeviceUnusable as exc:
            log.warning("OpenCL device %s skipped: %s", exc.device, exc.reason)
            skipped.append(f"{exc.device}: {exc.reason}")
            continue
        except BackendError as exc:
            log.warning("OpenCL device %s skipped: %s", spec, exc)
            skipped.append(f"{spec}: {exc}")
            continue
        backends.append(backend)
    if not backends:
        raise BackendError("no usable OpenCL device: " + "; ".join(skipped))
    return backends


def probe_kernels(dot: str = "auto") -> list[tuple[DeviceInfo, str | None, str]]:
    """Every OpenCL device with ``None`` if its kernels build and pass the self-test (else
    the reason they do not) and the inner product chosen for it ("" when none was): what
    ``matmine-worker devices`` shows."""
    found: list[tuple[DeviceInfo, str | None, str]] = []
    for info in list_opencl_devices():
        backend = None
        try:
            backend = OpenCLBackend(info.platform_index, info.device_index, autotune=False, dot=dot)
            backend.self_test()
        except DeviceUnusable as exc:
            found.append((info, exc.reason, _chosen_dot(backend)))
        except BackendError as exc:
            found.append((info, str(exc), _chosen_dot(backend)))
        else:
            found.append((info, None, _chosen_dot(backend)))
    return found


def _chosen_dot(backend: OpenCLBackend | None) -> str:
    choice = None if backend is None else backend.dot_choice
    return "" if choice is None else choice.variant


def probe_devices() -> list[tuple[DeviceInfo, str | None]]:
    """Every OpenCL device with ``None`` if its kernels build and pass the self-test, else
    the reason they do not."""
    return [(info, reason) for info, reason, _ in probe_kernels()]


__all__ = [
    "OpenCLBackend",
    "compiler_reason",
    "kernel_source",
    "list_opencl_devices",
    "open_device",
    "open_opencl",
    "probe_devices",
    "probe_kernels",
]
