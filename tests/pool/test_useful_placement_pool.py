"""Registered operands, affinity and units sized to the worker through the real pool.

Real pool (embedded devnet node, SQLite ledger and work queue, HTTP work API) on
127.0.0.1; customers talk to it with httpx, miners are :class:`tests.support.miner.TestMiner`
over real sockets (blobs by ``work.get_blob``, results by ``work.result``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from pool.app import PoolHandle
from protocol import messages
from protocol.address import new_address
from protocol.useful import blob_id
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS

WHOLE_B = {**USEFUL_SETTINGS, "useful.unit_b_max_bytes": 1 << 20, "useful.affinity_seconds": 60.0}
"""Units along m with the whole B; a unit waits up to a minute for an idle holder of B."""


def operand(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-64, 65, (rows, cols), dtype=np.int8)


def npy(*arrays: np.ndarray) -> bytes:
    f = io.BytesIO()
    for array in arrays:
        np.save(f, array)
    return f.getvalue()


NPY = {"Content-Type": "application/x-npy"}


def api(handle: PoolHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}", timeout=20)


async def register(handle: PoolHandle, b: np.ndarray) -> str:
    async with api(handle) as client:
        r = await client.post("/api/work/operands", content=npy(b), headers=NPY)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def submit_on(handle: PoolHandle, a: np.ndarray, operand_id: str) -> dict[str, Any]:
    async with api(handle) as client:
        r = await client.post(
            "/api/work", params={"b_operand": operand_id}, content=npy(a), headers=NPY
        )
    assert r.status_code == 201, r.text
    return r.json()


async def submit_pair(handle: PoolHandle, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    async with api(handle) as client:
        r = await client.post("/api/work", content=npy(a, b), headers=NPY)
    assert r.status_code == 201, r.text
    return r.json()


async def result(handle: PoolHandle, work_id: str) -> np.ndarray:
    async with api(handle) as client:
        status = (await client.get(f"/api/work/{work_id}")).json()
        assert status["state"] == "done", status
        r = await client.get(f"/api/work/{work_id}/result")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def is_blob(job: messages.Notify) -> bool:
    return isinstance(job.work.source, messages.BlobSource)


def bt_blob(b: np.ndarray, n_padded: int, k_padded: int) -> bytes:
    """The id of the padded Bᵀ blob the pool makes of ``b`` for whole-B units."""
    bt = np.zeros((n_padded, k_padded), dtype=np.int8)
    bt[: b.shape[1], : b.shape[0]] = b.T
    return blob_id(bt.tobytes())


async def compute(miner: TestMiner, job: messages.Notify) -> messages.Notify:
    """Fetch, mine (one share held) and return the unit of ``job``; the next job."""
    c, found = await miner.product(job)
    if found:
        r = await miner.submit(found[0])
        assert r.error is None, r.error
    seen = len(miner.jobs)
    r = await miner.send_result(job, c)
    assert r.error is None and r.result.verified, (r.error, r.result)
    return await miner.next_job(seen)


async def blob_job(miner: TestMiner, seen: int) -> messages.Notify:
    """The first blob job after the first ``seen`` jobs of ``miner``."""
    while True:
        job = await miner.next_job(seen)
        seen = len(miner.jobs)
        if is_blob(job):
            return job


async def test_products_on_a_registered_operand_share_its_blob_and_come_out_exact(start_pool):
    handle = await start_pool(WHOLE_B)
    b = operand(128, 48, 1)
    a1, a2 = operand(48, 128, 2), operand(32, 128, 3)
    operand_id = await register(handle, b)
    assert operand_id == blob_id(b.tobytes()).hex()
    assert await register(handle, b) == operand_id  # the same B: the same operand
    async with api(handle) as client:
        listed = (await client.get("/api/work/operands")).json()["operands"]
        assert [(o["id"], o["shape"]) for o in listed] == [(operand_id, {"k": 128, "n": 48})]
        wrong_k = await client.post(
            "/api/work", params={"b_operand": operand_id}, content=npy(a1[:, :64]), headers=NPY
        )
        assert wrong_k.status_code == 400 and "inner dimensions" in wrong_k.json()["error"]
        unknown = await client.post(
            "/api/work", params={"b_operand": "ab" * 32}, content=npy(a1), headers=NPY
        )
        assert unknown.status_code == 404, unknown.text
    first = await submit_on(handle, a1, operand_id)
    second = await submit_on(handle, a2, operand_id)
    assert (first["units"], second["units"]) == (2, 1)  # along m only: 32 + 16 rows, 32
    expected_bt = bt_blob(b, 48, 128)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(f"{new_address()}.rig1", useful=True)
        units = 0
        with trio.fail_after(60):
            while is_blob(job):
                assert job.work.source.b == expected_bt  # one Bᵀ blob for all three units
                job = await compute(miner, job)
                units += 1
    assert units == 3
    for item, a in ((first, a1), (second, a2)):
        assert np.array_equal(await result(handle, item["id"]), a.astype(np.int64) @ b)
    async with api(handle) as client:
        gone = await client.delete(f"/api/work/operands/{operand_id}")
        assert gone.status_code == 200, gone.text
        assert (await client.get("/api/work/operands")).json()["operands"] == []
        again = await client.post(
            "/api/work", params={"b_operand": operand_id}, content=npy(a2), headers=NPY
        )
        assert again.status_code == 404, again.text


@pytest.mark.slow
async def test_a_unit_on_b_goes_to_the_worker_that_holds_b(start_pool):
    handle = await start_pool(WHOLE_B)
    b = operand(128, 48, 4)
    operand_id = await register(handle, b)
    expected_bt = bt_blob(b, 48, 128)
    async with (
        await TestMiner.connect(handle.stratum_port) as holder,
        await TestMiner.connect(handle.stratum_port) as other,
    ):
        first = await holder.login(f"{new_address()}.holder", useful=True)
        assert not is_blob(first)
        seen = len(holder.jobs)
        await submit_on(handle, operand(32, 128, 5), operand_id)
        with trio.fail_after(60):
            job = await blob_job(holder, seen)
            assert job.work.source.b == expected_bt
            idle = await compute(holder, job)  # it fetched B whole: it holds B now
        assert not is_blob(idle)
        assert not is_blob(await other.login(f"{new_address()}.other", useful=True))
        for round_ in range(2):
            seen_h, seen_o = len(holder.jobs), len(other.jobs)
            # a unit on B (both are offered it: it waits for the holder), then one on a B
            # nobody holds (the other takes it): each to its worker
            await submit_on(handle, operand(32, 128, 30 + round_), operand_id)
            await submit_pair(handle, operand(32, 128, 10 + round_), operand(128, 48, 20 + round_))
            with trio.fail_after(60):
                h_job = await blob_job(holder, seen_h)
                o_job = await blob_job(other, seen_o)
            assert h_job.work.source.b == expected_bt
            assert o_job.work.source.b != expected_bt
            with trio.fail_after(60):
                assert not is_blob(await compute(holder, h_job))
                assert not is_blob(await compute(other, o_job))
        # both idle, one unit on B: the holder gets it, the other stays on synthetic work
        seen_o = len(other.jobs)
        await submit_on(handle, operand(32, 128, 40), operand_id)
        with trio.fail_after(60):
            h_job = await blob_job(holder, len(holder.jobs))
        assert h_job.work.source.b == expected_bt
        await trio.sleep(1.0)
        assert not any(is_blob(j) for j in other.jobs[seen_o:])


@pytest.mark.slow
async def test_units_are_cut_to_each_workers_measured_rate(start_pool):
    settings = {
        **WHOLE_B,
        "useful.unit_m": 256,
        "useful.unit_min_rows": 16,
        "useful.unit_start_rows": 16,
        "useful.unit_seconds": 2.0,
        "vardiff.enabled": False,
    }
    handle = await start_pool(settings)
    b = operand(128, 48, 6)
    operand_id = await register(handle, b)
    async with (
        await TestMiner.connect(handle.stratum_port) as fast,
        await TestMiner.connect(handle.stratum_port) as slow,
    ):
        await fast.login(f"{new_address()}.fast", useful=True)
        await slow.login(f"{new_address()}.slow", useful=True)
        # measured rates: 64 accepted shares against 1 (difficulty 1e-5 = 43k MACs each) in
        # t ≥ 1 s since the sessions started; a unit row is 48 × 128 MACs, so in 2 s the
        # fast one does 896/t rows (≥ 64 for t < 14 s), the slow one 14/t (< 16: the least)
        with trio.fail_after(60):
            for miner, count in ((fast, 64), (slow, 1)):
                for cand in (await miner.shares(count))[:count]:
                    r = await miner.submit(cand)
                    assert r.error is None, r.error
        await trio.sleep(1.0)
        seen_f, seen_s = len(fast.jobs), len(slow.jobs)
        item = await submit_on(handle, operand(512, 128, 7), operand_id)
        assert item["units"] == 2  # queued as 2 × 256 rows
        with trio.fail_after(60):
            f_job = await blob_job(fast, seen_f)
            s_job = await blob_job(slow, seen_s)
        assert 64 <= f_job.work.m <= 256 and f_job.work.m % 16 == 0, f_job.work
        assert s_job.work.m == 16, s_job.work


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "pool.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
async def test_cli_registers_lists_uses_and_deletes_an_operand(start_pool, tmp_path):
    handle = await start_pool(WHOLE_B)
    url = f"http://127.0.0.1:{handle.http_port}"
    b, a = operand(128, 48, 8), operand(40, 128, 9)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "hot.npy", np.full((128, 48), 100, dtype=np.int8))

    async def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: cli("work", *argv, "--api", url))

    added = await run("operand", "add", str(tmp_path / "b.npy"))
    assert added.returncode == 0, added.stderr
    operand_id = added.stdout.strip()
    assert operand_id == blob_id(b.tobytes()).hex()
    hot = await run("operand", "add", str(tmp_path / "hot.npy"))
    assert hot.returncode == 2 and "outside" in hot.stderr and "nothing uploaded" in hot.stderr
    listed = await run("operand", "list")
    assert listed.returncode == 0 and operand_id in listed.stdout
    both = await run(
        "submit", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--b-operand", operand_id
    )
    assert both.returncode == 2 and "one of them" in both.stderr
    submitted = await run("submit", "--b-operand", operand_id, str(tmp_path / "a.npy"))
    assert submitted.returncode == 0, submitted.stderr
    work_id = submitted.stdout.strip()
    async with api(handle) as client:
        status = (await client.get(f"/api/work/{work_id}")).json()
    assert status["shape"] == {"m": 40, "k": 128, "n": 48} and status["units"] == 2
    removed = await run("operand", "rm", operand_id)
    assert removed.returncode == 0, removed.stderr
    gone = await run("operand", "rm", operand_id)
    assert gone.returncode == 1 and "404" in gone.stderr


@pytest.mark.slow
async def test_a_miner_that_reconnects_keeps_what_it_held(start_pool):
    handle = await start_pool(WHOLE_B)
    b = operand(128, 48, 50)
    operand_id = await register(handle, b)
    expected_bt = bt_blob(b, 48, 128)
    login = f"{new_address()}.holder"
    async with await TestMiner.connect(handle.stratum_port) as first:
        seen = len(first.jobs) + 1
        await first.login(login, useful=True)
        await submit_on(handle, operand(32, 128, 51), operand_id)
        with trio.fail_after(60):
            assert not is_blob(await compute(first, await blob_job(first, seen)))
    async with (
        await TestMiner.connect(handle.stratum_port) as other,
        await TestMiner.connect(handle.stratum_port) as again,
    ):
        assert not is_blob(await other.login(f"{new_address()}.other", useful=True))
        assert not is_blob(await again.login(login, useful=True))  # the same address.worker
        seen_o = len(other.jobs)
        await submit_on(handle, operand(32, 128, 52), operand_id)
        with trio.fail_after(60):
            job = await blob_job(again, len(again.jobs))
        assert job.work.source.b == expected_bt
        await trio.sleep(1.0)
        assert not any(is_blob(j) for j in other.jobs[seen_o:])
