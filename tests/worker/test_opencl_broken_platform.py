"""A rig with a broken OpenCL platform beside a working one (issue 8): the worker's
``devices`` and ``bench`` report the broken device with the compiler's reason and measure
the working one, exit 0.

The broken platform is real: Debian's PoCL loaded through a symlink in a directory that
has its device modules but not its data files (headers, kernel library), so every kernel
build fails; pyopencl's own PoCL is the working platform.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytest.importorskip("pyopencl")
pytestmark = pytest.mark.opencl

DEBIAN_POCL = Path("/usr/lib/x86_64-linux-gnu/libpocl.so.2")


@pytest.fixture
def broken_vendors(tmp_path: Path) -> Path:
    """An ``OCL_ICD_VENDORS`` directory naming one broken PoCL platform."""
    if not (DEBIAN_POCL.exists() and (DEBIAN_POCL.parent / "pocl").is_dir()):
        pytest.skip("Debian's pocl-opencl-icd is not installed (.ci/run installs it)")
    lib = tmp_path / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libpocl.so.2").symlink_to(DEBIAN_POCL.resolve())
    (lib / "pocl").symlink_to(DEBIAN_POCL.parent / "pocl")
    vendors = tmp_path / "vendors"
    vendors.mkdir()
    (vendors / "broken.icd").write_text(f"{lib / 'libpocl.so.2'}\n")
    return vendors


def worker(vendors: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OCL_ICD_VENDORS": str(vendors)}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_devices_and_bench_skip_the_broken_platform(broken_vendors: Path) -> None:
    listed = worker(broken_vendors, "devices")
    rows = [line for line in listed.stdout.splitlines()[1:] if line.strip()]
    broken = [r for r in rows if "FAIL" in r]
    working = [r for r in rows if r.rstrip().endswith("ok")]
    if not working:
        pytest.skip(f"pyopencl's own PoCL does not work on this CPU: {listed.stdout}")
    assert broken and "kernels do not build" in broken[0] and "file not found" in broken[0]
    bench = worker(broken_vendors, "bench", "--backend", "opencl", "--seconds", "0.2")
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "skipped: kernels do not build" in bench.stderr
    spec = working[0].split()[0]
    assert f"opencl:{spec}" in bench.stdout and "OK" in bench.stdout
    assert "MISMATCH" not in bench.stdout
