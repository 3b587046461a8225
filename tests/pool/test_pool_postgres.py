"""The pool itself on a PostgreSQL ledger (the scale-out configuration), over real sockets."""

from __future__ import annotations

import pytest
import trio

from pool.ledger import open_ledger
from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pg import postgres_database


async def test_pool_on_postgres_stores_every_acknowledged_share(start_pool, request):
    url = postgres_database(request.config)
    pool = await start_pool({"ledger.kind": "postgres", "ledger.url": url})
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.login(address + ".pg")
        shares = await miner.shares(4)
        for share in shares[:4]:
            r = await miner.submit(share)
            assert r.error is None, r.error
        duplicate = await miner.submit(shares[0])
        assert duplicate.error is not None and duplicate.error.code == 22
    # A second connection to the database (as a second pool instance would have) sees them.
    ledger = await trio.to_thread.run_sync(open_ledger, url)
    try:
        assert type(ledger).__name__ == "PostgresLedger"
        assert await trio.to_thread.run_sync(ledger.share_count) == 4
        stats = await trio.to_thread.run_sync(ledger.share_stats, 0.0)
        assert [(s.address, s.worker, s.shares) for s in stats] == [(address, "pg", 4)]
    finally:
        ledger.close()


def test_postgres_ledger_needs_a_url(tmp_path):
    from pool.config import ConfigError, PoolConfig, apply_overrides

    with pytest.raises(ConfigError):
        apply_overrides(PoolConfig(), {"ledger.kind": "postgres", "ledger.url": ""})
