"""Which inner product the tiled mining kernel uses on a device (``MMPOW_DOT``, mmpow1.cl).

Standard OpenCL has no int8 dot product; the fast paths are each one vendor's: inline PTX
``mma.sync`` on tensor cores (NVIDIA sm_80+, only when the device reports its compute
capability) and ``dp4a`` (NVIDIA sm_61+), ``cl_khr_integer_dot_product`` (Intel, others), AMD's
``__builtin_amdgcn_sdot4`` (gfx906+). ``claimed_paths`` reads which of them a device claims
from its vendor, type, extensions, OpenCL C features and (NVIDIA) compute capability, a pure
function of :class:`DeviceTraits`; ``select_dot`` tries them fastest first (build and
known-answer test, by the caller's ``try_variant``) and falls back to the portable kernel,
keeping each refused path's reason. An operator may force one (``[opencl] dot``): a forced
path that fails makes the device unusable rather than silently slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..autotune import DOT_CHOICES
from .base import DeviceUnusable

AUTO = "auto"
KHR_EXTENSION = "cl_khr_integer_dot_product"
KHR_PACKED_FEATURE = "__opencl_c_integer_dot_product_input_4x8bit_packed"
# cl_nv_device_attribute_query: CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV / _MINOR_NV
NV_CC_MAJOR, NV_CC_MINOR = 0x4000, 0x4001
DP4A_MIN_CC = (6, 1)
MMA_MIN_CC = (8, 0)  # mma.sync m16n8k32 s8: Ampere and later, only when the device says so


@dataclass(frozen=True)
class DeviceTraits:
    """What a device says about itself that decides its inner product."""

    vendor: str
    gpu: bool
    extensions: frozenset[str] = frozenset()
    opencl_c_features: frozenset[str] | None = None  # None: not reported (before OpenCL 3.0)
    version: str = ""  # the device's "OpenCL x.y ..." string
    compute_capability: tuple[int, int] | None = None  # NVIDIA only, when reported

    @property
    def nvidia(self) -> bool:
        return "nvidia" in self.vendor.lower()

    @property
    def amd(self) -> bool:
        vendor = self.vendor.lower()
        return "advanced micro devices" in vendor or vendor.startswith("amd")


def device_traits(device: Any) -> DeviceTraits:
    """The traits of a pyopencl device; anything it does not report is left unknown."""
    try:
        gpu = bool(device.type & 4)  # CL_DEVICE_TYPE_GPU
    except Exception:  # a broken driver answers nothing: assume no fast path
        gpu = False
    extensions = frozenset(str(_info(device, "extensions", "")).split())
    features = _info(device, "opencl_c_features", None)
    names = None if features is None else frozenset(str(f.name) for f in features)
    capability = None
    if "cl_nv_device_attribute_query" in extensions:
        major = _info(device, "compute_capability_major_nv", None)
        minor = _info(device, "compute_capability_minor_nv", None)
        if isinstance(major, int) and isinstance(minor, int):
            capability = (major, minor)
    return DeviceTraits(
        vendor=str(_info(device, "vendor", "")).strip(),
        gpu=gpu,
        extensions=extensions,
        opencl_c_features=names,
        version=str(_info(device, "version", "")).strip(),
        compute_capability=capability,
    )


def _info(device: Any, name: str, default: Any) -> Any:
    try:
        return getattr(device, name)
    except Exception:  # unknown to this pyopencl or refused by the driver
        return default


def claimed_paths(traits: DeviceTraits) -> list[tuple[str, str]]:
    """The fast inner products ``traits`` claim, fastest first, each with why it is claimed."""
    paths = []
    cc = traits.compute_capability
    if traits.nvidia and traits.gpu and cc is not None and cc >= MMA_MIN_CC:
        paths.append(("ptx_mma", f"NVIDIA GPU, sm_{cc[0]}{cc[1]}: tensor cores"))
    if traits.nvidia and traits.gpu and (cc is None or cc >= DP4A_MIN_CC):
        why = "NVIDIA GPU" + (f", sm_{cc[0]}{cc[1]}" if cc else ", compute capability unknown")
        paths.append(("ptx_dp4a", why))
    features = traits.opencl_c_features
    if KHR_EXTENSION in traits.extensions and (features is None or KHR_PACKED_FEATURE in features):
        paths.append(("khr_packed", KHR_EXTENSION))
    if traits.amd and traits.gpu:
        paths.append(("amd_sdot4", "AMD GPU"))
    return paths


def dot_plan(traits: DeviceTraits, requested: str) -> list[str]:
    """The inner products to try in order: the one forced, else the claimed ones, then
    portable."""
    if requested not in DOT_CHOICES:
        raise ValueError(f"dot must be one of {DOT_CHOICES}, got {requested!r}")
    if requested != AUTO:
        return [requested]
    return [name for name, _ in claimed_paths(traits)] + ["portable"]


@dataclass(frozen=True)
class DotChoice:
    """The inner product chosen, whether it was forced, and each path passed over, why."""

    variant: str
    forced: bool = False
    refused: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """``variant`` plus how it was chosen, in one line."""
        how = "forced" if self.forced else "auto"
        if not self.refused:
            return f"{self.variant} ({how})"
        passed = "; ".join(f"{name}: {why}" for name, why in self.refused)
        return f"{self.variant} ({how}; not {passed})"


def select_dot(
    traits: DeviceTraits,
    requested: str,
    try_variant: Callable[[str], str | None],
    device: str = "device",
) -> DotChoice:
    """The first inner product of ``dot_plan`` for which ``try_variant`` (build it and run
    the known-answer test) returns None; its returned reasons for the ones before.

    ``DeviceUnusable`` when the forced path, or portable as the last resort, fails (with
    portable's own reason, as a device without fast paths always said).
    """
    refused: list[tuple[str, str]] = []
    for variant in dot_plan(traits, requested):
        reason = try_variant(variant)
        if reason is None:
            return DotChoice(variant, requested != AUTO, tuple(refused))
        refused.append((variant, reason))
    variant, reason = refused[-1]
    if requested != AUTO:
        raise DeviceUnusable(device, f"forced inner product {variant}: {reason}")
    also = "; ".join(f"{name}: {why}" for name, why in refused[:-1])
    raise DeviceUnusable(device, reason + (f" (fast paths refused too: {also})" if also else ""))
