"""Hashrate history: bounded samples, bounded miners, and the /history routes."""

from __future__ import annotations

import httpx
import trio
from prometheus_client import CollectorRegistry

from pool.api_data import PoolData, PoolSnapshot, WorkerSnapshot
from pool.history import HashrateHistory
from pool.http_api import create_app, serve_http
from pool.ledger.sqlite import SqliteLedger


def test_samples_are_bounded_and_ordered() -> None:
    h = HashrateHistory(capacity=3)
    for t in range(5):
        h.record(float(t), 10.0 * t, {"a": 1.0 + t})
    assert h.pool_series() == [[2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]
    assert h.miner_series("a") == [[2.0, 3.0], [3.0, 4.0], [4.0, 5.0]]
    assert h.miner_series("b") is None


def test_miner_count_is_bounded_and_idle_miners_are_dropped() -> None:
    h = HashrateHistory(capacity=2, max_miners=2)
    h.record(0.0, 0.0, {"a": 1.0})
    h.record(1.0, 0.0, {"b": 1.0})
    h.record(2.0, 0.0, {"c": 1.0})  # full: "a" was active longest ago, so it goes
    assert h.miner_series("a") is None
    assert h.miner_series("b") == [[1.0, 1.0], [2.0, 0.0]]
    assert h.miner_series("c") == [[2.0, 1.0]]
    h.record(3.0, 0.0, {"c": 1.0})  # "b" has only zero samples left: dropped
    assert h.miner_series("b") is None
    assert len(h._miners) <= h.max_miners


def test_sample_sums_a_miners_workers() -> None:
    h = HashrateHistory()
    live = PoolSnapshot(
        hashrate={"1m": 7.0},
        miners={"x": [WorkerSnapshot("w1", {"1m": 2.0}), WorkerSnapshot("w2", {"1m": 3.0})]},
    )
    h.sample(live, now=5.0)
    assert h.pool_series() == [[5.0, 7.0]]
    assert h.miner_series("x") == [[5.0, 5.0]]


async def test_history_routes(tmp_path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    h = HashrateHistory()
    h.record(1.0, 9.0, {"addr": 4.0})
    data = PoolData(ledger, PoolSnapshot, trio.CapacityLimiter(1), fee_bps=0, min_payout=1)
    app = create_app(data, CollectorRegistry(), history=h)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/api/pool/history")
            assert r.status_code == 200
            assert r.json() == {"window": "1m", "samples": [[1.0, 9.0]]}
            r = await client.get("/api/miners/addr/history")
            assert r.json()["samples"] == [[1.0, 4.0]]
            r = await client.get("/api/miners/nobody/history")
            assert r.status_code == 404 and "error" in r.json()
        nursery.cancel_scope.cancel()
    ledger.close()


async def test_dashboard_serves_the_vendored_chart_library(tmp_path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    data = PoolData(ledger, PoolSnapshot, trio.CapacityLimiter(1), fee_bps=0, min_payout=1)
    app = create_app(data, CollectorRegistry())
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = (await client.get("/")).text
            assert "/static/uPlot.iife.min.js" in page and "/api/pool/history" in page
            r = await client.get("/static/uPlot.iife.min.js")
            assert r.status_code == 200 and "uPlot" in r.text
            assert (await client.get("/static/uPlot.min.css")).status_code == 200
        nursery.cancel_scope.cancel()
    ledger.close()


async def test_live_miners_sorted_by_hashrate(tmp_path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    live = PoolSnapshot(
        miners={
            "slow": [WorkerSnapshot("a", {"1m": 1.0})],
            "fast": [WorkerSnapshot("b", {"1m": 2.0}), WorkerSnapshot("c", {"1m": 3.0})],
        }
    )
    data = PoolData(ledger, lambda: live, trio.CapacityLimiter(1), fee_bps=0, min_payout=1)
    assert data.live_miners() == [
        {"address": "fast", "workers": ["b", "c"], "hashrate": {"1m": 5.0}},
        {"address": "slow", "workers": ["a"], "hashrate": {"1m": 1.0}},
    ]
    ledger.close()
