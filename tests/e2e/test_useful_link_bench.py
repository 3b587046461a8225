"""The machinery of ``tests/bench/useful_link.py`` at a tiny scale, so the bench does not rot.

Without a namespace: a real pool process and a real ``matmine-worker`` process compute a
stream of two products sharing B; the window's counters must account for exactly those
products, at least their bytes, and nothing impossible (more verified than computed); the
submitter registers a shared B once (or, told not to, uploads it with each product); a tiny
model's batch (case m) is inferred through them, Y right and its pass's MACs counted. As
root with iproute2 (slow): the shaped namespace really limits the link, is gone after the
block (also after an error), and the whole bench runs inside it and prints its bound.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.bench.netns import LOOP_HOST, ShapedNamespace, parse_rate, remove_stale
from tests.support import REPO
from tests.support.link_bench import (
    Case,
    ProductSubmitter,
    Setup,
    npy,
    run_case,
    worker_capacity,
)
from tests.support.link_model import ModelCase, model_case, run_model_case
from tests.support.pools import StartPool

BENCH = REPO / "tests" / "bench" / "useful_link.py"
NETNS_OK = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def own_namespace(pid: int) -> str:
    """The namespace a bench process of ``pid`` creates (another bench may run beside it)."""
    return f"mmbench-{pid}"


@pytest.mark.slow
async def test_a_stream_of_tiny_products_is_accounted_for_exactly(tmp_path: Path) -> None:
    case = Case("b", 32, 128, 64, count=2)
    capacity = worker_capacity(64, 64, 128, 32, seconds=0.3)
    # a share difficulty every ticket meets: the one header a worker mines per unit (it
    # waits for the next job once it took the product) gives shares, whatever its speed
    setup = Setup(64, 1e-7, capacity, None, timeout=120.0, timeline=True)
    result = await run_case(case, setup, tmp_path)
    # the window holds exactly the two products: counted unpadded, each once
    assert result.delta("verified") == case.macs == 2 * 32 * 128 * 64
    assert result.mined > 0 and result.delta("pool_cpu") > 0
    fractions = (result.mined_useful_fraction, result.verified_fraction)
    assert all(f is not None and f >= 0.0 for f in fractions)
    # a worker cannot have verified work it never computed
    computed = result.computed_fraction
    assert computed is not None and 0.0 < computed <= 1.0
    # each verified unit is one header whose product the worker took: at least its MACs
    assert result.delta("verified") <= result.delta("worker_useful") <= result.delta("worker_macs")
    # every product's C (int32, 32×64) came back and its operands went out at least once
    assert result.moved_bytes >= 2 * 32 * 64 * 4 + 32 * 128 + 64 * 128
    assert result.bytes_per_useful_mac == result.moved_bytes / case.macs
    assert result.bound() is None  # no measured link off a namespace
    assert result.submission == "B registered once"  # the pool offers registered operands
    # the timeline (--keep): the worker's counters sampled through the window, never falling
    window = (tmp_path / "window.txt").read_text().split()
    assert [float(t) for t in window] == pytest.approx(
        [result.start.time, result.end.time], abs=1e-3
    )
    lines = (tmp_path / "timeline.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [
        "time", "monotonic", "useful", "synthetic", "verified", "bytes_in", "bytes_out"
    ]  # fmt: skip
    rows = [[float(v) for v in line.split("\t")] for line in lines[1:]]
    assert rows and all(b[1] >= a[1] and b[2] >= a[2] for a, b in itertools.pairwise(rows))
    assert rows[-1][2] <= result.end.worker_useful


@pytest.mark.slow
async def test_a_tiny_model_batch_is_accounted_for_by_its_pass(tmp_path: Path) -> None:
    case = model_case(layers=3, width=256, rows=128, scale=2)  # 64 rows, 3 layers of 128²
    assert isinstance(case, ModelCase) and (case.m, case.k, case.n) == (64, 128, 128)
    capacity = worker_capacity(64, 64, 128, 32, seconds=0.3)
    # a share difficulty every ticket meets: each layer's one header gives shares
    setup = Setup(64, 1e-7, capacity, None, timeout=120.0)
    # Y is right for every batch; the first one apart from the stream of the other two
    first, stream = await run_model_case(case, setup, tmp_path, batches=3, check_output=True)
    done = [result.delta("verified") / case.macs for result in (first, stream)]
    assert sum(done) == 3 and all(d >= 1 and d == int(d) for d in done)  # whole batches
    for result, batches in zip((first, stream), done, strict=True):
        # verified: the batches' rows through every layer, unpadded, once
        assert result.delta("verified") == batches * case.macs == batches * 64 * 3 * 128 * 128
        units, computed = result.extra["units"], result.extra["pass_macs"]
        assert units >= batches and computed >= batches * case.macs  # padded, each unit once
        assert result.mined > 0 and result.delta("pool_cpu") > 0
        # the worker counted the passes it mined as useful: at least their padded MACs
        assert result.delta("worker_useful") >= computed
        # the worker computed the passes and perhaps synthetic work: no more verified
        exact = result.computed_fraction
        assert exact is not None and 0.0 < exact <= 1.0
        assert result.delta("verified") <= result.delta("worker_useful")
        assert result.delta("worker_useful") <= result.delta("worker_macs")
        assert result.bound() is None and result.submission.startswith("model registered once")
    assert "first batch" in first.submission and "stream of 2 more" in stream.submission
    assert case.least_bytes_per_mac == (3 * 128 * 128 + 64 * 128 + 4 * 64 * 128) / case.macs


@pytest.mark.parametrize("share_b", [True, False])
async def test_products_sharing_b_name_it_once_or_carry_it(start_pool: StartPool, share_b) -> None:
    handle = await start_pool(settings={"http.enabled": True})
    rng = np.random.default_rng(5)
    b = rng.integers(-64, 65, (96, 48), dtype=np.int8)
    a_blobs = [npy(rng.integers(-64, 65, (m, 96), dtype=np.int8)) for m in (16, 32)]
    base = f"http://{LOOP_HOST}:{handle.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        submitter = ProductSubmitter(client, npy(b), share_b=share_b)
        ids = [await submitter.submit(a) for a in a_blobs]
        shapes = [(await client.get(f"/api/work/{i}")).json()["shape"] for i in ids]
        operands = (await client.get("/api/work/operands")).json()["operands"]
    assert shapes == [{"m": 16, "k": 96, "n": 48}, {"m": 32, "k": 96, "n": 48}]
    assert len(set(ids)) == 2
    if share_b:
        assert submitter.how == "B registered once" and len(operands) == 1
    else:
        assert submitter.how == "B uploaded with every product" and operands == []


def test_rates_parse_and_bad_ones_are_refused() -> None:
    assert parse_rate("100mbit") == 100e6 and parse_rate("1gbit") == 1e9
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate("100mb")


def run_bench_as(argv: list[str], *, uid: int | None = None, path: str | None = None):
    """``useful_link.main()`` in a child that imported everything, then (optionally) became
    ``uid`` and lost ``PATH``: how a user without root or iproute2 meets the bench."""
    code = (
        "import os, sys; import tests.bench.useful_link as bench\n"
        + (f"os.setuid({uid})\n" if uid is not None else "")
        + (f"os.environ['PATH'] = {path!r}\n" if path is not None else "")
        + f"sys.argv = ['useful_link.py', *{argv!r}]; bench.main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop it")
def test_the_bench_refuses_with_one_line_when_not_root() -> None:
    done = run_bench_as(["--rates", "100mbit"], uid=65534)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: the shaped-link bench needs root (ip netns, tc); run it as root"
    ]


def test_the_bench_refuses_with_one_line_without_iproute2() -> None:
    done = run_bench_as(["--rates", "100mbit"], path="/nonexistent")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: ip and tc not found (apt-get install -y iproute2)"]


@pytest.mark.slow
@pytest.mark.skipif(not NETNS_OK, reason="needs root and iproute2 (ip, tc)")
def test_the_namespace_limits_the_link_and_is_always_removed() -> None:
    probe = [
        sys.executable,
        "-c",
        "import trio; from tests.support.link_bench import measure_link;"
        "from tests.bench.netns import shaped_bytes;"
        "print(trio.run(measure_link, 5.0), shaped_bytes())",
    ]
    with ShapedNamespace("20mbit", name="mmbench-test") as ns:
        assert "mmbench-test" in namespaces()
        done = subprocess.run(ns.exec(probe), capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr
        bits, sent = (float(x) for x in done.stdout.split())
    assert "mmbench-test" not in namespaces()
    # unshaped loopback moves GB/s: 5 MB at 20 Mbit/s cannot go much faster than 20 Mbit/s
    assert 0.5 * 20e6 < bits < 1.5 * 20e6
    assert sent >= 5e6  # the probe crossed the shaped class
    with pytest.raises(RuntimeError, match="boom"), ShapedNamespace("1gbit", name="mmbench-err"):
        raise RuntimeError("boom")
    assert "mmbench-err" not in namespaces()


@pytest.mark.slow
@pytest.mark.skipif(not NETNS_OK, reason="needs root and iproute2 (ip, tc)")
def test_the_bench_runs_in_a_shaped_namespace_and_prints_its_bound() -> None:
    bench = subprocess.Popen(
        [sys.executable, str(BENCH), "--rates", "50mbit", "--scale", "64", "--stream", "2",
         "--bench-seconds", "0.5", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        stdout, stderr = bench.communicate(timeout=280)
    finally:
        bench.kill()
    done = subprocess.CompletedProcess(bench.args, bench.wait(), stdout, stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  50mbit")]
    assert [row[2] for row in rows] == ["a", "b"], done.stdout
    for row in rows:
        measured, bound, exact = float(row[1]), float(row[6]), float(row[7])
        assert 0.5 * 50 < measured < 1.5 * 50
        assert 0.0 < bound <= 1.0
        # physics: verified MACs ≤ link bytes ÷ bytes per useful MAC (10%: the probe's ramp)
        assert 0.0 < exact <= 1.1 * bound
    assert own_namespace(bench.pid) not in namespaces().split()


def bench_children(tag: str) -> list[str]:
    """Command lines of live processes of the bench run started with ``MMBENCH_TAG=tag`` in
    its environment (its pool and worker inherit it; another bench may run beside it)."""
    found, marker = [], f"MMBENCH_TAG={tag}".encode()
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in environ and "useful_link-" in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not NETNS_OK, reason="needs root and iproute2 (ip, tc)")
@pytest.mark.parametrize("running", [1, 2], ids=["pool-starting", "pool-and-worker"])
def test_a_stopped_bench_leaves_no_namespace_and_no_processes(running: int) -> None:
    tag = f"{os.getpid()}-{running}"
    bench = subprocess.Popen(
        [sys.executable, str(BENCH), "--rates", "50mbit", "--scale", "64", "--bench-seconds",
         "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "MMBENCH_TAG": tag},
    )  # fmt: skip
    try:
        assert bench.stderr is not None
        line = bench.stderr.readline()
        assert "running in namespace mmbench-" in line, line
        deadline = time.monotonic() + 60
        while len(bench_children(tag)) < running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(bench_children(tag)) >= running
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=90) != 0
    finally:
        bench.kill()
    assert own_namespace(bench.pid) not in namespaces().split()
    assert bench_children(tag) == []


@pytest.mark.slow
@pytest.mark.skipif(not NETNS_OK, reason="needs root and iproute2 (ip, tc)")
def test_only_empty_namespaces_of_dead_benches_are_swept() -> None:
    dead, busy, alive = "mmbench-999999991", "mmbench-999999992", f"mmbench-{os.getpid()}"
    for name in (dead, busy, alive):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    sleeper = subprocess.Popen(["ip", "netns", "exec", busy, "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while not subprocess.run(["ip", "netns", "pids", busy], capture_output=True).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert remove_stale() == [dead]
        listed = namespaces()
        assert dead not in listed and busy in listed and alive in listed
    finally:
        sleeper.kill()
        sleeper.wait()
        for name in (dead, busy, alive):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
