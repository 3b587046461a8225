"""/api/pool's round effort and accepted work, and useful work's stats, from a real pool.

Real pool on 127.0.0.1 (embedded devnet node, SQLite ledger, HTTP API); the miner is
:class:`tests.support.miner.TestMiner`.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from protocol import messages
from protocol.address import new_address
from protocol.target import MACS_PER_DIFF1
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS, StartPool

USEFUL = USEFUL_SETTINGS


async def test_effort_and_accepted_work_from_accepted_shares(start_pool: StartPool) -> None:
    pool = await start_pool(settings={"http.enabled": True, "useful.enabled": False})
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{pool.http_port}", timeout=20
    ) as client:
        before = (await client.get("/api/pool")).json()
        assert before["effort"] == 0 and before["round_share_difficulty"] == 0
        assert before["accepted_work_macs"] == 0 and before["useful"] is None
        async with await TestMiner.connect(pool.stratum_port) as miner:
            job = await miner.login(new_address() + ".rig1")
            accepted = 0
            for c in await miner.shares(4, job):
                accepted += (await miner.submit(c)).error is None
        assert accepted >= 1
        p = (await client.get("/api/pool")).json()
        metrics = (await client.get("/metrics")).text
    difficulty = job.difficulty
    assert p["round_share_difficulty"] == pytest.approx(accepted * difficulty)
    assert p["effort"] == pytest.approx(accepted * difficulty / p["network_difficulty"])
    assert p["accepted_work_macs"] == pytest.approx(accepted * difficulty * MACS_PER_DIFF1)
    line = next(
        x for x in metrics.splitlines() if x.startswith("matmine_pool_accepted_work_macs_total ")
    )
    assert float(line.split()[1]) == pytest.approx(p["accepted_work_macs"])
    for key in ("hashrate", "blocks_found", "fee_bps", "min_payout", "started"):
        assert key in p  # the answer's existing fields stay


async def test_useful_stats_count_units_items_and_the_useful_fraction(
    start_pool: StartPool,
) -> None:
    pool = await start_pool(settings=USEFUL)
    rng = np.random.default_rng(2)
    a = rng.integers(-64, 65, (32, 128), dtype=np.int8)
    b = rng.integers(-64, 65, (128, 32), dtype=np.int8)
    body = io.BytesIO()
    np.save(body, a)
    np.save(body, b)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{pool.http_port}", timeout=20
    ) as client:
        r = await client.post(
            "/api/work", content=body.getvalue(), headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 201, r.text
        u = (await client.get("/api/pool")).json()["useful"]
        assert u["units"] == {"queued": 1, "running": 0, "done": 0, "failed": 0}
        assert u["items"]["queued"] == 1 and u["useful_macs"] == 0
        assert u["useful_fraction"] is None  # nothing accepted yet
        async with await TestMiner.connect(pool.stratum_port) as miner:
            job = await miner.login(new_address() + ".rig1", useful=True)
            assert isinstance(job.work.source, messages.BlobSource)
            c, found = await miner.product(job)
            accepted = 0
            for candidate in found:
                accepted += (await miner.submit(candidate)).error is None
            verdict = await miner.send_result(job, c)
            assert verdict.result.verified is True
        p = (await client.get("/api/pool")).json()
    u = p["useful"]
    assert u["units"]["done"] == 1 and u["items"]["done"] == 1
    assert u["useful_macs"] == 32 * 32 * 128
    assert p["accepted_work_macs"] == pytest.approx(accepted * job.difficulty * MACS_PER_DIFF1)
    if accepted:
        assert u["useful_fraction"] == pytest.approx(u["useful_macs"] / p["accepted_work_macs"])
