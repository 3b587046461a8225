"""The real worker against the real pool over loopback: blocks found and credited, clean
jobs cancel scans, the stalled-device watchdog, metrics and the JSON summary."""

from __future__ import annotations

import logging
import time

import httpx
import trio

from protocol.header import MAX_TIME_ROLL
from protocol.workload import Workload
from tests.support.running import (
    NETWORK_DIFFICULTY,
    LongScanBackend,
    StallingBackend,
    running_pool,
    running_worker,
    wait_until,
)
from worker.backends import open_backends
from worker.device_slot import DeviceSlot
from worker.jobfeed import MinableJob


def blas():
    return open_backends("blas", None, threads=1)[0]


async def test_block_found_and_credited(tmp_path):
    async with (
        running_pool(tmp_path, network_difficulty=NETWORK_DIFFICULTY) as pool,
        running_worker([pool.endpoint], [blas()]) as worker,
    ):
        await wait_until(lambda: worker.stats.blocks >= 1, 20)
        address = worker.config.login.partition(".")[0]
        ledger, limiter = pool.handle.ledger, pool.handle.ledger_limiter

        async def credited() -> dict[str, int]:
            for block in await trio.to_thread.run_sync(ledger.blocks, limiter=limiter):
                if block.status in ("credited", "confirmed", "matured", "paid"):
                    credits = await trio.to_thread.run_sync(
                        ledger.block_credits, block.id, limiter=limiter
                    )
                    if credits.get(address, 0) > 0:
                        return credits
            return {}

        with trio.fail_after(20):
            while not (credits := await credited()):
                await trio.sleep(0.1)
        blocks = await trio.to_thread.run_sync(ledger.blocks, limiter=limiter)
        assert any(b.address == address and b.worker == "rig1" for b in blocks)
        assert credits[address] > 0
        s = worker.stats
        assert s.shares["accepted"] >= 1 and s.shares["rejected"] == 0
        assert s.hw_errors == 0
        assert await pool.shares_received() >= s.shares["accepted"]


async def test_clean_job_cancels_the_running_scan(tmp_path):
    device = LongScanBackend(blas(), hold=30.0)
    # every tile a share, so the aborted scan surely has winners to drop (at the default
    # difficulty, ~4 winners a header, about 1 header in 50 had none: the test then failed)
    async with (
        running_pool(tmp_path, share_difficulty=1e-7) as pool,
        running_worker([pool.endpoint], [device]) as worker,
    ):
        await wait_until(device.in_scan.is_set, 10)
        # a job with clean = false (a difficulty change, a refresh) lets the scan run on
        old_job = worker.feed.job
        await pool.handle.jobs.refresh(clean=False)
        await wait_until(lambda: worker.feed.job is not old_job, 5)
        await trio.sleep(0.3)
        assert device.in_scan.is_set() and device.stopped_early == 0

        # a clean job stops it at the backend's next should_stop poll
        candidates = worker.stats.device(device.name).candidates
        asked = time.monotonic()
        await pool.handle.jobs.refresh(clean=True)
        await wait_until(lambda: device.stopped_early >= 1, 5)
        assert time.monotonic() - asked < 2.0
        dev = worker.stats.device(device.name)
        await wait_until(lambda: dev.partial_scans >= 1, 5)
        assert worker.feed.job.notify.clean
        # the winners the aborted scan reported were dropped, not checked or sent
        assert device.scans[-1].winners
        assert dev.candidates == candidates
        # and the device is on the new job right away
        await wait_until(device.in_scan.is_set, 5)


async def test_stalled_device_is_restarted(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    stuck = StallingBackend(blas(), stalls=1, limit=10.0)
    fresh = blas()
    reopened: list[int] = []

    def reopen(index: int) -> object:
        reopened.append(index)
        return fresh

    try:
        async with (
            running_pool(tmp_path) as pool,
            running_worker(
                [pool.endpoint], [stuck], reopen=reopen, watchdog=_watchdog(0.4)
            ) as worker,
        ):
            await wait_until(lambda: reopened == [0], 10)
            assert worker.miner.slots[0].backend is fresh
            await wait_until(lambda: worker.stats.device(fresh.name).scans >= 2, 10)
            assert worker.stats.device(stuck.name).restarts == 1
            assert worker.watchdog is not None and worker.watchdog.restarts == 1
    finally:
        stuck.release.set()
    assert f"device {stuck.name} stalled: no progress for" in caplog.text


def _watchdog(seconds: float):
    from worker.config import WatchdogConfig

    return WatchdogConfig(stall_timeout=seconds)


async def test_metrics_and_summary_are_served(tmp_path):
    async with running_pool(tmp_path) as pool:
        device = blas()
        async with running_worker([pool.endpoint], [device], metrics_port=0) as worker:
            await wait_until(lambda: worker.stats.shares["accepted"] >= 2, 20)
            (url,) = worker.metrics_urls
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                text = (await http.get("/metrics")).text
                summary = (await http.get("/api/summary")).json()
                missing = await http.get("/nope")
    assert f'matmine_worker_hashrate_macs_per_second{{device="{device.name}"}}' in text
    assert 'matmine_worker_hashrate_macs_per_second{device="total"}' in text
    work = f'matmine_worker_work_macs_total{{device="{device.name}"}} '
    (line,) = [x for x in text.splitlines() if x.startswith(work)]
    assert float(line.split()[-1]) > 0
    assert 'matmine_worker_shares_total{result="accepted"}' in text
    assert 'matmine_worker_shares_total{result="stale"} 0.0' in text
    assert f'matmine_worker_hw_errors_total{{device="{device.name}"}} 0.0' in text
    assert "matmine_worker_pool_connected 1.0" in text
    accepted = [
        line
        for line in text.splitlines()
        if line.startswith('matmine_worker_shares_total{result="accepted"}')
    ]
    assert float(accepted[0].split()[-1]) >= 2
    assert summary["pool"]["connected"] is True
    assert summary["pool"]["url"] == pool.endpoint.label
    assert summary["shares"]["accepted"] >= 2
    assert summary["hashrate_macs"]["10s"] > 0
    assert summary["devices"][0]["name"] == device.name
    assert summary["devices"][0]["scans"] >= 1
    assert missing.status_code == 404


async def test_extranonce2_space_is_split_across_devices_and_time_rolls(tmp_path):
    a, b = blas(), blas()
    a.name, b.name = "blas-a", "blas-b"
    async with (
        running_pool(tmp_path) as pool,
        running_worker([pool.endpoint], [a, b]) as worker,
    ):
        await wait_until(
            lambda: all(worker.stats.device(n).scans >= 3 for n in ("blas-a", "blas-b")), 10
        )
        await wait_until(lambda: worker.stats.shares["accepted"] >= 4, 20)
        slots = worker.miner.slots
        assert [s.next_extranonce2()[0] for s in slots] == [0, 1]
        assert worker.stats.shares["rejected"] == 0  # no duplicates between devices
        job = worker.feed.job
    slot = DeviceSlot(3, a)
    seen = {slot.next_extranonce2() for _ in range(1000)}
    assert len(seen) == 1000 and all(e[0] == 3 and len(e) == 8 for e in seen)
    assert job is not None
    workload = Workload.synthetic(job.notify.work.source.seed, job.notify.work.shape)
    minable = MinableJob(job, workload, 1, 1)
    assert minable.header_time(job.received, True) == job.notify.time
    assert minable.header_time(job.received + 42.7, True) == job.notify.time + 42
    assert minable.header_time(job.received + 10_000, True) == job.notify.time + MAX_TIME_ROLL
    assert minable.header_time(job.received + 42.7, False) == job.notify.time


async def test_resumed_session_keeps_its_extranonce_and_counters(tmp_path):
    device = blas()
    async with (
        running_pool(tmp_path) as pool,
        running_worker([pool.endpoint], [device]) as worker,
    ):
        await wait_until(lambda: worker.stats.shares["accepted"] >= 2, 20)
        first = worker.failover.active
        assert first is not None and first.subscription is not None
        en1 = first.subscription.extranonce1
        slot = worker.miner.slots[0]
        counter = slot.counter
        first.close()  # the connection drops; the worker reconnects with resume
        await wait_until(lambda: worker.failover.active not in (None, first), 10)
        second = worker.failover.active
        assert second.subscription.extranonce1 == en1
        accepted = worker.stats.shares["accepted"]
        await wait_until(lambda: worker.stats.shares["accepted"] >= accepted + 2, 20)
        assert slot.counter > counter  # continued, not restarted at 0
        assert worker.stats.shares["rejected"] == 0
    other = DeviceSlot(0, device)
    other.use_extranonce1(b"aa")
    other.next_extranonce2()
    other.use_extranonce1(b"bb")
    assert other.counter == 0
    other.use_extranonce1(b"aa")
    assert other.counter == 1
