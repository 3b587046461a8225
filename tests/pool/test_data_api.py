"""The HTTP data plane (SPEC §12.7, bulk data plane) through the real pool on 127.0.0.1.

A :class:`TestMiner` leases a unit over stratum (its job names the data plane); the
operands and the result then move over real HTTP: blob ``GET`` with ``Range``, result
``PUT`` with resume, through :class:`~worker.data_client.DataClient` (the worker's own
client) and, to break or spoil bytes on the way, :class:`tests.support.http_proxy.FaultyProxy`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio
from blake3 import blake3

from pool.app import PoolHandle
from pool.config import ConfigError, load_config
from pool.useful.data_api import SPOOL_BATCH, parse_range
from protocol import messages
from protocol.address import new_address
from protocol.denoise import BLOCK_ENTRIES
from protocol.errors import ErrorCode
from protocol.useful import blob_id
from protocol.work_messages import WorkResult, WorkResultAck
from tests.support.http_proxy import FaultyProxy
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS
from worker.blobcache import BlobRejected, BlobSpec
from worker.data_client import DataClient, DataPlane

USEFUL = USEFUL_SETTINGS


def operands(m: int, k: int, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


async def submit(handle: PoolHandle, a: np.ndarray, b: np.ndarray) -> str:
    f = io.BytesIO()
    np.save(f, a)
    np.save(f, b)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
        r = await client.post(
            "/api/work", content=f.getvalue(), headers={"Content-Type": "application/x-npy"}
        )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def source(job: messages.Notify) -> messages.BlobSource:
    assert isinstance(job.work.source, messages.BlobSource), "not a blob job"
    assert job.work.source.data is not None and job.work.source.token is not None
    return job.work.source


def plane(job: messages.Notify, base: str | None = None) -> DataPlane:
    src = source(job)
    assert src.data is not None and src.token is not None
    return DataPlane.of(base + "/data" if base else src.data, src.token, "127.0.0.1")


def spec_a(job: messages.Notify) -> BlobSpec:
    return BlobSpec(source(job).a, job.work.m, job.work.k, job.work.a_root)


def metric(handle: PoolHandle, name: str, **labels: str) -> float:
    value = handle.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def ledger_shares(handle: PoolHandle) -> int:
    return await trio.to_thread.run_sync(handle.ledger.share_count, limiter=handle.ledger_limiter)


async def leased(handle: PoolHandle, count: int = 1, seed: int = 1) -> str:
    a, b = operands(32 * count, 128, 32, seed)
    return await submit(handle, a, b)


async def held_product(miner: TestMiner, job: messages.Notify) -> tuple[bytes, int]:
    """Mine the job's unit (operands over stratum), submit its shares: (C bytes, shares)."""
    c, found = await miner.product(job)
    for _ in range(20):
        if found:
            break
        found += await miner.find(job)
    for cand in found:
        r = await miner.submit(cand)
        assert r.error is None, r.error
    return np.ascontiguousarray(c, dtype="<i4").tobytes(), len(found)


async def test_blob_get_serves_ranges_with_cache_headers(start_pool):
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        src, p = source(job), plane(job)
        whole = await miner.fetch_blob(src.a, job.work.m * job.work.k)  # over stratum
        url = f"{p.base}/blobs/{src.a.hex()}"
        async with httpx.AsyncClient() as client:
            r = await client.get(url, headers=p.auth)
            assert r.status_code == 200 and r.content == whole
            assert r.headers["etag"] == f'"{src.a.hex()}"'
            assert "immutable" in r.headers["cache-control"]
            assert r.headers["accept-ranges"] == "bytes"
            r = await client.head(url, headers=p.auth)
            assert r.status_code == 200 and r.content == b""
            assert r.headers["content-length"] == str(len(whole))
            r = await client.get(url, headers={**p.auth, "Range": "bytes=100-199"})
            assert r.status_code == 206 and r.content == whole[100:200]
            assert r.headers["content-range"] == f"bytes 100-199/{len(whole)}"
            r = await client.get(url, headers={**p.auth, "Range": "bytes=-10"})
            assert r.status_code == 206 and r.content == whole[-10:]
            r = await client.get(url, headers={**p.auth, "Range": f"bytes={len(whole)}-"})
            assert r.status_code == 416
            assert r.headers["content-range"] == f"bytes */{len(whole)}"
    assert metric(handle, "matmine_pool_data_bytes_total", direction="out", path="http") > 0


async def test_missing_wrong_and_other_leases_tokens_are_refused(start_pool):
    handle = await start_pool(USEFUL)
    await leased(handle, count=2)  # two units: one lease each
    async with (
        await TestMiner.connect(handle.stratum_port) as m1,
        await TestMiner.connect(handle.stratum_port) as m2,
    ):
        job1 = await m1.login(f"{new_address()}.rig1", useful=True)
        job2 = await m2.login(f"{new_address()}.rig2", useful=True)
        assert job1.work.work_root != job2.work.work_root
        p1, p2 = plane(job1), plane(job2)
        assert p1.token != p2.token
        blob1 = f"{p1.base}/blobs/{source(job1).a.hex()}"
        result1 = f"{p1.base}/results/{job1.work.work_root.hex()}"
        lease_id, _, mac = p1.token.partition(".")
        forged = f"{lease_id}.{'0' * len(mac)}"
        async with httpx.AsyncClient() as client:
            r = await client.get(blob1)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "Bearer" in r.json()["error"]
            for token in (forged, "garbage", f"{int(lease_id) + 99}.{mac}"):
                r = await client.get(blob1, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 403, (token, r.text)
            # another lease's token reads none of this lease's data, sends none of its result
            assert (await client.get(blob1, headers=p2.auth)).status_code == 403
            assert (await client.get(result1, headers=p2.auth)).status_code == 403
            r = await client.put(
                result1,
                params={"offset": 0},
                headers={**p2.auth, "X-Result-Hash": "0" * 64},
                content=b"\0" * 16,
            )
            assert r.status_code == 403
            # its own token works, for its own blob only
            assert (await client.get(blob1, headers=p1.auth)).status_code == 200
            own2 = f"{p1.base}/blobs/{source(job2).a.hex()}"
            assert (await client.get(own2, headers=p1.auth)).status_code == 403
        # the session ends: its lease, and so its token, end with it
        await m1.aclose()
        with trio.fail_after(10):
            while True:
                async with httpx.AsyncClient() as client:
                    r = await client.get(blob1, headers=p1.auth)
                if r.status_code == 403:
                    break
                await trio.sleep(0.05)


async def test_interrupted_download_resumes_with_range_and_verifies(start_pool, nursery, tmp_path):
    handle = await start_pool(USEFUL)
    await leased(handle)
    proxy = FaultyProxy(handle.http_port, direction="down", cut_after=1500)
    await nursery.start(proxy.serve)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        spec = spec_a(job)
        counted: list[int] = []
        client = DataClient(counted.append)
        blob = await client.fetch_blob(plane(job, proxy.url), spec, tmp_path / ".part-a")
        assert proxy.cuts == 1 and proxy.connections >= 2
        assert blob_id(blob.matrix.tobytes()) == spec.blob_id
        assert sum(counted) == spec.size  # resumed: no byte fetched twice
        assert not (tmp_path / ".part-a").exists()


async def test_tampered_blob_byte_is_caught_and_nothing_kept(start_pool, nursery, tmp_path):
    handle = await start_pool(USEFUL)
    await leased(handle)
    proxy = FaultyProxy(handle.http_port, direction="down", flip_at=700)
    await nursery.start(proxy.serve)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        with pytest.raises(BlobRejected, match="does not match its hash"):
            await DataClient().fetch_blob(plane(job, proxy.url), spec_a(job), tmp_path / ".p")
        assert proxy.flips == 1
        assert not (tmp_path / ".p").exists()
        # the next try, unspoiled, verifies
        blob = await DataClient().fetch_blob(plane(job, proxy.url), spec_a(job), tmp_path / ".p")
        assert blob_id(blob.matrix.tobytes()) == source(job).a


async def test_result_upload_resumes_and_credits_only_after_verification(start_pool, nursery):
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        address = new_address()
        job = await miner.login(f"{address}.rig1", useful=True)
        raw, shares = await held_product(miner, job)
        p = plane(job)
        url = f"{p.base}/results/{job.work.work_root.hex()}"
        headers = {**p.auth, "X-Result-Hash": blake3(raw).hexdigest()}
        async with httpx.AsyncClient() as client:
            half = len(raw) // 2
            r = await client.put(url, params={"offset": 0}, headers=headers, content=raw[:half])
            assert r.status_code == 200 and r.json() == {"received": half, "total": len(raw)}
            assert (await client.get(url, headers=p.auth)).json()["received"] == half
            r = await client.put(url, params={"offset": 7}, headers=headers, content=raw[7:])
            assert r.status_code == 409 and "resume" in r.json()["error"]
            assert await ledger_shares(handle) == 0  # held until verified
            seen = len(miner.jobs)
            r = await client.put(url, params={"offset": half}, headers=headers, content=raw[half:])
            assert r.status_code == 200, r.text
            assert r.json()["verified"] is True, r.json()
        assert await ledger_shares(handle) == shares
        assert not isinstance((await miner.next_job(seen)).work.source, messages.BlobSource)
        mined = shares * job.difficulty * 2**32  # expected MACs of the unit's shares
        assert metric(handle, "matmine_pool_mined_macs_total", kind="useful") == mined
        assert metric(handle, "matmine_pool_mined_macs_total", kind="synthetic") == 0
        # a share on the unit's header after its product was delivered: stale, not counted
        (late, *_) = await miner.shares(1, job)
        r = await miner.submit(late)
        assert r.error is not None and r.error.code == ErrorCode.STALE
        assert metric(handle, "matmine_pool_mined_macs_total", kind="useful") == mined
        assert metric(handle, "matmine_pool_accepted_work_macs_total") == mined
        assert metric(handle, "matmine_pool_useful_macs_total") == 32 * 32 * 128  # leased()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
            pool = (await client.get("/api/pool")).json()
            mine = (await client.get(f"/api/miners/{address}")).json()
        assert pool["useful"]["useful_fraction"] == 32 * 32 * 128 / mined
        expected = {
            "accepted_work_macs": mined,
            "useful_mined_macs": mined,
            "useful_macs": 32 * 32 * 128,
            "useful_fraction": 32 * 32 * 128 / mined,
        }
        assert mine["work"] == expected
        assert [w["work"] for w in mine["workers"]] == [expected]
    assert metric(handle, "matmine_pool_data_bytes_total", direction="in", path="http") == len(raw)
    assert metric(handle, "matmine_pool_data_bytes_total", direction="in", path="stratum") == 0


async def test_interrupted_upload_resumes_through_the_worker_client(start_pool, nursery):
    handle = await start_pool(USEFUL)
    await leased(handle)
    proxy = FaultyProxy(handle.http_port, direction="up", cut_after=2000)
    await nursery.start(proxy.serve)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        raw, shares = await held_product(miner, job)
        answer = await DataClient().upload_result(plane(job, proxy.url), job.work.work_root, raw)
        assert answer["verified"] is True, answer
        assert proxy.cuts == 1 and proxy.connections >= 2
        assert await ledger_shares(handle) == shares


async def test_tampered_result_byte_is_refused_before_judging(start_pool, nursery):
    handle = await start_pool(USEFUL)
    await leased(handle)
    proxy = FaultyProxy(handle.http_port, direction="up", flip_at=1000)
    await nursery.start(proxy.serve)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        raw, shares = await held_product(miner, job)
        p = plane(job, proxy.url)
        url = f"{p.base}/results/{job.work.work_root.hex()}"
        headers = {**p.auth, "X-Result-Hash": blake3(raw).hexdigest()}
        async with httpx.AsyncClient() as client:
            r = await client.put(url, params={"offset": 0}, headers=headers, content=raw)
            assert proxy.flips == 1
            assert r.status_code == 422 and "X-Result-Hash" in r.json()["error"], r.text
            # nothing judged, nothing credited, the lease still open: upload again
            assert await ledger_shares(handle) == 0
            assert metric(handle, "matmine_pool_result_checks_total", outcome="fail") == 0
            assert (await client.get(url, headers=p.auth)).json()["received"] == 0
            r = await client.put(url, params={"offset": 0}, headers=headers, content=raw)
            assert r.status_code == 200 and r.json()["verified"] is True, r.text
        assert await ledger_shares(handle) == shares


async def test_a_wrong_product_over_http_voids_the_held_shares(start_pool):
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        raw, held = await held_product(miner, job)
        wrong = bytearray(raw)
        wrong[0] ^= 1
        answer = await DataClient().upload_result(plane(job), job.work.work_root, bytes(wrong))
        assert answer["verified"] is False and answer["reason"], answer
        assert await ledger_shares(handle) == 0
        assert metric(handle, "matmine_pool_result_checks_total", outcome="fail") == 1
        # ... and counts against the session like a wrong work.result: each voided share
        # is an invalid one in its judge (through the session's inbox)
        session = next(s for s in handle.context.sessions if s.session_id == miner.session_id)
        with trio.fail_after(10):
            while session.judge.invalid_fraction == 0:
                await trio.sleep(0.02)
        assert session.judge.invalid_fraction == pytest.approx(held / (2 * held))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def _slow_body(raw_piece: bytes, total: int) -> Any:
    sent = 0
    while sent < total:
        piece = raw_piece[: total - sent]
        sent += len(piece)
        yield piece


@pytest.mark.slow
async def test_memory_stays_bounded_while_large_results_stream_in(start_pool):
    unit = 2048  # a 16 MiB result per unit; four stream in at once
    settings = {
        **USEFUL,
        "useful.unit_m": unit,
        "useful.unit_n": unit,
        "useful.unit_start_rows": unit,  # whole units for the unmeasured sessions
        "useful.unit_tail_rows": 0,  # nor halved as the queue's last unit
    }
    handle = await start_pool(settings)
    a, b = operands(2 * unit, 32, 2 * unit)
    await submit(handle, a, b)
    miners = [await TestMiner.connect(handle.stratum_port) for _ in range(4)]
    try:
        jobs = [await m.login(f"{new_address()}.rig{i}", useful=True) for i, m in enumerate(miners)]
        assert len({j.work.work_root for j in jobs}) == 4
        total = unit * unit * 4
        piece = b"\x01" * (1 << 20)  # the client holds one MiB, sent over and over
        baseline = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        answers: list[httpx.Response] = []

        async def upload(job: messages.Notify) -> None:
            p = plane(job)
            url = f"{p.base}/results/{job.work.work_root.hex()}"
            headers = {**p.auth, "X-Result-Hash": "0" * 64}
            async with httpx.AsyncClient(timeout=60) as client:
                body = _slow_body(piece, total - 1)  # all but the last byte: never judged
                answers.append(
                    await client.put(url, params={"offset": 0}, headers=headers, content=body)
                )

        with trio.fail_after(120):
            async with trio.open_nursery() as uploads:
                for job in jobs:
                    uploads.start_soon(upload, job)
        peak = _status_kb("VmHWM")
    finally:
        for m in miners:
            await m.aclose()
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert all(r.json()["received"] == total - 1 for r in answers)
    growth = (peak - baseline) / 1024
    print(f"\nRSS baseline {baseline / 1024:.1f} MiB, peak +{growth:.1f} MiB for 4 × 16 MiB")
    assert growth < 32, f"peak RSS grew by {growth:.1f} MiB while 64 MiB streamed in"


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("bytes=0-", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=-5", (95, 100)),
        ("bytes=90-500", (90, 100)),
    ],
)
def test_parse_range(header, span):
    assert parse_range(header, 100) == span


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=5-2", "items=0-1", "bytes=-", "bytes=0-1,3-4"]
)
def test_parse_range_refuses_what_cannot_be_served(header):
    with pytest.raises(Exception, match="not satisfiable"):
        parse_range(header, 100)


async def test_blob_bytes_per_lease_are_bounded_across_both_paths(start_pool):
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        p, size = plane(job), job.work.m * job.work.k
        budget = 4 * (job.work.m + job.work.n) * job.work.k
        await miner.fetch_blob(source(job).a, size)  # over stratum: the same budget
        url = f"{p.base}/blobs/{source(job).a.hex()}"
        async with httpx.AsyncClient() as client:
            codes = [(await client.get(url, headers=p.auth)).status_code for _ in range(12)]
        fits = budget // size - 1
        assert codes[:fits] == [200] * fits and set(codes[fits:]) == {429}, codes


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"useful.data_plane": False}, None),
        ({"useful.data_url": "https://cdn.example/pool-data"}, "https://cdn.example/pool-data"),
    ],
    ids=["off", "public-url"],
)
async def test_the_operator_chooses_whether_and_where_jobs_name_the_data_plane(
    start_pool, settings, expected
):
    """``useful.data_plane = false`` keeps blob jobs on the stratum path; ``useful.data_url``
    names a public base (a reverse proxy or CDN in front of the pool) instead of the
    pool's own HTTP address."""
    handle = await start_pool({**USEFUL, **settings})
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        blob = job.work.source
        assert isinstance(blob, messages.BlobSource)
        assert blob.data == expected
        assert (blob.token is None) == (expected is None)


def test_a_data_url_that_is_not_http_is_refused():
    with pytest.raises(ConfigError, match=r"useful\.data_url must be an http"):
        load_config(None, {"useful.data_url": "ftp://example/data"})


def spools(handle: PoolHandle) -> list[int]:
    """Sizes of the pool's result spool files (uploads in progress)."""
    assert handle.useful is not None
    return sorted(p.stat().st_size for p in handle.useful.blobs.upload_dir.glob(".result-*"))


async def test_a_byte_tampered_after_a_resume_is_judged_wrong_and_voids_the_held_shares(
    start_pool,
):
    """The worker commits a wrong C (its hash is of the wrong bytes), sends a part cut
    mid-row, resumes: the judge has taken exactly the spooled bytes, the flipped byte in
    the last row fails Freivalds' test, nothing is credited or stored."""
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        raw, held = await held_product(miner, job)
        assert held >= 1
        wrong = bytearray(raw)
        wrong[-5] ^= 0x40
        p = plane(job)
        url = f"{p.base}/results/{job.work.work_root.hex()}"
        headers = {**p.auth, "X-Result-Hash": blake3(bytes(wrong)).hexdigest()}
        cut = 1000  # rows are 4·32 = 128 bytes: the cut is mid-row
        async with httpx.AsyncClient() as client:
            r = await client.put(
                url, params={"offset": 0}, headers=headers, content=bytes(wrong[:cut])
            )
            assert r.json() == {"received": cut, "total": len(raw)}
            assert spools(handle) == [cut]  # the spool holds what the judge has taken
            r = await client.put(
                url, params={"offset": cut}, headers=headers, content=bytes(wrong[cut:])
            )
        assert r.status_code == 200 and r.json()["verified"] is False, r.text
        assert "Freivalds" in r.json()["reason"]
        assert await ledger_shares(handle) == 0
        assert metric(handle, "matmine_pool_result_checks_total", outcome="fail") == 1
        assert metric(handle, "matmine_pool_useful_macs_total") == 0
        assert blob_id(bytes(wrong)) not in handle.useful.blobs
        assert spools(handle) == []


async def test_a_result_delivered_over_http_drops_a_partial_one_over_stratum(start_pool):
    """One judge per delivered result: a work.result upload of the same lease, left
    partial, is dropped (its spool removed) when the HTTP upload delivers the lease."""
    handle = await start_pool(USEFUL)
    await leased(handle)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        raw, _ = await held_product(miner, job)
        unit = job.work.work_root
        r = await miner.request(
            WorkResult(job_id=job.job_id, unit=unit, offset=0, data=raw[:1024], final=False)
        )
        assert r.result == WorkResultAck(accepted=True, received=1024)
        assert spools(handle) == [0]  # queued, not written yet: the stream's file is open
        answer = await DataClient().upload_result(plane(job), unit, raw)
        assert answer["verified"] is True, answer
        assert spools(handle) == []
        r = await miner.request(
            WorkResult(job_id=job.job_id, unit=unit, offset=1024, data=raw[1024:2048], final=False)
        )
        assert r.error is not None and r.error.code == ErrorCode.STALE


@pytest.mark.slow
async def test_memory_stays_bounded_while_large_results_stream_in_and_are_judged(start_pool):
    """Four 2048×2048 units (16 MiB of C each) streamed in at once and judged as they
    come: the pool's peak RSS grows by what its chunk and block sizes allow, not by the
    results (the old judge read each back whole, then converted it to float64)."""
    unit = 2048
    settings = {
        **USEFUL,
        "useful.unit_m": unit,
        "useful.unit_n": unit,
        "useful.unit_start_rows": unit,  # whole 2048-row units, not cut for new sessions
        "useful.unit_tail_rows": 0,  # nor halved as the queue's last unit
    }
    handle = await start_pool(settings)
    a, b = operands(3 * unit, 32, 2 * unit)  # six units: the item is not assembled here
    await submit(handle, a, b)
    miners = [await TestMiner.connect(handle.stratum_port) for _ in range(4)]
    try:
        jobs = [await m.login(f"{new_address()}.rig{i}", useful=True) for i, m in enumerate(miners)]
        assert len({j.work.work_root for j in jobs}) == 4
        products = []
        async with httpx.AsyncClient(timeout=60) as client:
            for job in jobs:
                src, p = source(job), plane(job)
                blobs = [
                    (await client.get(f"{p.base}/blobs/{h.hex()}", headers=p.auth)).content
                    for h in (src.a, src.b)
                ]
                ua = np.frombuffer(blobs[0], np.int8).reshape(unit, job.work.k).astype(np.int32)
                ubt = np.frombuffer(blobs[1], np.int8).reshape(unit, job.work.k).astype(np.int32)
                products.append((ua @ ubt.T).astype("<i4").tobytes())
        del ua, ubt
        baseline = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        answers: list[httpx.Response] = []

        async def body(raw: bytes) -> Any:
            view = memoryview(raw)
            for offset in range(0, len(raw), 1 << 20):
                yield bytes(view[offset : offset + (1 << 20)])

        async def upload(job: messages.Notify, raw: bytes) -> None:
            p = plane(job)
            url = f"{p.base}/results/{job.work.work_root.hex()}"
            headers = {**p.auth, "X-Result-Hash": blake3(raw).hexdigest()}
            async with httpx.AsyncClient(timeout=120) as client:
                answers.append(
                    await client.put(url, params={"offset": 0}, headers=headers, content=body(raw))
                )

        with trio.fail_after(240):
            async with trio.open_nursery() as uploads:
                for job, raw in zip(jobs, products, strict=True):
                    uploads.start_soon(upload, job, raw)
        peak = _status_kb("VmHWM")
    finally:
        for m in miners:
            await m.aclose()
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert all(r.json()["verified"] is True for r in answers), [r.json() for r in answers]
    growth = (peak - baseline) / 1024
    # per upload: one SPOOL_BATCH being received, its copy into the judge's row buffer,
    # one float64 block of rows; plus the client's 1 MiB pieces and the servers' buffers
    per_upload = (2 * SPOOL_BATCH + 8 * BLOCK_ENTRIES + (1 << 20)) / (1 << 20)
    bound = 4 * per_upload + 8
    print(f"\nRSS baseline {baseline / 1024:.1f} MiB, peak +{growth:.1f} MiB (bound {bound:.0f})")
    assert growth < bound < 64, f"peak RSS grew by {growth:.1f} MiB while 4 × 16 MiB were judged"
