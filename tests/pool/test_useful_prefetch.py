"""Prefetch reservations and overlap (SPEC §12.7) through the real pool on 127.0.0.1.

:class:`TestMiner` sessions lease units over stratum; their jobs name the HTTP data plane
and the unit reserved next (``next``); blobs and results move over real HTTP (httpx).
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import trio
from blake3 import blake3

from pool.app import PoolHandle
from protocol import messages
from protocol.address import new_address
from protocol.errors import ErrorCode
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS


def operands(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


async def submit(handle: PoolHandle, seed: int) -> str:
    """A one-unit product (32 × 128 · 128 × 32) of its own operands."""
    f = io.BytesIO()
    for x in operands(32, 128, 32, seed):
        np.save(f, x)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
        r = await client.post(
            "/api/work", content=f.getvalue(), headers={"Content-Type": "application/x-npy"}
        )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def source(job: messages.Notify) -> messages.BlobSource:
    src = job.work.source
    assert isinstance(src, messages.BlobSource) and src.data is not None, "no data-plane job"
    return src


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_blob(job: messages.Notify, blob: bytes, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.get(f"{source(job).data}/blobs/{blob.hex()}", headers=bearer(token))


async def put_result(
    job: messages.Notify,
    raw: bytes,
    offset: int = 0,
    end: int | None = None,
    token: str | None = None,
) -> httpx.Response:
    """Bytes ``raw[offset:end]`` of the job's whole result ``raw`` (hashed whole)."""
    src = source(job)
    headers = {**bearer(token or src.token or ""), "X-Result-Hash": blake3(raw).hexdigest()}
    url = f"{src.data}/results/{job.work.work_root.hex()}"
    body = raw[offset:end]
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.put(url, params={"offset": offset}, headers=headers, content=body)


async def product(miner: TestMiner, job: messages.Notify) -> tuple[bytes, list]:
    c, found = await miner.product(job)
    for _ in range(50):
        if found:
            break
        found += await miner.find(job)
    return np.ascontiguousarray(c, dtype="<i4").tobytes(), found


async def test_jobs_name_the_reserved_unit_whose_token_fetches_only_its_blobs_and_is_leased_next(
    start_pool,
):
    handle = await start_pool(USEFUL_SETTINGS)
    await submit(handle, 1)
    await submit(handle, 2)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        nxt = source(job).next
        assert nxt is not None and nxt.token != source(job).token
        assert {nxt.a, nxt.b}.isdisjoint({source(job).a, source(job).b})
        for blob in (nxt.a, nxt.b):
            r = await get_blob(job, blob, nxt.token)
            assert r.status_code == 200 and blake3(r.content).digest() == blob
        # the reservation's token authorizes its two blobs and nothing else
        assert (await get_blob(job, source(job).b, nxt.token)).status_code == 403
        raw, found = await product(miner, job)
        assert found, "no share found on the unit"
        refused = await put_result(job, raw, 0, 100, token=nxt.token)
        assert refused.status_code == 403, refused.text
        # the upload's start ends the unit's mining: the reserved unit's job comes at once
        seen = len(miner.jobs)
        first = await put_result(job, raw, 0, len(raw) // 2)
        assert first.status_code == 200 and first.json()["received"] == len(raw) // 2
        with trio.fail_after(10):
            second = await miner.next_job(seen)
        assert second.clean and (source(second).a, source(second).b) == (nxt.a, nxt.b)
        assert source(second).token == nxt.token  # the lease keeps the reservation's token
        assert source(second).next is None  # nothing else queued
        late = await miner.submit(found[0])  # a share on the uploading unit: stale
        assert late.error is not None and late.error.code == ErrorCode.STALE, late
        # one lease uploads, the other mines: its upload waits for the first's delivery
        raw2, _ = await product(miner, second)
        assert (await put_result(second, raw2, 0)).status_code == 409
        rest = await put_result(job, raw, len(raw) // 2)
        assert rest.status_code == 200 and rest.json()["verified"] is True, rest.text
        seen = len(miner.jobs)
        done = await put_result(second, raw2, 0)
        assert done.status_code == 200 and done.json()["verified"] is True, done.text
        with trio.fail_after(10):
            assert not isinstance((await miner.next_job(seen)).work.source, messages.BlobSource)


async def test_reservations_drop_on_disconnect_and_when_another_session_takes_the_unit(
    start_pool,
):
    handle = await start_pool(USEFUL_SETTINGS)
    for seed in (3, 4, 5):
        await submit(handle, seed)
    async with (
        await TestMiner.connect(handle.stratum_port) as m2,
        await TestMiner.connect(handle.stratum_port) as m3,
        await TestMiner.connect(handle.stratum_port) as m4,
    ):
        m1 = await TestMiner.connect(handle.stratum_port)
        j1 = await m1.login(f"{new_address()}.m1", useful=True)
        n1 = source(j1).next
        assert n1 is not None
        assert (await get_blob(j1, n1.a, n1.token)).status_code == 200
        j2 = await m2.login(f"{new_address()}.m2", useful=True)  # the third unit: not n1's
        assert (source(j2).a, source(j2).b) != (n1.a, n1.b) and source(j2).next is None
        await m1.aclose()  # gone: its lease and its reservation end
        with trio.fail_after(10):
            while (await get_blob(j1, n1.a, n1.token)).status_code != 403:
                await trio.sleep(0.05)
        j3 = await m3.login(f"{new_address()}.m3", useful=True)
        n3 = source(j3).next
        assert n3 is not None and (await get_blob(j3, n3.a, n3.token)).status_code == 200
        # an idle session takes the unit reserved for m3 rather than wait: m3's is dropped
        j4 = await m4.login(f"{new_address()}.m4", useful=True)
        assert (source(j4).a, source(j4).b) == (n3.a, n3.b)
        assert source(j4).token != n3.token
        assert (await get_blob(j3, n3.a, n3.token)).status_code == 403


async def test_bytes_fetched_under_a_reservation_count_against_its_units_budget(start_pool):
    handle = await start_pool(USEFUL_SETTINGS)
    await submit(handle, 6)
    await submit(handle, 7)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        nxt = source(job).next
        assert nxt is not None
        # budget: 4 × (32 + 32) × 128 bytes = 8 whole blobs of 4096 bytes
        for _ in range(8):
            assert (await get_blob(job, nxt.a, nxt.token)).status_code == 200
        assert (await get_blob(job, nxt.a, nxt.token)).status_code == 429
        raw, _ = await product(miner, job)
        seen = len(miner.jobs)
        assert (await put_result(job, raw, 0, 64)).status_code == 200  # the upload starts
        with trio.fail_after(10):
            second = await miner.next_job(seen)
        assert source(second).token == nxt.token
        # leased now: the bytes it fetched as a reservation still count
        assert (await get_blob(second, nxt.b, nxt.token)).status_code == 429


async def test_without_prefetch_no_unit_is_reserved(start_pool):
    handle = await start_pool({**USEFUL_SETTINGS, "useful.prefetch": False})
    await submit(handle, 8)
    await submit(handle, 9)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        assert source(job).next is None
