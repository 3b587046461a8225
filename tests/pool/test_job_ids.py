"""Job ids never repeat across pool restarts (issue 9, defect 5; SPEC §12.4).

Before, ids restarted at ``1.1`` with every process, so a share a miner still had for a
pre-restart job was judged against an unrelated new job (23 or 28, counted invalid) instead
of being stale (21). A real pool is stopped and started again on the same data dir.
"""

from __future__ import annotations

from pathlib import Path

import trio

from pool.app import run_pool
from protocol import messages
from protocol.address import new_address
from protocol.errors import ErrorCode
from protocol.messages import MAX_JOB_ID
from tests.support.miner import Candidate, TestMiner
from tests.support.pools import make_config

NODE = {"start_difficulty": 1e9}  # no block: the chain tip is the same after the restart


async def jobs_and_shares(port: int) -> tuple[list[messages.Notify], list[Candidate]]:
    """A session's jobs (a clean one, then two difficulty changes) and a share of each."""
    async with await TestMiner.connect(port) as miner:
        jobs = [await miner.login(new_address() + ".rig")]
        for difficulty in (2e-4, 4e-4):
            r = await miner.request(messages.SuggestDifficulty(difficulty=difficulty))
            assert r.error is None
            jobs.append(await miner.next_job())
        return jobs, [(await miner.shares(1, job))[0] for job in jobs]


async def test_a_job_id_from_before_a_restart_is_stale(nursery, tmp_path: Path):
    config = make_config(tmp_path / "pool", node=NODE)
    async with trio.open_nursery() as first:
        handle = await first.start(run_pool, config)
        old_jobs, old_shares = await jobs_and_shares(handle.stratum_port)
        first.cancel_scope.cancel()

    async with trio.open_nursery() as second:
        handle = await second.start(run_pool, config)
        # The first miner on the new process (the one that reconnected, say) gets the
        # same sequence of jobs, and still holds its pre-restart shares.
        async with await TestMiner.connect(handle.stratum_port) as miner:
            await miner.login(new_address() + ".late")
            for difficulty in (2e-4, 4e-4):
                r = await miner.request(messages.SuggestDifficulty(difficulty=difficulty))
                assert r.error is None
                await miner.next_job()
            answers = [await miner.submit(share) for share in old_shares]
            new_ids = {j.job_id for j in miner.jobs}
        second.cancel_scope.cancel()
    assert all(len(j) <= MAX_JOB_ID for j in new_ids | {j.job_id for j in old_jobs})
    assert [r.error and r.error.code for r in answers] == [ErrorCode.STALE] * len(old_shares)
    assert all("unknown" in r.error.message for r in answers)
    assert not new_ids & {j.job_id for j in old_jobs}
