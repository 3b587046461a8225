"""A PostgreSQL ledger that hangs (SIGSTOP, then SIGCONT) or dies (SIGKILL, then a restart)
while a miner submits: bounded "not stored" (20) answers, jobs keep coming, /metrics and
/healthz report the outage, the pool recovers by itself, and every acknowledged share is in
the ledger afterwards. The honest miner is neither dropped nor escalated against.

The tests run their own PostgreSQL cluster (they stop and kill it), not the session's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pg import PostgresServer, postgres_server

CALL_TIMEOUT = 2.0
# A submit during the outage is answered within about one call timeout (the first commit
# that hangs) plus the share log's check_wait: never held behind a probe of a hung server.
ANSWER_BOUND = 3 * CALL_TIMEOUT
BACKGROUND_ROUNDS = ("pool.payouts", "pool.unlocker", "pool.retention")
REFUSALS = 30  # more than the escalation's minimum: on the old code this got the miner judged


@pytest.fixture(scope="module")
def own_server(request: pytest.FixtureRequest):
    postgres_server(request.config)  # skips (or fails in CI) where PostgreSQL cannot run
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


def cluster_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry))
    return [postmaster, *children]


def signal_cluster(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_cluster(server: PostgresServer) -> None:
    pids = cluster_pids(server)
    signal_cluster(pids, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "PostgreSQL did not die"
        time.sleep(0.05)
    server.running = False


async def stored_digests(url: str) -> set[bytes]:
    import psycopg

    def read() -> set[bytes]:
        with psycopg.connect(url) as conn:
            return {bytes(r[0]) for r in conn.execute("SELECT digest FROM shares")}

    return await trio.to_thread.run_sync(read)


async def ledger_gauge(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('matmine_pool_dependency_up{dependency="ledger"}')
    )
    return float(line.split()[-1])


async def outage(
    start_pool,
    server: PostgresServer,
    stop: Callable[[], None],
    resume: Callable[[], None],
    label: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await trio.to_thread.run_sync(server.create_database)
    pool = await start_pool(
        {
            "ledger.kind": "postgres",
            "ledger.url": url,
            "ledger.call_timeout": CALL_TIMEOUT,
            "ledger.connect_timeout": 2.0,
            "ledger.statement_timeout": 2.0,
            "ledger.retry_interval": 0.2,
            "http.enabled": True,
            "work.job_refresh_seconds": 1.0,
            "limits.invalid_min_shares": 10,
            "limits.invalid_window": 20,
        }
    )
    acked: list[bytes] = []
    refused = 0
    async with (
        await TestMiner.connect(pool.stratum_port, timeout=60) as miner,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.http_port}") as client,
    ):
        await miner.login(new_address() + ".outage")

        async def submit_one() -> tuple[int | None, float]:
            share = (await miner.shares(1, miner.job))[0]
            started = time.monotonic()
            r = await miner.submit(share)
            took = time.monotonic() - started
            if r.error is None:
                acked.append(share.digest)
                return None, took
            return r.error.code, took

        for _ in range(5):
            assert (await submit_one())[0] is None
        assert (await client.get("/healthz")).status_code == 200

        await trio.to_thread.run_sync(stop)
        jobs_at_stop = len(miner.jobs)
        slowest = 0.0
        with trio.fail_after(120):
            while refused < REFUSALS:
                code, took = await submit_one()
                slowest = max(slowest, took)
                if code is not None:
                    assert code == 20, code
                    refused += 1
            assert slowest < ANSWER_BOUND
            await miner.next_job(jobs_at_stop)  # jobs keep coming while the ledger is down
            assert await ledger_gauge(client) == 0
            health = await client.get("/healthz")
            assert health.status_code == 503, health.text
            assert health.json()["status"] == "degraded" and "ledger" in health.json()["down"]

        await trio.to_thread.run_sync(resume)
        resumed = time.monotonic()
        with trio.fail_after(120):
            while (await submit_one())[0] is not None:
                refused += 1
            recovered = time.monotonic() - resumed
            for _ in range(5):
                assert (await submit_one())[0] is None
            assert await ledger_gauge(client) == 1
            assert (await client.get("/healthz")).status_code == 200

        texts = [m.text for m in miner.messages if hasattr(m, "text")]
        assert not miner.closed
        assert not [t for t in texts if "invalid" in t], texts  # never judged
        notices = [t for t in texts if "database" in t]
        assert len(notices) == 2 and "unavailable" in notices[0] and "back" in notices[1]
        assert [m for m in miner.messages if not hasattr(m, "text")] == []  # no reconnect
    stored = await stored_digests(url)
    lost = [d for d in acked if d not in stored]
    print(
        f"\n[{label}] refused while down: {refused}, acknowledged: {len(acked)}, lost acks: "
        f"{len(lost)}, slowest answer while down: {slowest:.2f} s, recovered "
        f"{recovered:.2f} s after the database was back"
    )
    assert lost == []
    assert pool.context.bans.ban_seconds and not pool.context.strikes
    # The background rounds (payouts, unlocking, retention run every 0.2 s here) say in one
    # line that they skip while the database is down, never with a traceback.
    rounds = [r for r in caplog.records if r.name in BACKGROUND_ROUNDS]
    assert [r.getMessage() for r in rounds if r.exc_info] == []
    skipped = [r for r in rounds if "skipped, the ledger is unavailable" in r.getMessage()]
    assert {r.name for r in skipped} >= {"pool.payouts", "pool.unlocker"}, skipped
    assert all(r.levelno == logging.WARNING for r in skipped)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_hung_postgres_sigstop_then_sigcont(start_pool, own_server, caplog):
    pids: list[int] = []

    def stop() -> None:
        pids[:] = cluster_pids(own_server)
        signal_cluster(pids, signal.SIGSTOP)

    try:
        await outage(
            start_pool,
            own_server,
            stop,
            lambda: signal_cluster(pids, signal.SIGCONT),
            "SIGSTOP",
            caplog,
        )
    finally:
        signal_cluster(pids, signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_killed_postgres_restarted(start_pool, own_server, caplog):
    try:
        await outage(
            start_pool,
            own_server,
            lambda: kill_cluster(own_server),
            own_server.start,
            "SIGKILL",
            caplog,
        )
    finally:
        if not own_server.running:
            own_server.start()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["sigstop", "sigkill"])
async def test_ledger_lost_between_send_and_complete_pays_once(tmp_path, own_server, fault):
    """The worst moment of a two-phase payout round: the node has paid, the ledger dies
    before the batch is marked completed. The round fails in bounded time; once the
    database is back, the next round reconciles the batch by its key and pays nothing more."""
    from pool.chain.embedded import EmbeddedChain
    from pool.ledger import open_ledger
    from pool.ledger.base import LedgerError
    from pool.payouts import payout_round
    from pool.unlocker import unlock_round
    from tests.support.payouts_data import (
        MATURITY,
        POOL,
        REWARD,
        found_block,
        node_balances,
        node_config,
    )

    pids: list[int] = []

    class FaultAfterSend(EmbeddedChain):
        """The real embedded node; the database fails right after a payment is sent."""

        armed = False

        async def send_many(self, key: str, outputs: dict[str, int]) -> str:
            txid = await super().send_many(key, outputs)
            if self.armed:
                self.armed = False
                if fault == "sigstop":
                    pids[:] = cluster_pids(own_server)
                    signal_cluster(pids, signal.SIGSTOP)
                else:
                    await trio.to_thread.run_sync(kill_cluster, own_server)
            return txid

    url = await trio.to_thread.run_sync(own_server.create_database)
    ledger = open_ledger(url, call_timeout=CALL_TIMEOUT, connect_timeout=2, statement_timeout=2)
    chain = FaultAfterSend(tmp_path / "node", node_config(), wallet_address=POOL)
    limiter = trio.CapacityLimiter(1)
    try:
        await found_block(ledger, chain)
        await chain.devnet_advance(MATURITY)
        await unlock_round(ledger, chain, limiter)
        balances = ledger.balances()
        assert balances
        chain.armed = True
        started = time.monotonic()
        with pytest.raises(LedgerError):
            await payout_round(ledger, chain, 1, limiter)
        assert time.monotonic() - started < ANSWER_BOUND
        assert await node_balances(chain) == balances  # paid once, on the node
        if fault == "sigstop":
            signal_cluster(pids, signal.SIGCONT)
        else:
            await trio.to_thread.run_sync(own_server.start)
        with trio.fail_after(60):
            while True:
                try:
                    report = await payout_round(ledger, chain, 1, limiter)
                    break
                except LedgerError:
                    await trio.sleep(0.2)
        assert len(report.reconciled) == 1 and report.resent == [] and report.batch is None
        assert ledger.pending_payment_batches() == [] and ledger.balances() == {}
        assert await node_balances(chain) == balances  # not paid twice
        assert await chain.balance(POOL) == REWARD - sum(balances.values())
    finally:
        signal_cluster(pids, signal.SIGCONT)
        if not own_server.running:
            own_server.start()
        ledger.close()
        await chain.aclose()
