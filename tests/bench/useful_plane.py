"""Useful-work data on loopback: the HTTP data plane vs the stratum ``work.*`` chunk path.

One in-process pool (127.0.0.1) leases one unit of ``--unit``×``--unit`` (k = ``--k``) to a
test miner. In the same run it moves the unit's A operand blob and all but the last
chunk of a result (so nothing is judged) over both paths, ``--rounds`` times each:
stratum ``work.get_blob`` / ``work.result`` in 8 KiB chunks (one in flight, as the
worker's blob fetch does) and HTTP ``GET`` / ``PUT`` through the worker's own
:class:`~worker.data_client.DataClient`. Prints MB/s of each and the ratio HTTP/stratum.

    .venv/bin/python tests/bench/useful_plane.py [--unit 1024] [--k 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
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
from protocol.work_messages import CHUNK_SIZE, WorkResult
from tests.support.miner import TestMiner
from tests.support.pools import make_config
from worker.blobcache import BlobSpec
from worker.data_client import DataClient, DataPlane


async def bench(unit: int, k: int, rounds: int) -> None:
    settings = {
        "http.enabled": True,
        "pool.start_difficulty": 1e-5,
        "useful.unit_m": unit,
        "useful.unit_n": unit,
        "useful.r": 32,
        "useful.lease_seconds": 3600.0,
        "useful.unit_start_rows": unit,  # the whole unit for the unmeasured test miner
        "useful.unit_tail_rows": 0,  # nor halved as the queue's last unit
    }
    rng = np.random.default_rng(1)
    a = rng.integers(-64, 65, (unit, k), dtype=np.int8)
    b = rng.integers(-64, 65, (k, unit), dtype=np.int8)
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(run_pool, make_config(Path(tmp) / "pool", settings))
            useful = handle.useful
            assert useful is not None
            useful.config.max_attempts = 10**6  # the bench fetches blobs many times over
            f = io.BytesIO()
            np.save(f, a)
            np.save(f, b)
            base = f"http://127.0.0.1:{handle.http_port}"
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                r = await client.post(
                    "/api/work", content=f.getvalue(), headers={"Content-Type": "application/x-npy"}
                )
                assert r.status_code == 201, r.text
            async with await TestMiner.connect(handle.stratum_port, timeout=120) as miner:
                job = await miner.login(f"{new_address()}.bench", useful=True)
                await measure(handle, useful, miner, job, rounds, Path(tmp))
            nursery.cancel_scope.cancel()


async def measure(handle, useful, miner: TestMiner, job: messages.Notify, rounds: int, tmp) -> None:
    src = job.work.source
    assert isinstance(src, messages.BlobSource) and src.data and src.token
    plane = DataPlane.of(src.data, src.token, "127.0.0.1")
    spec = BlobSpec(src.a, job.work.m, job.work.k, job.work.a_root)
    total = job.work.m * job.work.n * 4
    short = total - CHUNK_SIZE  # all but the last chunk: never judged
    piece = b"\x01" * CHUNK_SIZE
    client = DataClient()
    times: dict[str, list[float]] = {
        "get stratum": [],
        "get http": [],
        "put stratum": [],
        "put http": [],
    }
    for _ in range(rounds):
        useful.serving._served.clear()  # the per-lease blob budget is not what is measured here
        t = time.perf_counter()
        await miner.fetch_blob(src.a, spec.size)
        times["get stratum"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await client.fetch_blob(plane, spec, tmp / ".part")
        times["get http"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for offset in range(0, short, CHUNK_SIZE):
            r = await miner.request(
                WorkResult(job.job_id, job.work.work_root, offset, piece, False)
            )
            assert r.error is None, r.error
        times["put stratum"].append(time.perf_counter() - t)
        useful.desk.forget(useful.tokens.lease_id(src.token))  # drop the partial upload
    # an HTTP upload's start ends the unit's mining (SPEC §12.7 overlap; work.result is
    # stale from then on): the HTTP puts come after every stratum round
    url = f"{plane.base}/results/{job.work.work_root.hex()}"
    for _ in range(rounds):
        async with httpx.AsyncClient(timeout=120) as http:
            t = time.perf_counter()
            body = b"\x01" * short
            r = await http.put(
                url,
                params={"offset": 0},
                headers={**plane.auth, "X-Result-Hash": "0" * 64},
                content=body,
            )
            times["put http"].append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["received"] == short, r.text
    best = {name: min(ts) for name, ts in times.items()}
    mb = {"get": spec.size / 1e6, "put": short / 1e6}
    for name, seconds in best.items():
        print(
            f"{name:12s} {mb[name[:3]] / seconds:9.1f} MB/s"
            f"  ({mb[name[:3]]:.1f} MB in {seconds:.3f} s)"
        )
    for what in ("get", "put"):
        ratio = best[f"{what} stratum"] / best[f"{what} http"]
        print(f"{what}: HTTP data plane / stratum chunks = {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", type=int, default=1024)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(bench, args.unit, args.k, args.rounds)


if __name__ == "__main__":
    main()
