"""The HTTP API over a real socket, a real SqliteLedger and a real prometheus registry."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry

from pool.api_data import PoolData, PoolSnapshot, WorkerSnapshot
from pool.hashrate import HashrateMeter
from pool.http_api import MAX_LIMIT, create_app, serve_http
from pool.ledger import SqliteLedger
from pool.ledger.base import ShareRecord
from pool.metrics import PoolMetrics, result_for_error_code
from protocol.address import new_address

ALICE = new_address()
BOB = new_address()
STRANGER = new_address()  # well formed, never seen
FEE_ADDRESS = new_address()
REWARD = 50_000_000


@dataclass
class Api:
    client: httpx.AsyncClient
    ledger: SqliteLedger
    metrics: PoolMetrics
    snapshot: PoolSnapshot


def populate(ledger: SqliteLedger) -> None:
    """Shares of two miners, two blocks (one confirmed), one completed payment."""
    shares = [
        ShareRecord(
            digest=os.urandom(32),
            time=1000.0 + i,
            address=ALICE if i % 4 else BOB,
            worker="rig1" if i % 2 else "rig2",
            job_id="j1",
            height=10,
            difficulty=2.0,
            network_difficulty=40.0,
            session_id=b"s" * 8,
        )
        for i in range(60)
    ]
    assert ledger.insert_shares(shares) == 60
    first = ledger.record_block(10, b"\x01" * 32, REWARD, 1050.0, ALICE, "rig1", 40.0)
    ledger.credit_block(first, 2.0, 100, FEE_ADDRESS)
    ledger.confirm_block(first)
    second = ledger.record_block(11, b"\x02" * 32, REWARD, 1060.0, BOB, "rig2", 40.0)
    ledger.credit_block(second, 2.0, 100, FEE_ADDRESS)
    alice_balance = ledger.balances()[ALICE]
    ledger.create_payment_batch("batch-1", {ALICE: alice_balance - 5})
    ledger.complete_payment_batch("batch-1", "tx" + "ab" * 16)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    populate(ledger)
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    meter = HashrateMeter(now=0.0)
    meter.add(100.0, 30.0)
    snapshot = PoolSnapshot(
        connections=3,
        workers=2,
        hashrate=meter.rates(60.0),
        network_difficulty=40.0,
        height=12,
        miners={ALICE: [WorkerSnapshot("rig1", {"1m": 5e9, "5m": 4e9}, 1100.0, 2.0)]},
        started=900.0,
    )
    data = PoolData(ledger, lambda: snapshot, trio.CapacityLimiter(1), fee_bps=100, min_payout=1000)
    app = create_app(data, registry)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        assert port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield Api(client, ledger, metrics, snapshot)
        nursery.cancel_scope.cancel()
    ledger.close()


async def test_healthz_and_dashboard(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await api.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/api/pool" in r.text and "/api/blocks" in r.text


async def test_pool_stats(api: Api) -> None:
    r = await api.client.get("/api/pool")
    assert r.status_code == 200
    body = r.json()
    assert body["connections"] == 3 and body["workers"] == 2 and body["miners_online"] == 1
    assert body["height"] == 12 and body["network_difficulty"] == 40.0
    assert set(body["hashrate"]) == {"1m", "5m", "1h", "1d"}
    assert body["hashrate"]["1m"] > 0
    assert body["blocks_found"] == 2
    assert body["blocks_confirmed"] == 1 and body["blocks_pending"] == 1
    assert body["last_block_time"] == 1060.0
    assert body["fee_bps"] == 100 and body["fee_percent"] == 1.0
    assert body["min_payout"] == 1000
    totals = api.ledger.pool_totals()
    assert body["total_paid"] == totals.paid > 0
    assert body["pending_payout"] == api.ledger.pending_payout_total()


async def test_round_effort_counts_shares_since_the_last_block(api: Api) -> None:
    body = (await api.client.get("/api/pool")).json()
    assert body["round_share_difficulty"] == 0 and body["effort"] == 0  # last block at 1060
    assert body["accepted_work_macs"] is None and body["useful"] is None  # not given
    api.ledger.insert_shares(
        [
            ShareRecord(
                digest=os.urandom(32),
                time=1060.0 + i,
                address=ALICE,
                worker="rig1",
                job_id="j2",
                height=12,
                difficulty=2.0,
                network_difficulty=40.0,
                session_id=b"s" * 8,
            )
            for i in range(1, 6)
        ]
    )
    body = (await api.client.get("/api/pool")).json()
    assert body["round_share_difficulty"] == 10.0
    assert body["effort"] == pytest.approx(10.0 / 40.0)


async def test_miner_joins_ledger_and_live_workers(api: Api) -> None:
    r = await api.client.get(f"/api/miners/{ALICE}")
    assert r.status_code == 200
    body = r.json()
    summary = api.ledger.miner(ALICE)
    assert body["address"] == ALICE
    assert body["balance"] == summary.balance == 5
    assert body["immature"] == summary.immature > 0
    assert body["paid"] == summary.paid > 0
    assert [p["key"] for p in body["payments"]] == ["batch-1"]
    assert body["hashrate"] == {"1m": 5e9, "5m": 4e9}
    workers = {w["name"]: w for w in body["workers"]}
    assert set(workers) == {"rig1", "rig2"}
    assert workers["rig1"]["online"] and workers["rig1"]["difficulty"] == 2.0
    assert workers["rig1"]["last_share"] == 1100.0  # live is newer than the ledger
    assert not workers["rig2"]["online"] and workers["rig2"]["hashrate"] == {}
    assert workers["rig2"]["last_share"] == summary.workers["rig2"]

    r = await api.client.get(f"/api/miners/{BOB}")
    assert r.status_code == 200
    assert r.json()["hashrate"] == {} and r.json()["paid"] == 0


@pytest.mark.parametrize(
    "address", [STRANGER, "nonsense", STRANGER[:-1] + ("0" if STRANGER[-1] != "0" else "1")]
)
async def test_unknown_or_malformed_miner_is_404_json(api: Api, address: str) -> None:
    r = await api.client.get(f"/api/miners/{address}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert "error" in r.json()


async def test_blocks_and_limit(api: Api) -> None:
    r = await api.client.get("/api/blocks")
    assert r.status_code == 200
    blocks = r.json()
    assert [b["height"] for b in blocks] == [11, 10]
    assert blocks[0]["hash"] == "02" * 32 and blocks[0]["finder"] == BOB
    assert blocks[1]["status"] == "confirmed" and blocks[0]["status"] == "credited"
    r = await api.client.get("/api/blocks", params={"limit": 1})
    assert [b["height"] for b in r.json()] == [11]


async def test_each_block_has_its_effort_and_the_pool_their_mean(api: Api) -> None:
    blocks = (await api.client.get("/api/blocks")).json()
    # Block 10 at 1050: the shares at 1000..1050 (51 x 2.0); block 11 at 1060: 1051..1059.
    assert [b["effort"] for b in blocks] == [pytest.approx(18 / 40), pytest.approx(102 / 40)]
    body = (await api.client.get("/api/pool")).json()
    assert body["average_effort"] == pytest.approx((18 / 40 + 102 / 40) / 2)
    assert body["average_effort_blocks"] == 2


async def test_payments_and_limit(api: Api) -> None:
    r = await api.client.get("/api/payments", params={"limit": MAX_LIMIT})
    assert r.status_code == 200
    (batch,) = r.json()
    assert batch["key"] == "batch-1" and batch["status"] == "completed"
    assert batch["txid"] == "tx" + "ab" * 16
    assert batch["outputs"] == {ALICE: batch["total"]} and batch["recipients"] == 1


@pytest.mark.parametrize("route", ["/api/blocks", "/api/payments"])
@pytest.mark.parametrize("limit", ["0", "-3", "abc", "1.5", str(MAX_LIMIT + 1), ""])
async def test_bad_limit_is_400_json(api: Api, route: str, limit: str) -> None:
    r = await api.client.get(route, params={"limit": limit})
    assert r.status_code == 400
    assert "limit" in r.json()["error"]


async def test_unknown_route_is_json_404(api: Api) -> None:
    r = await api.client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()


async def test_metrics_exposition(api: Api) -> None:
    api.metrics.share("accepted")
    api.metrics.share_rejected(22)
    api.metrics.vardiff_changed(1.0, 4.0)
    api.metrics.share_check_seconds.observe(2e-4)
    api.metrics.connections.set(3)
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "matmine_pool_connections",
        "matmine_pool_workers",
        "matmine_pool_shares_total",
        "matmine_pool_share_check_seconds_bucket",
        "matmine_pool_hashrate_macs_per_second",
        "matmine_pool_network_difficulty",
        "matmine_pool_block_height",
        "matmine_pool_blocks_total",
        "matmine_pool_vardiff_changes_total",
        "matmine_pool_paid_base_units_total",
        "matmine_pool_pending_payout_base_units",
        "matmine_pool_payout_lag_seconds",
        "matmine_pool_db_write_seconds_bucket",
        "matmine_pool_bans_total",
    ):
        assert f"\n{name}" in text, name
    assert 'matmine_pool_shares_total{result="accepted"} 1.0' in text
    assert 'matmine_pool_shares_total{result="duplicate"} 1.0' in text
    assert 'matmine_pool_shares_total{result="malformed"} 0.0' in text
    assert 'matmine_pool_blocks_total{status="orphaned"} 0.0' in text
    assert 'matmine_pool_vardiff_changes_total{direction="up"} 1.0' in text
    assert "matmine_pool_connections 3.0" in text


def test_result_for_error_code_and_bad_labels() -> None:
    assert [result_for_error_code(c) for c in range(20, 29)] == [
        "invalid", "stale", "duplicate", "low_difficulty", "invalid", "invalid",
        "malformed", "rate_limited", "invalid",
    ]  # fmt: skip
    metrics = PoolMetrics(CollectorRegistry())
    with pytest.raises(ValueError):
        metrics.share("great")
    with pytest.raises(ValueError):
        metrics.block("lost")
    # Two instances in one process do not collide (no global registry).
    PoolMetrics(CollectorRegistry())


async def test_two_servers_on_port_zero_get_different_ports(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    registry = CollectorRegistry()
    data = PoolData(ledger, PoolSnapshot, trio.CapacityLimiter(1), fee_bps=0, min_payout=1)
    app = create_app(data, registry)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(serve_http, app, "127.0.0.1", 0)
            b = await nursery.start(serve_http, app, "127.0.0.1", 0)
            assert a != b
            async with httpx.AsyncClient() as client:
                for port in (a, b):
                    r = await client.get(f"http://127.0.0.1:{port}/api/pool")
                    assert r.status_code == 200 and r.json()["blocks_found"] == 0
            nursery.cancel_scope.cancel()
    # Cancelled: the port no longer accepts connections.
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", a)
    ledger.close()
