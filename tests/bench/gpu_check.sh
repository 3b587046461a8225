#!/usr/bin/env bash
# One short check of the OpenCL worker on a machine with a GPU (issue 12): the devices and the
# inner product each gets, the worker's own checked benchmark, the speed against numpy, and
# every inner product the device builds (portable, packed, khr_packed, amd_sdot4, ptx_dp4a,
# ptx_mma, mma_emulated) against the test vectors and the reference, each with its MAC/s,
# against the vendor's int8 GEMM and the card's peaks, all in one run. Without a GPU it says so.
#   bash tests/bench/gpu_check.sh            (PYTHON=path/to/python to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi -L
echo "== OpenCL devices (dot: the inner product auto chooses there)"
$PY -m worker.cli devices || exit 1
echo "== every inner product the device builds against the test vectors and the reference (pytest -m opencl)"
GPU=$($PY -c 'import pyopencl as cl; print(next((f"{i}:{j}" for i, p in enumerate(cl.get_platforms())
    for j, d in enumerate(p.get_devices()) if d.type & cl.device_type.GPU), ""))' 2>/dev/null)
echo "first GPU: ${GPU:-none}"
if [ -n "$GPU" ] && $PY -m pytest --version >/dev/null 2>&1; then
    MATMINE_TEST_DEVICE=$GPU $PY -m pytest -q -p no:cacheprovider -m opencl tests/worker/test_opencl_dot.py
else
    echo "no GPU or no pytest: skipped"
fi
echo "== matmine-worker bench --backend opencl, dot auto (every result checked against the reference)"
$PY -m worker.cli bench --backend opencl --shape 4096x4096x4096:128 --seconds 5 --log-level INFO
echo "== worker_speed.py (OpenCL vs numpy float32 on the CPU, PoW overhead)"
$PY tests/bench/worker_speed.py --sizes 2048,4096 --no-blas --seconds 3
echo "== gpu_vendor.py (each inner product the GPU builds, checked; vs torch int8 GEMM and the card's peaks)"
$PY tests/bench/gpu_vendor.py --sizes 2048,4096 --seconds 2 --dots all
