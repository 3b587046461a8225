"""The happy path over real sockets: subscribe → authorize → job → submit → stored share."""

from __future__ import annotations

import trio

from pool.ledger.base import ShareRecord
from protocol import messages
from protocol.address import new_address
from protocol.errors import ErrorCode
from protocol.target import difficulty_from_bits
from tests.support.miner import TestMiner


async def test_round_trip_stores_acknowledged_share(pool, ledger_call):
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        sub = await miner.subscribe()
        assert len(sub.extranonce1) == 8 and sub.extranonce2_size == 8
        assert sub.extranonce1[:2] == (0).to_bytes(2, "big")  # the instance prefix
        r = await miner.authorize(address + ".rig1")
        assert r.error is None and r.result.ok
        job = await miner.next_job(0)
        assert job.clean
        assert job.difficulty == 1e-4
        assert job.coinbase1 and job.coinbase2
        template = pool.jobs.current
        assert job.height == template.block.height
        assert difficulty_from_bits(job.bits) == template.network_difficulty

        shares = await miner.shares(3)
        acked = []
        for c in shares[:3]:
            r = await miner.submit(c)
            assert r.error is None, r.error
            assert r.result.difficulty == job.difficulty
            assert r.result.block is None
            acked.append(c)
    # Every acknowledged share is in the ledger: inserting it again adds nothing.
    again = [
        ShareRecord(c.digest, 0.0, address, "rig1", c.job_id, job.height, 1e-4, 1.0, b"x")
        for c in acked
    ]
    assert await ledger_call(pool, pool.ledger.share_count) == 3
    assert await ledger_call(pool, pool.ledger.insert_shares, again) == 0
    stats = await ledger_call(pool, pool.ledger.share_stats, 0.0)
    assert [(s.address, s.worker, s.shares) for s in stats] == [(address, "rig1", 3)]


async def test_two_miners_get_distinct_extranonce1_and_pipelined_submits(pool):
    a, b = new_address(), new_address()
    async with (
        await TestMiner.connect(pool.stratum_port) as m1,
        await TestMiner.connect(pool.stratum_port) as m2,
    ):
        job1 = await m1.login(a + ".x")
        job2 = await m2.login(b)  # worker defaults to "default"
        assert m1.extranonce1 != m2.extranonce1
        assert job1.job_id != job2.job_id
        shares = await m1.shares(6)
        ids = [await m1.send_submit(c) for c in shares[:6]]  # pipelined, answered by id
        results = [await m1.response(i) for i in ids]
        assert all(r.error is None for r in results)


async def test_ping_suggest_difficulty_and_resume(pool):
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        r = await miner.request(messages.Ping())
        assert r.error is None
        await miner.login(address + ".w")
        r = await miner.request(messages.SuggestDifficulty(difficulty=0.01))
        assert r.error is None
        job = await miner.next_job()
        assert job.difficulty == 0.01 and not job.clean  # difficulty travels with a job
        session, en1 = miner.session_id, miner.extranonce1
    await trio.sleep(0.05)  # let the pool see the close
    async with await TestMiner.connect(pool.stratum_port) as again:
        sub = await again.subscribe(resume=session)
        assert sub.extranonce1 == en1 and sub.session_id == session


async def test_new_block_sends_clean_job_and_old_job_is_stale(pool):
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(address + ".w")
        old = await miner.shares(2, job)
        await pool.chain.devnet_advance(1)  # someone else found a block
        new = await miner.next_job()
        assert new.clean and new.height == job.height + 1
        r = await miner.submit(old[0])
        assert r.error is not None and r.error.code == ErrorCode.STALE
        fresh = await miner.shares(1, new)
        r = await miner.submit(fresh[0])
        assert r.error is None


async def test_vardiff_raises_difficulty_with_a_new_unclean_job(start_pool):
    pool = await start_pool(
        {
            "vardiff.enabled": True,
            "vardiff.target_seconds": 5.0,
            "vardiff.retarget_shares": 4,
            "pool.start_difficulty": 1e-5,
        }
    )
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".v")
        shares = await miner.shares(8, job)
        seen = len(miner.jobs)
        for c in shares[:8]:
            r = await miner.submit(c)
            assert r.error is None
            assert r.result.difficulty == 1e-5  # judged by its own job's difficulty
        newer = await miner.next_job(seen)
        assert not newer.clean and newer.difficulty > job.difficulty
        # A share of the old job still counts at the old job's difficulty.
        extra = await miner.shares(1, job)
        r = await miner.submit(extra[0])
        assert r.error is None and r.result.difficulty == 1e-5


async def test_two_pool_instances_never_share_an_extranonce1(start_pool, tmp_path):
    one = await start_pool({"pool.instance_id": 1}, data_dir=tmp_path / "one")
    two = await start_pool({"pool.instance_id": 2}, data_dir=tmp_path / "two")
    seen = set()
    for pool, prefix in ((one, b"\x00\x01"), (two, b"\x00\x02")):
        for _ in range(3):
            async with await TestMiner.connect(pool.stratum_port) as miner:
                sub = await miner.subscribe()
                assert sub.extranonce1.startswith(prefix)
                seen.add(sub.extranonce1)
    assert len(seen) == 6


async def test_idle_miner_gets_a_lower_difficulty_job(start_pool):
    pool = await start_pool(
        {"vardiff.enabled": True, "vardiff.idle_seconds": 0.3, "pool.start_difficulty": 1e-3}
    )
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".idle")
        lower = await miner.next_job(1)  # no shares at all: the idle sweep steps down
        assert not lower.clean and lower.difficulty < job.difficulty
        assert lower.height == job.height
