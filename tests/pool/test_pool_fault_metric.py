"""Issue 15: a share refused with 20 because the pool could not store it is counted under
``pool_error`` in ``matmine_pool_shares_total``, apart from a miner's fault (a 20 for a
tile outside the grid stays ``invalid``)."""

from __future__ import annotations

from pool.ledger.sqlite import SqliteLedger
from pool.metrics import SHARE_RESULTS, PoolFaultCode, result_for_error_code
from protocol.address import new_address
from protocol.errors import ErrorCode
from tests.support.miner import Candidate, TestMiner


def shares_metric(pool, result: str) -> float | None:
    return pool.registry.get_sample_value("matmine_pool_shares_total", {"result": result})


def test_pool_error_is_a_result_label_of_its_own():
    assert "pool_error" in SHARE_RESULTS and "invalid" in SHARE_RESULTS
    assert result_for_error_code(ErrorCode.OTHER) == "invalid"
    assert result_for_error_code(PoolFaultCode(ErrorCode.OTHER)) == "pool_error"
    assert PoolFaultCode(ErrorCode.OTHER) == 20  # the wire still says 20


async def test_share_the_pool_could_not_store_counts_as_pool_error(pool, tmp_path):
    assert shares_metric(pool, "pool_error") == 0  # created at start
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
        assert r.error is not None and r.error.code == ErrorCode.OTHER
        # A miner's 20 (a tile outside the grid) is still the miner's fault.
        outside = Candidate(c.job_id, c.extranonce2, c.time, (99, 0), c.digest, False)
        r = await miner.submit(outside)
        assert r.error is not None and r.error.code == ErrorCode.OTHER
        assert (await miner.submit(c)).error is None  # resubmitted once stored again
    assert shares_metric(pool, "pool_error") == 1
    assert shares_metric(pool, "invalid") == 1
    assert shares_metric(pool, "accepted") == 1
