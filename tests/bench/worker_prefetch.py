"""How long a unit's job waits for its operands: downloaded when the job arrives (cold) vs
prefetched while the previous unit was mined (SPEC §12.7 ``next``, worker/prefetch.py).

One in-process pool (127.0.0.1, HTTP data plane) leases two units of ``--unit``×``--unit``
(k = ``--k``, separate A and Bᵀ blocks) to two test miners. Each round, with an empty blob
cache, times :meth:`worker.useful.UsefulWork.workload` of the second unit's job: cold (both
blobs downloaded then) and after a prefetch of the blobs its predecessor's ``next`` named
(not timed: it runs while the previous unit is mined). What remains when prefetched is the
cache load and the verification against the job's roots. Prints the best of ``--rounds``
of each and the ratio cold/prefetched.

    .venv/bin/python tests/bench/worker_prefetch.py [--unit 1024] [--k 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pool.app import run_pool
from protocol import messages
from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pools import make_config
from tests.support.running import fast_connection
from worker.client import Job, PoolClient
from worker.config import PoolEndpoint
from worker.stats import WorkerStats
from worker.useful import UsefulWork


def worker_job(notify: messages.Notify) -> Job:
    client = PoolClient(
        PoolEndpoint("127.0.0.1", 1),
        login=f"{new_address()}.bench",
        password="x",
        agent="bench",
        settings=fast_connection(),
        on_job=lambda job: None,
    )
    return Job(notify, b"\0" * 4, client, 0.0)


async def bench(unit: int, k: int, rounds: int) -> None:
    settings = {
        "http.enabled": True,
        "pool.start_difficulty": 1e-5,
        "useful.unit_m": unit,
        "useful.unit_n": unit // 2,
        "useful.r": 32,
        "useful.lease_seconds": 3600.0,
        "useful.unit_b_max_bytes": 0,  # the 2-D split (unit_m × unit_n) the units below assume
        "useful.unit_start_rows": unit,
        "useful.unit_tail_rows": 0,  # nor halved as the queue's last unit
    }
    rng = np.random.default_rng(1)
    a = rng.integers(-64, 65, (unit, k), dtype=np.int8)
    b = rng.integers(-64, 65, (k, unit), dtype=np.int8)  # two Bᵀ blocks: two units
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(run_pool, make_config(Path(tmp) / "pool", settings))
            useful_pool = handle.useful
            assert useful_pool is not None
            f = io.BytesIO()
            np.save(f, a)
            np.save(f, b)
            base = f"http://127.0.0.1:{handle.http_port}"
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                r = await client.post(
                    "/api/work", content=f.getvalue(), headers={"Content-Type": "application/x-npy"}
                )
                assert r.status_code == 201, r.text
            async with (
                await TestMiner.connect(handle.stratum_port, timeout=120) as first,
                await TestMiner.connect(handle.stratum_port, timeout=120) as second,
            ):
                job1 = await first.login(f"{new_address()}.bench1", useful=True)
                job2 = await second.login(f"{new_address()}.bench2", useful=True)
                await measure(useful_pool, job1, job2, rounds, Path(tmp))
            nursery.cancel_scope.cancel()


async def measure(
    useful_pool, job1: messages.Notify, job2: messages.Notify, rounds: int, tmp: Path
) -> None:
    src1, src2 = job1.work.source, job2.work.source
    assert isinstance(src1, messages.BlobSource) and isinstance(src2, messages.BlobSource)
    assert src2.token is not None and src2.b != src1.b
    nxt = messages.NextUnit(a=src2.a, b=src2.b, token=src2.token)
    times: dict[str, list[float]] = {"cold": [], "prefetched": []}
    size = (job2.work.m + job2.work.n) * job2.work.k
    for _ in range(rounds):
        for how in times:
            useful_pool._served.clear()  # the per-lease byte budget is not what is measured
            cache = tmp / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            useful = UsefulWork(WorkerStats(), cache, 1 << 30)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(useful.run)
                if how == "prefetched":
                    plane = useful.plane(worker_job(job1))
                    assert plane is not None
                    useful.prefetcher.want(plane, nxt)
                    with trio.fail_after(120):
                        while useful.prefetcher.fetched < 2:
                            await trio.sleep(0.01)
                t = time.perf_counter()
                workload = await useful.workload(worker_job(job2))
                times[how].append(time.perf_counter() - t)
                assert workload.work_root == job2.work.work_root
                nursery.cancel_scope.cancel()
    best = {how: min(ts) for how, ts in times.items()}
    for how, seconds in best.items():
        print(f"{how:11s} operands ready {seconds * 1000:8.1f} ms  ({size / 1e6:.1f} MB of blobs)")
    print(f"job to workload: cold / prefetched = {best['cold'] / best['prefetched']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", type=int, default=1024)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(bench, args.unit, args.k, args.rounds)


if __name__ == "__main__":
    main()
