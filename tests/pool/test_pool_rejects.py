"""Every reject code of ``mining.submit`` (and friends) over a real socket.

The connection stays usable after each reject: the test goes on with the same miner.
"""

from __future__ import annotations

import pytest
import trio

from pool.ledger.sqlite import SqliteLedger
from protocol import messages
from protocol.address import new_address
from protocol.errors import ErrorCode
from protocol.framing import encode_frame
from tests.support.miner import Candidate, TestMiner, losing_tiles


@pytest.fixture(params=[0, 1], ids=["check-threads", "check-processes"])
async def pool(request, start_pool):
    """A pool with the test defaults, checking shares in threads, then in a check process:
    every reject code is the same either way."""
    return await start_pool(settings={"pool.check_processes": request.param})


def code(r) -> int | None:
    return None if r.error is None else r.error.code


def shares_metric(pool, result: str) -> float:
    return pool.registry.get_sample_value("matmine_pool_shares_total", {"result": result})


async def test_order_codes_25_and_24(pool):
    async with await TestMiner.connect(pool.stratum_port) as miner:
        fake = Candidate("1.1", bytes(8), 0, (0, 0), bytes(32), False)
        assert code(await miner.submit(fake)) == ErrorCode.NOT_SUBSCRIBED
        assert code(await miner.authorize(new_address())) == ErrorCode.NOT_SUBSCRIBED
        await miner.subscribe()
        assert code(await miner.submit(fake)) == ErrorCode.UNAUTHORIZED
        r = await miner.authorize("mmd1notanaddress.rig")
        assert code(r) == ErrorCode.UNAUTHORIZED and "address" in r.error.message
        good = new_address()
        bad_checksum = good[:-1] + ("0" if good[-1] != "0" else "1")
        r = await miner.authorize(bad_checksum + ".rig")
        assert code(r) == ErrorCode.UNAUTHORIZED and "checksum" in r.error.message
        r = await miner.authorize(new_address() + ".rig")
        assert r.error is None
        assert miner.jobs or await miner.next_job(0)


async def test_share_rejects_20_21_22_23_28(pool, ledger_call):
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".rig")
        good = await miner.shares(2, job)
        c = good[0]

        # 21: a job id never issued.
        r = await miner.submit(
            Candidate("ffff.ffff", c.extranonce2, c.time, c.tile, c.digest, False)
        )
        assert code(r) == ErrorCode.STALE and "unknown" in r.error.message
        # 20: tile outside the 4x4 grid of a 64x64 job.
        r = await miner.submit(Candidate(c.job_id, c.extranonce2, c.time, (4, 0), c.digest, False))
        assert code(r) == ErrorCode.OTHER and "outside" in r.error.message
        # 28: time before the job's time, and more than 600 s after it.
        for t in (job.time - 1, job.time + 601):
            r = await miner.submit(Candidate(c.job_id, c.extranonce2, t, c.tile, c.digest, False))
            assert code(r) == ErrorCode.BAD_TIME, t
        # 23: a ticket that does not meet the job's difficulty.
        losers = await trio.to_thread.run_sync(losing_tiles, job, miner.extranonce1, c.extranonce2)
        assert losers, "a 1e-4 share target rejects most tickets"
        r = await miner.submit(losers[0])
        assert code(r) == ErrorCode.LOW_DIFFICULTY
        # accepted, then 22 for the same (extranonce2, time, tile).
        assert code(await miner.submit(c)) is None
        r = await miner.submit(c)
        assert code(r) == ErrorCode.DUPLICATE
        # Rolling time forward up to 600 s is allowed: mine that header and submit.
        rolled = await miner.find(job, ntime=job.time + 600)
        while not rolled:
            rolled = await miner.find(job, ntime=job.time + 600)
        assert code(await miner.submit(rolled[0])) is None

    assert await ledger_call(pool, pool.ledger.share_count) == 2
    assert shares_metric(pool, "accepted") == 2
    assert shares_metric(pool, "duplicate") == 1
    assert shares_metric(pool, "low_difficulty") == 1
    assert shares_metric(pool, "stale") == 1


async def test_share_not_stored_may_be_resubmitted(pool, ledger_call, tmp_path):
    broken = SqliteLedger(tmp_path / "broken.sqlite")
    broken.close()  # a store that fails every write: the share is refused, not acked
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".rig")
        c = (await miner.shares(1, job))[0]
        pool.sharelog.ledger = broken
        try:
            r = await miner.submit(c)
        finally:
            pool.sharelog.ledger = pool.ledger
        assert code(r) == ErrorCode.OTHER and "resubmit" in r.error.message
        assert code(await miner.submit(c)) is None  # not a duplicate: it was never stored
        assert code(await miner.submit(c)) == ErrorCode.DUPLICATE
    assert await ledger_call(pool, pool.ledger.share_count) == 1


async def test_malformed_request_26_keeps_connection(pool):
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address())
        frame = encode_frame(
            {
                "id": 77,
                "method": "mining.submit",
                "params": {
                    "job_id": job.job_id,
                    "extranonce2": b"short",
                    "time": job.time,
                    "tile": [0, 0],
                },
            }
        )
        miner.conn._pending[77] = "mining.submit"  # the raw request's answer is expected
        await miner.send_raw(frame)
        r = await miner.response(77)
        assert code(r) == ErrorCode.MALFORMED and "extranonce2" in r.error.message
        unknown = encode_frame({"id": 78, "method": "mining.fly", "params": {}})
        miner.conn._pending[78] = "mining.ping"
        await miner.send_raw(unknown)
        assert code(await miner.response(78)) == ErrorCode.OTHER
        assert code(await miner.request(messages.Ping())) is None  # still served


async def test_expired_job_is_stale(start_pool):
    pool = await start_pool({"work.job_refresh_seconds": 0.2, "work.job_expiry_seconds": 0.1})
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address())
        shares = await miner.shares(2, job)
        newer = await miner.next_job(1)
        assert not newer.clean and newer.job_id != job.job_id
        await trio.sleep(0.3)
        r = await miner.submit(shares[0])
        assert code(r) == ErrorCode.STALE and "expired" in r.error.message


async def test_rate_limits_27(start_pool):
    pool = await start_pool(
        {
            "limits.messages_per_second": 2.0,
            "limits.message_burst": 5,
            "limits.max_shares_per_job": 1,
        }
    )
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.subscribe()
        ids = [await miner.send(messages.Ping()) for _ in range(8)]
        results = [await miner.response(i) for i in ids]
        assert [code(r) for r in results].count(ErrorCode.RATE_LIMITED) >= 2
        assert code(results[0]) is None
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address())
        shares = await miner.shares(2, job)
        await trio.sleep(1.0)  # refill the bucket
        assert code(await miner.submit(shares[0])) is None
        r = await miner.submit(shares[1])
        assert code(r) == ErrorCode.RATE_LIMITED and "too many shares" in r.error.message


async def test_bad_params_of_every_kind_get_26(pool):
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.subscribe()
        bad = [
            {"login": 5},
            {"difficulty": -1},
            {"job_id": "x", "extranonce2": bytes(8), "time": -5, "tile": [0, 0]},
            {"job_id": "x", "extranonce2": bytes(8), "time": 1, "tile": [0]},
        ]
        methods = [
            "mining.authorize",
            "mining.suggest_difficulty",
            "mining.submit",
            "mining.submit",
        ]
        for i, (method, params) in enumerate(zip(methods, bad, strict=True)):
            rid = 100 + i
            miner.conn._pending[rid] = "mining.ping"
            await miner.send_raw(encode_frame({"id": rid, "method": method, "params": params}))
            assert code(await miner.response(rid)) == ErrorCode.MALFORMED, params
        assert code(await miner.request(messages.Ping())) is None
