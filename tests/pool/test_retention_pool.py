"""A running pool prunes its share table by itself ([retention]), keeping the PPLNS window."""

from __future__ import annotations

import time

import trio

from tests.support.ledger_data import ALICE, share


async def test_running_pool_prunes_old_shares_but_keeps_the_window(start_pool, ledger_call):
    pool = await start_pool(
        {
            "retention.interval": 0.1,
            "retention.share_history_seconds": 10.0,
            "retention.block_grace_seconds": 0.0,
        }
    )
    now = time.time()
    # 100 old shares (0.1 of the window each, N = 2): the newest 20 are the window.
    old = [share(i, ALICE, now - 1000 + i, 1.0, 10.0) for i in range(100)]
    await ledger_call(pool, pool.ledger.insert_shares, old)
    with trio.fail_after(10):
        while await ledger_call(pool, pool.ledger.share_count) != 20:
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # more rounds delete nothing more
    assert await ledger_call(pool, pool.ledger.share_count) == 20
    assert pool.registry.get_sample_value("matmine_pool_share_rows") == 20
    assert pool.registry.get_sample_value("matmine_pool_retention_interval_seconds") == 0.1
    last = pool.registry.get_sample_value("matmine_pool_retention_last_run_timestamp_seconds")
    assert now < last <= time.time()
