"""Useful work through the real pool: HTTP work API, leases, blob jobs, held shares, results.

Real pool (embedded devnet node, SQLite ledger and work queue) on 127.0.0.1; the miners
are :class:`tests.miner.TestMiner` (protocol/ only): they fetch blobs with
``work.get_blob``, mine with ``protocol.ticket.mine_header`` and return the denoised
product with ``work.result``. Tiny shapes: units of 32×32 with k = 128 (r = 32).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from pool.app import PoolHandle, run_pool
from protocol import messages
from protocol.address import new_address
from protocol.codec import Message
from protocol.errors import ErrorCode
from protocol.useful import chunks
from protocol.work_messages import USEFUL_CAPABILITY, WorkResult, WorkResultAck
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS, make_config

USEFUL = USEFUL_SETTINGS


def login_of(n: int) -> str:
    """A fresh valid login, worker ``rig{n}``."""
    return f"{new_address()}.rig{n}"


def operands(m: int, k: int, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


def npy_pair(a: np.ndarray, b: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, a)
    np.save(f, b)
    return f.getvalue()


def api(handle: PoolHandle, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}", timeout=20, **kw)


async def submit(handle: PoolHandle, a: np.ndarray, b: np.ndarray) -> str:
    async with api(handle) as client:
        r = await client.post(
            "/api/work", content=npy_pair(a, b), headers={"Content-Type": "application/x-npy"}
        )
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def fetch_result(handle: PoolHandle, work_id: str) -> np.ndarray:
    async with api(handle) as client:
        status = (await client.get(f"/api/work/{work_id}")).json()
        assert status["state"] == "done", status
        r = await client.get(f"/api/work/{work_id}/result")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ b.astype(np.int64)


def metric(handle: PoolHandle, name: str, **labels: str) -> float:
    value = handle.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def ledger_shares(handle: PoolHandle) -> int:
    return await trio.to_thread.run_sync(handle.ledger.share_count, limiter=handle.ledger_limiter)


def is_blob(job: messages.Notify) -> bool:
    return isinstance(job.work.source, messages.BlobSource)


async def mine_unit(
    miner: TestMiner,
    job: messages.Notify,
    min_shares: int = 1,
) -> tuple[np.ndarray, list[Any]]:
    """The product of a blob job and its shares, submitted (held by the pool)."""
    c, found = await miner.product(job)
    for _ in range(20):
        if len(found) >= min_shares:
            break
        found += await miner.find(job)
    assert len(found) >= min_shares
    for cand in found:
        r = await miner.submit(cand)
        assert r.error is None, r.error
    return c, found


@pytest.mark.parametrize("check_processes", [0, 1])  # blob rows from the blob files
async def test_product_larger_than_a_unit_round_trip_with_held_shares(start_pool, check_processes):
    handle = await start_pool({**USEFUL, "pool.check_processes": check_processes})
    a, b = operands(48, 128, 48)  # four units: rows 32 + 16, columns 32 + 16
    work_id = await submit(handle, a, b)
    assert metric(handle, "matmine_pool_work_units", state="queued") == 4
    async with (
        await TestMiner.connect(handle.stratum_port) as m1,
        await TestMiner.connect(handle.stratum_port) as m2,
    ):
        jobs = {
            m1: await m1.login(login_of(1), useful=True),
            m2: await m2.login(login_of(2), useful=True),
        }
        assert all(is_blob(j) for j in jobs.values())
        assert jobs[m1].work.work_root != jobs[m2].work.work_root
        credited = 0
        units = 0
        while any(is_blob(j) for j in jobs.values()):
            for miner, job in list(jobs.items()):
                if not is_blob(job):
                    continue
                c, found = await mine_unit(miner, job)
                # held, not credited: the ledger has only the earlier verified units' shares
                assert await ledger_shares(handle) == credited
                seen = len(miner.jobs)
                r = await miner.send_result(job, c, chunk=1024)  # chunks of 1 KiB
                assert r.error is None, r.error
                assert r.result.accepted and r.result.verified, r.result
                assert r.result.received == job.work.m * job.work.n * 4
                credited += len(found)
                units += 1
                assert await ledger_shares(handle) == credited  # credited on verification
                jobs[miner] = await miner.next_job(seen)
                assert jobs[miner].clean
        assert units == 4
        # the next jobs are synthetic again: nothing useful is queued
        assert not any(is_blob(j) for j in jobs.values())
    got = await fetch_result(handle, work_id)
    assert got.dtype == np.int32 and got.shape == (48, 48)
    assert np.array_equal(got, exact(a, b))
    assert metric(handle, "matmine_pool_useful_macs_total") == 48 * 48 * 128
    assert metric(handle, "matmine_pool_result_checks_total", outcome="pass") == 4
    assert metric(handle, "matmine_pool_work_units", state="done") == 4
    processes = handle.context.checker.batcher.processes
    if check_processes:  # every blob share was checked in the check process
        assert processes is not None and processes.in_threads == 0 and processes.broken == 0


async def test_wrong_product_is_caught_shares_voided_unit_redone_by_another(start_pool):
    handle = await start_pool(USEFUL)
    a, b = operands(32, 128, 32, seed=2)  # one unit
    work_id = await submit(handle, a, b)
    async with (
        await TestMiner.connect(handle.stratum_port) as cheat,
        await TestMiner.connect(handle.stratum_port) as honest,
    ):
        job = await cheat.login(login_of(1), useful=True)
        assert is_blob(job)
        idle = await honest.login(login_of(2), useful=True)
        assert not is_blob(idle)  # the only unit is taken: synthetic work meanwhile
        c, _ = await mine_unit(cheat, job, min_shares=2)
        c = c.copy()
        c[5, 7] += 1  # one element off
        seen = len(cheat.jobs)
        r = await cheat.send_result(job, c)
        assert r.error is None, r.error
        assert r.result.accepted is False and r.result.verified is False
        assert "Freivalds" in r.result.reason
        assert await ledger_shares(handle) == 0  # the held shares were voided
        session = next(s for s in handle.context.sessions if s.session_id == cheat.session_id)
        assert session.judge.invalid_fraction == 0.5  # each voided share counted invalid
        after = await cheat.next_job(seen)
        assert after.clean and not is_blob(after)  # never that unit again
        # its old job's shares are stale now
        late = await cheat.find(job)
        if late:
            r = await cheat.submit(late[0])
            assert r.error is not None and r.error.code == ErrorCode.STALE

        with trio.fail_after(5):  # the rejected unit is queued again: the idle miner gets it
            job2 = await honest.next_job(1)
        assert is_blob(job2) and job2.work.work_root == job.work.work_root  # re-leased
        assert job2.job_id.split(".")[0] == idle.job_id.split(".")[0]  # not a refresh
        c2, found2 = await mine_unit(honest, job2)
        r = await honest.send_result(job2, c2)
        assert r.result.verified is True
        assert await ledger_shares(handle) == len(found2)
    assert np.array_equal(await fetch_result(handle, work_id), exact(a, b))
    assert metric(handle, "matmine_pool_result_checks_total", outcome="fail") == 1
    assert metric(handle, "matmine_pool_result_checks_total", outcome="pass") == 1


def template_of(job: messages.Notify) -> str:
    """The template part of a pool job id (``template.counter``, hex)."""
    return job.job_id.split(".")[0]


async def test_idle_capable_miners_take_newly_queued_units_at_once(start_pool):
    handle = await start_pool(USEFUL)
    assert handle.config.work.job_refresh_seconds == 30.0  # the default: no refresh helps
    async with (
        await TestMiner.connect(handle.stratum_port) as m1,
        await TestMiner.connect(handle.stratum_port) as m2,
        await TestMiner.connect(handle.stratum_port) as old,
    ):
        first = await m1.login(login_of(1), useful=True)
        await m2.login(login_of(2), useful=True)
        await old.login(login_of(0))
        assert not is_blob(first)  # nothing queued yet
        a, b = operands(32, 128, 32, seed=10)  # one unit
        await submit(handle, a, b)
        with trio.fail_after(3):  # pushed at once, not at the next refresh (30 s)
            while not any(is_blob(j) for m in (m1, m2) for j in m.jobs):
                with trio.move_on_after(0.05):
                    await m1.next_job()
                with trio.move_on_after(0.05):
                    await m2.next_job()
        holder, idle = (m1, m2) if any(is_blob(j) for j in m1.jobs) else (m2, m1)
        job = holder.job
        assert is_blob(job) and job.clean and template_of(job) == template_of(first)
        assert not any(is_blob(j) for j in idle.jobs)  # one unit, one lease
        assert (await old.request(messages.Ping())).error is None
        assert len(old.jobs) == 1  # a miner without the capability is left alone
        # the holder leaves: its unit is queued again and the idle miner gets it at once
        seen = len(idle.jobs)
        await holder.aclose()
        with trio.fail_after(3):
            again = await idle.next_job(seen)
        assert is_blob(again) and again.work.work_root == job.work.work_root
        assert template_of(again) == template_of(first)
        c, _ = await idle.product(again)
        r = await idle.send_result(again, c)
        assert r.result.verified is True


async def test_next_job_goes_out_at_delivery_before_the_verdict(start_pool):
    handle = await start_pool(USEFUL)
    a, b = operands(32, 128, 64, seed=11)  # two units
    work_id = await submit(handle, a, b)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        login = login_of(1)
        job = await miner.login(login, useful=True)
        assert is_blob(job)
        c, found = await mine_unit(miner, job, min_shares=2)
        raw = np.ascontiguousarray(c, dtype="<i4").tobytes()
        parts = list(chunks(raw, 1024))
        for offset, data, final in parts[:-1]:
            r = await miner.request(
                WorkResult(
                    job_id=job.job_id,
                    unit=job.work.work_root,
                    offset=offset,
                    data=data,
                    final=final,
                )
            )
            assert r.result == WorkResultAck(accepted=True, received=offset + len(data))
        seen = len(miner.jobs)
        offset, data, final = parts[-1]
        final_id = await miner.send(
            WorkResult(
                job_id=job.job_id, unit=job.work.work_root, offset=offset, data=data, final=final
            )
        )
        r = await miner.response(final_id)
        assert r.result.verified is True and r.result.received == len(raw)
        nxt = miner.jobs[seen]  # the next unit's job came first, then the verdict
        assert miner.arrivals.index(("job", nxt.job_id)) < miner.arrivals.index(
            ("response", final_id)
        )
        assert nxt.clean and is_blob(nxt) and nxt.work.work_root != job.work.work_root
        assert await ledger_shares(handle) == len(found)  # held shares credited
        # shares of the delivered unit's jobs are stale now, and never credited
        useful_before = metric(handle, "matmine_pool_mined_macs_total", kind="useful")
        accepted_before = metric(handle, "matmine_pool_accepted_work_macs_total")
        assert useful_before == sum(job.difficulty for _ in found) * 2**32
        (late, *_) = await miner.shares(1, job)
        r = await miner.submit(late)
        assert r.error is not None and r.error.code == ErrorCode.STALE
        # ... nor counted as mined, useful or not (SPEC §12.7: stale)
        assert metric(handle, "matmine_pool_mined_macs_total", kind="useful") == useful_before
        assert metric(handle, "matmine_pool_accepted_work_macs_total") == accepted_before
        work = handle.metrics.miners.of(login.split(".")[0])
        assert work["rig1"]["useful_mined_macs"] == useful_before
        r = await miner.request(
            WorkResult(
                job_id=job.job_id, unit=job.work.work_root, offset=0, data=raw[:1024], final=False
            )
        )
        assert r.error is not None and r.error.code == ErrorCode.STALE
        c2, found2 = await mine_unit(miner, nxt)
        r = await miner.send_result(nxt, c2)
        assert r.result.verified is True
        assert await ledger_shares(handle) == len(found) + len(found2)
        assert not is_blob(miner.job)  # nothing queued: synthetic work again
    assert np.array_equal(await fetch_result(handle, work_id), exact(a, b))


@pytest.mark.slow
async def test_lease_deadline_returns_the_unit_and_voids_held_shares(start_pool):
    handle = await start_pool({**USEFUL, "useful.lease_seconds": 1.0})
    a, b = operands(32, 128, 32, seed=3)
    work_id = await submit(handle, a, b)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(login_of(1), useful=True)
        assert is_blob(job)
        _, found = await mine_unit(miner, job)
        queue = handle.useful.queue
        first = await trio.to_thread.run_sync(
            queue.lease_of_job, miner.session_id.hex(), job.job_id
        )
        assert len(await trio.to_thread.run_sync(queue.held_shares, first.id)) == len(found)
        with trio.fail_after(5):  # the deadline passes: a new clean job, on a new lease
            again = await miner.next_job(len(miner.jobs))
        assert again.clean and again.work.work_root == job.work.work_root
        lease = await trio.to_thread.run_sync(queue.get_lease, first.id)
        assert lease.state == "expired"
        assert await trio.to_thread.run_sync(queue.held_shares, first.id) == []
        more = await miner.find(job)
        if more:  # a share of the expired lease's job is stale
            r = await miner.submit(more[0])
            assert r.error is not None and r.error.code == ErrorCode.STALE
        # the result on the new lease is taken; the voided shares stay uncredited
        c, _ = await miner.product(again)
        r = await miner.send_result(again, c)
        assert r.result.verified is True
        assert await ledger_shares(handle) == 0
    assert np.array_equal(await fetch_result(handle, work_id), exact(a, b))


async def test_disconnect_releases_the_lease_to_the_next_miner(start_pool):
    handle = await start_pool(USEFUL)
    a, b = operands(32, 128, 32, seed=4)
    await submit(handle, a, b)
    async with await TestMiner.connect(handle.stratum_port) as first:
        job = await first.login(login_of(1), useful=True)
        assert is_blob(job)
    async with await TestMiner.connect(handle.stratum_port) as second:
        with trio.fail_after(5):
            while True:  # the pool notices the disconnect within moments
                job2 = (
                    await second.login(login_of(2), useful=True)
                    if not second.jobs
                    else await second.next_job()
                )
                if is_blob(job2):
                    break
                await second.aclose()
                await trio.sleep(0.1)
                second = await TestMiner.connect(handle.stratum_port)
        assert job2.work.work_root == job.work.work_root


async def test_blob_and_result_refusals_and_old_workers_get_synthetic_work(start_pool):
    handle = await start_pool(USEFUL)
    a, b = operands(48, 128, 48, seed=5)
    await submit(handle, a, b)
    async with (
        await TestMiner.connect(handle.stratum_port) as old,
        await TestMiner.connect(handle.stratum_port) as m1,
        await TestMiner.connect(handle.stratum_port) as m2,
    ):
        synthetic = await old.login(login_of(0))  # no capability: synthetic work
        assert isinstance(synthetic.work.source, messages.SyntheticSource)
        j1 = await m1.login(login_of(1), useful=True)
        j2 = await m2.login(login_of(2), useful=True)
        assert is_blob(j1) and is_blob(j2)
        # an old worker may not fetch blobs at all
        r = await old.get_blob(j1.work.source.a, 0, 1024)
        assert r.error.code == ErrorCode.OTHER and "useful" in r.error.message
        # another session's blob is refused, and so is a made-up one
        mine = {j1.work.source.a, j1.work.source.b}
        other = next(h for h in (j2.work.source.a, j2.work.source.b) if h not in mine)
        r = await m1.get_blob(other, 0, 1024)
        assert r.error.code == ErrorCode.STALE
        assert "not an operand of this session's current work unit" in r.error.message
        r = await m1.get_blob(b"\x01" * 32, 0, 1024)
        assert r.error.code == ErrorCode.STALE
        # over the chunk maximum, and past the end
        r = await m1.get_blob(j1.work.source.a, 0, 8193)
        assert r.error.code == ErrorCode.MALFORMED and "8192" in r.error.message
        r = await m1.get_blob(j1.work.source.a, 32 * 128 + 1, 16)
        assert r.error.code == ErrorCode.MALFORMED and "past the end" in r.error.message
        r = await m1.get_blob(j1.work.source.a, 100, 50)  # a proper chunk
        assert r.error is None and len(r.result.data) == 50 and r.result.total == 32 * 128
        # results: a synthetic job, a wrong unit, a chunk out of order
        c, _ = await m1.product(j1)
        r = await old.send_result(synthetic, c)
        assert r.error.code == ErrorCode.OTHER
        r = await m1.request(
            messages_work_result(j1, unit=j2.work.work_root, offset=0, data=b"\0" * 16, final=False)
        )
        assert r.error.code == ErrorCode.MALFORMED and "unit" in r.error.message
        r = await m1.request(
            messages_work_result(
                j1, unit=j1.work.work_root, offset=64, data=b"\0" * 16, final=False
            )
        )
        assert r.error.code == ErrorCode.MALFORMED and "offset" in r.error.message
        r = await m1.request(
            messages_work_result(j1, unit=j1.work.work_root, offset=0, data=b"\0" * 16, final=True)
        )
        assert r.error.code == ErrorCode.MALFORMED and "final" in r.error.message
        # after the refusals the whole result still goes through, and the session lives
        r = await m1.send_result(j1, c)
        assert r.result.verified is True


def messages_work_result(job: messages.Notify, **kw: Any) -> Message:
    from protocol.work_messages import WorkResult

    return WorkResult(job_id=job.job_id, **kw)


async def test_work_api_on_the_pool_tokens_limits_and_malformed_uploads(start_pool):
    tokens = {"useful.tokens": {"secret-token-1": "alice"}}
    handle = await start_pool(
        {**USEFUL, **tokens, "useful.max_dim": 64, "useful.max_active_items": 1}
    )
    a, b = operands(16, 64, 16, seed=6)
    body = npy_pair(a, b)
    npy = {"Content-Type": "application/x-npy"}
    async with api(handle) as client:
        r = await client.post("/api/work", content=body, headers=npy)
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = await client.post(
            "/api/work", content=body, headers={**npy, "Authorization": "Bearer wrong-token"}
        )
        assert r.status_code == 403
        auth = {**npy, "Authorization": "Bearer secret-token-1"}
        r = await client.post("/api/work", content=body[:-5], headers=auth)
        assert r.status_code == 400 and "cut short" in r.json()["error"]
        big = npy_pair(*operands(80, 64, 16))
        r = await client.post("/api/work", content=big, headers=auth)
        assert r.status_code == 413 and "64" in r.json()["error"]
        bad = a.copy()
        bad[0, 0] = 65
        r = await client.post("/api/work", content=npy_pair(bad, b), headers=auth)
        assert r.status_code == 400
        r = await client.post("/api/work", content=body, headers=auth)
        assert r.status_code == 201, r.text
        work_id = r.json()["id"]
        r = await client.post("/api/work", content=body, headers=auth)
        assert r.status_code == 429
        r = await client.get(
            f"/api/work/{work_id}/result", headers={"Authorization": "Bearer secret-token-1"}
        )
        assert r.status_code == 409 and r.json()["state"] == "queued"
        metrics = (await client.get("/metrics")).text
        assert 'matmine_pool_work_units{state="queued"} 1.0' in metrics


@pytest.mark.parametrize("check_processes", [0, 1])  # meets_network from the process too
async def test_node_accepts_a_block_found_on_a_useful_unit(start_pool, check_processes):
    settings = {**USEFUL, "pool.check_processes": check_processes}
    handle = await start_pool(settings, node={"start_difficulty": 1e-4})
    a, b = operands(32, 128, 32, seed=7)
    await submit(handle, a, b)
    async with await TestMiner.connect(handle.stratum_port) as miner:
        job = await miner.login(login_of(1), useful=True)
        assert is_blob(job)
        await miner.load_workload(job)
        block = None
        for _ in range(60):
            found = [c for c in await miner.find(miner.job) if c.is_block]
            if found:
                r = await miner.submit(found[0])
                assert r.error is None, r.error
                block = r.result.block
                break
        assert block is not None, "no block in 60 headers at network difficulty 1e-4"
        _, tip = await handle.chain.tip()
        assert tip == block


async def test_pool_restart_keeps_queued_work_and_delivered_results(nursery, tmp_path: Path):
    from pool.cli import main as cli_main

    config = make_config(tmp_path / "pool", USEFUL)
    a1, b1 = operands(32, 128, 32, seed=8)
    a2, b2 = operands(32, 128, 64, seed=9)  # two units
    for name, m in (("a1", a1), ("b1", b1), ("a2", a2), ("b2", b2)):
        np.save(tmp_path / f"{name}.npy", m)

    async def cli(*argv: str) -> tuple[int, str]:
        import contextlib

        out = io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out):
                return cli_main(list(argv))

        return await trio.to_thread.run_sync(run), out.getvalue()

    async with trio.open_nursery() as first:
        handle = await first.start(run_pool, config)
        url = f"http://127.0.0.1:{handle.http_port}"
        code, out = await cli(
            "work", "submit", "--api", url, str(tmp_path / "a1.npy"), str(tmp_path / "b1.npy")
        )
        assert code == 0, out
        done_id = out.split()[0]
        code, out = await cli(
            "work", "submit", "--api", url, str(tmp_path / "a2.npy"), str(tmp_path / "b2.npy")
        )
        half_id = out.split()[0]
        async with await TestMiner.connect(handle.stratum_port) as miner:
            job = await miner.login(login_of(1), useful=True)
            for _ in range(2):  # item 1's unit, then item 2's first unit
                c, _ = await miner.product(job)
                seen = len(miner.jobs)
                r = await miner.send_result(job, c)
                assert r.result.verified is True
                job = await miner.next_job(seen)
            assert is_blob(job)  # item 2's second unit, leased when the pool stops
        first.cancel_scope.cancel()

    async with trio.open_nursery() as second:
        handle = await second.start(run_pool, config)
        url = f"http://127.0.0.1:{handle.http_port}"
        code, out = await cli(
            "work", "result", "--api", url, done_id, "-o", str(tmp_path / "c1.npy")
        )
        assert code == 0, out
        assert np.array_equal(np.load(tmp_path / "c1.npy"), exact(a1, b1))
        async with api(handle) as client:
            status = (await client.get(f"/api/work/{half_id}")).json()
        assert status["unit_states"] == {"queued": 1, "running": 0, "done": 1, "failed": 0}
        async with await TestMiner.connect(handle.stratum_port) as miner:
            job = await miner.login(login_of(2), useful=True)
            assert is_blob(job)
            c, _ = await miner.product(job)
            r = await miner.send_result(job, c)
            assert r.result.verified is True
        code, out = await cli(
            "work", "result", "--api", url, half_id, "-o", str(tmp_path / "c2.npy")
        )
        assert code == 0, out
        assert np.array_equal(np.load(tmp_path / "c2.npy"), exact(a2, b2))
        second.cancel_scope.cancel()


def test_capability_is_optional_on_the_wire():
    old = messages.Subscribe.from_params({"agent": "old-miner/0.1"})
    assert old.capabilities is None
    new = messages.Subscribe(agent="w", capabilities=(USEFUL_CAPABILITY,))
    assert new.to_params()["capabilities"] == ["useful-1"]
    assert messages.Subscribe.from_params(new.to_params()) == new
