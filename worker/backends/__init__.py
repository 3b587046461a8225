"""Compute backends of the worker: OpenCL devices and the CPU's BLAS."""

from __future__ import annotations

from typing import Any

from .base import Backend, BackendError, DeviceInfo, DeviceUnusable, ScanResult
from .blas import BlasBackend
from .opencl import OpenCLBackend, list_opencl_devices, open_opencl, probe_devices


def open_backends(kind: str, devices: list[str] | None = None, **options: Any) -> list[Backend]:
    """Backends of ``kind`` ("blas" or "opencl"); ``devices`` = ["PLATFORM:DEVICE", ...]."""
    if kind == "blas":
        if devices:
            raise BackendError("the blas backend takes no device list")
        return [BlasBackend(**options)]
    if kind == "opencl":
        return list(open_opencl(devices, **options))
    raise BackendError(f"unknown backend kind {kind!r}: expected 'blas' or 'opencl'")


__all__ = [
    "Backend",
    "BackendError",
    "BlasBackend",
    "DeviceInfo",
    "DeviceUnusable",
    "OpenCLBackend",
    "ScanResult",
    "list_opencl_devices",
    "open_backends",
    "probe_devices",
]
