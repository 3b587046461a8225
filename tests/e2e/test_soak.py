"""Soak: a real pool with fast blocks, a real worker and a customer, for a bounded time.

Blocks are found, matured and paid out many times over while retention runs: the share
table and the blob store must level off (not grow with the run), every customer product
must come back exact, and the money must add up to the base unit: for every confirmed
block, credits + fee + remainder = reward; what the node paid the miner is what the ledger
says it paid; owed + paid = credited.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from pool.app import run_pool
from pool.config import validate
from tests.support.running import RunningPool, pool_config, running_worker
from worker.backends import open_backends
from worker.config import UsefulConfig

pytestmark = pytest.mark.slow

SOAK_SECONDS = 40.0  # bounded in time ...
MAX_PRODUCTS = 400  # ... and in count
UNIT = 64
SHARE_DIFFICULTY = 2.0**-8
NETWORK_DIFFICULTY = 2.0**-4


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


async def sizes(pool: RunningPool) -> dict[str, int]:
    h = pool.handle
    assert h.useful is not None
    rows = await trio.to_thread.run_sync(h.ledger.share_count, limiter=h.ledger_limiter)
    blob_bytes = await trio.to_thread.run_sync(h.useful.blobs.total_bytes)
    items = await trio.to_thread.run_sync(h.useful.queue.item_count)
    return {"share_rows": rows, "blob_bytes": blob_bytes, "work_items": items}


async def ledger(pool: RunningPool, method: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(method, *args, limiter=pool.handle.ledger_limiter)


async def test_soak_bounded_tables_and_exact_payouts(tmp_path):
    config = pool_config(
        tmp_path / "pool", share_difficulty=SHARE_DIFFICULTY, network_difficulty=NETWORK_DIFFICULTY
    )
    config.http.enabled, config.http.host, config.http.port = True, "127.0.0.1", 0
    config.work.job_refresh_seconds = 1.0
    config.pool.payout_interval = 0.5
    config.pool.min_payout = 1
    config.retention.interval = 0.2
    config.retention.share_history_seconds = 2.0
    config.retention.block_grace_seconds = 0.0
    config.retention.useful_history_seconds = 1.0
    config.retention.blob_grace_seconds = 1.0
    config.chain.node["block_time"] = 1  # keep the retarget near the start: many blocks
    for key, value in {"enabled": True, "unit_m": UNIT, "unit_n": UNIT, "r": 32}.items():
        setattr(config.useful, key, value)
    validate(config)
    rng = np.random.default_rng(7)
    samples: list[dict[str, int]] = []
    products = 0
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        pool = RunningPool(handle, nursery.cancel_scope)
        backend = open_backends("blas", None, threads=1)[0]
        useful = UsefulConfig(
            enabled=True, cache_dir=str(tmp_path / "cache"), cache_max_bytes=1 << 24
        )
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}")
        async with api, running_worker([pool.endpoint], [backend], useful=useful) as worker:
            address = worker.config.login.partition(".")[0]
            start = await sizes(pool)
            deadline = time.monotonic() + SOAK_SECONDS
            while time.monotonic() < deadline and products < MAX_PRODUCTS:
                a = rng.integers(-64, 65, size=(UNIT, 256), dtype=np.int8)
                b = rng.integers(-64, 65, size=(256, UNIT), dtype=np.int8)
                answer = await api.post(
                    "/api/work",
                    content=npy(a) + npy(b),
                    headers={"Content-Type": "application/x-npy"},
                )
                assert answer.status_code == 201, answer.text
                work_id = answer.json()["id"]
                with trio.fail_after(30):
                    while (
                        state := (await api.get(f"/api/work/{work_id}")).json()["state"]
                    ) not in ("done", "failed"):
                        await trio.sleep(0.1)
                assert state == "done"
                result = await api.get(f"/api/work/{work_id}/result")
                c = np.load(io.BytesIO(result.content), allow_pickle=False)
                assert np.array_equal(c, a.astype(np.int32) @ b.astype(np.int32))
                products += 1
                samples.append(await sizes(pool))
            accepted = worker.stats.shares["accepted"]
            blocks_found = worker.stats.blocks
        # mining stopped: the node builds on the last blocks until they mature and are paid
        with trio.fail_after(30):
            while True:
                await handle.chain.devnet_advance(1)
                totals = await ledger(pool, handle.ledger.pool_totals)
                batches = await ledger(pool, handle.ledger.pending_payment_batches)
                left = await sizes(pool)
                if (
                    totals.blocks_pending == 0
                    and not batches
                    and totals.balances == 0
                    and left["work_items"] == 0
                    and left["blob_bytes"] == 0
                ):
                    break
                await trio.sleep(0.2)
        end = await sizes(pool)
        blocks = await ledger(pool, handle.ledger.blocks, 100_000)
        confirmed = [b for b in blocks if b.status == "confirmed"]
        credited = 0
        for block in confirmed:
            credits = await ledger(pool, handle.ledger.block_credits, block.id)
            assert block.fee is not None and block.remainder is not None
            assert sum(credits.values()) + block.fee + block.remainder == block.reward
            credited += credits.get(address, 0)
        miner = await ledger(pool, handle.ledger.miner, address)
        on_chain = await handle.chain.balance(address)
        nursery.cancel_scope.cancel()

    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    print(
        f"\nsoak {SOAK_SECONDS:.0f}s: {products} products, {len(confirmed)} blocks confirmed "
        f"({blocks_found} found by the worker), {accepted} shares accepted, "
        f"{miner.paid} base units paid to the miner; "
        f"start {start}, end {end}, peak {max(s['share_rows'] for s in samples)} share rows, "
        f"peak {max(s['blob_bytes'] for s in samples)} blob bytes"
    )
    assert products >= 10 and len(confirmed) >= 10
    # the tables level off: far fewer rows than shares, no growth from one half to the next
    # what remains is the PPLNS window of the newest share: factor × network difficulty
    window = config.pool.pplns_factor * max(b.network_difficulty for b in blocks) / SHARE_DIFFICULTY
    print(f"PPLNS window at the highest network difficulty: {window:.0f} shares")
    assert end["share_rows"] <= 1.5 * window + 1 < accepted / 3
    peak_first = max(s["share_rows"] for s in first)
    assert max(s["share_rows"] for s in second) <= 2 * peak_first
    assert (
        max(s["blob_bytes"] for s in second) <= max(s["blob_bytes"] for s in first) + 4 * UNIT * 256
    )
    # payouts exact
    assert miner.balance == 0 and miner.pending_payment == 0 and miner.immature == 0
    assert miner.paid == credited > 0
    assert on_chain == miner.paid
