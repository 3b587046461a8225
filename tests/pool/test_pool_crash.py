"""The pool as a real process: SIGKILL while shares stream in, restart, SIGTERM.

Checked afterwards, on the files the process left behind:

- every share the pool acknowledged is in the ledger (inserting it again adds nothing);
- nothing was paid twice: each miner's on-chain balance (miners receive nothing but
  payouts) equals what the ledger's payment batches sent to it — completed batches,
  plus pending ones the node did receive — and never more than it was credited.

Difficulties are set so that blocks come every few headers: the chain moves, blocks
mature (maturity 2) and payouts run (every 0.2 s) while the pool is being killed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from node.chain import Chain
from node.config import NodeConfig
from pool.ledger.base import PENDING, ShareRecord
from pool.ledger.sqlite import SqliteLedger
from pool.sharelog import ShareLog, ShareLogError
from protocol.address import new_address
from tests.support import REPO
from tests.support.miner import MinerClosed, TestMiner

NODE = {"start_difficulty": 2e-4, "min_difficulty": 1e-6, "maturity": 2, "block_time": 1}

CONFIG = """
[stratum]
port = 0
[http]
enabled = false
[pool]
data_dir = "{data_dir}"
start_difficulty = 1e-5
payout_interval = 0.2
unlock_interval = 0.2
min_payout = 1
[vardiff]
enabled = false
min_difficulty = 1e-7
[work]
m = 64
n = 64
k = 256
r = 64
[chain]
poll_interval = 0.05
[chain.node]
start_difficulty = 2e-4
min_difficulty = 1e-6
maturity = 2
block_time = 1
[ledger]
batch_interval_ms = 2.0
[limits]
messages_per_second = 100000.0
message_burst = 100000
"""


class PoolProcess:
    """``python -m pool.cli serve`` with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: trio.Process | None = None

    async def start(self) -> int:
        """Start the pool; return its miner port once it listens."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "pool.cli",
                    "serve",
                    "--config",
                    str(self.config),
                    "--log-level",
                    "info",
                ],
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        with trio.fail_after(30):
            while True:
                text = self.log.read_text()[offset:]
                match = re.search(r"listening for miners on [\d.]+:(\d+)", text)
                if match and "pool ready" in text:
                    return int(match.group(1))
                assert self.process.poll() is None, f"pool exited:\n{text}"
                await trio.sleep(0.05)

    async def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        with trio.fail_after(20):
            return await self.process.wait()


async def stream_shares(port: int, address: str, acked: list[ShareRecord], until: float) -> None:
    """Mine and submit (pipelined, 4 at a time) until ``until`` or the pool goes away."""
    try:
        async with await TestMiner.connect(port, timeout=10) as miner:
            await miner.login(address + ".w")
            while time.monotonic() < until:
                job = miner.job
                found = await miner.find(job)
                for i in range(0, len(found), 4):
                    batch = found[i : i + 4]
                    ids = [await miner.send_submit(c) for c in batch]
                    for c, rid in zip(batch, ids, strict=True):
                        r = await miner.response(rid)
                        if r.error is None:
                            acked.append(
                                ShareRecord(
                                    c.digest,
                                    0.0,
                                    address,
                                    "w",
                                    c.job_id,
                                    job.height,
                                    1e-5,
                                    1.0,
                                    b"check",
                                )
                            )
    except (MinerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the pool was killed under us


async def run_miners(
    port: int, addresses: list[str], acked: list[ShareRecord], seconds: float, during=None
) -> None:
    until = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(stream_shares, port, address, acked, until)
        if during is not None:
            await during()


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_share_and_pays_nothing_twice(tmp_path):
    data_dir = tmp_path / "data"
    config = tmp_path / "pool.toml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    proc = PoolProcess(config, tmp_path / "pool.log")
    addresses = [new_address() for _ in range(3)]
    acked: list[ShareRecord] = []

    port = await proc.start()

    async def kill_midstream() -> None:
        await trio.sleep(2.5)
        assert proc.process is not None
        proc.process.kill()  # SIGKILL while shares stream in
        await proc.process.wait()

    await run_miners(port, addresses, acked, 4.0, kill_midstream)
    acked_before_kill = len(acked)
    assert acked_before_kill > 10
    log_text = (tmp_path / "pool.log").read_text()
    assert "found by" in log_text, "the run should find blocks"

    port = await proc.start()  # restart on the same data dir
    await run_miners(port, addresses, acked, 2.5)
    await trio.sleep(1.0)  # let the unlocker and payouts run a few rounds
    assert await proc.stop(signal.SIGTERM) == 0
    log_text = (tmp_path / "pool.log").read_text()
    assert "shutting down" in log_text and "ledger closed" in log_text
    assert len(acked) > acked_before_kill

    ledger = SqliteLedger(data_dir / "pool.sqlite")
    chain = Chain.open(data_dir / "node", NodeConfig(**NODE))
    try:
        # Every acknowledged share survived the SIGKILL.
        assert ledger.insert_shares(acked[:acked_before_kill]) == 0
        assert ledger.insert_shares(acked) == 0
        # Nothing paid twice.
        sent: dict[str, int] = dict.fromkeys(addresses, 0)
        batches = ledger.payments(1000)
        keys = [b.key for b in batches]
        assert len(keys) == len(set(keys))
        for batch in batches:
            on_chain = chain.payment(batch.key)
            if batch.status == PENDING and on_chain is None:
                continue  # written, never reached the node: not paid (yet)
            assert on_chain is not None, f"batch {batch.key} is {batch.status} but unknown"
            for address, amount in batch.outputs.items():
                sent[address] = sent.get(address, 0) + amount
        for address in addresses:
            assert chain.balance(address) == sent[address]
            summary = ledger.miner(address)
            credited = summary.paid + summary.pending_payment + summary.balance
            assert sent[address] <= credited
        assert any(sent.values()), "blocks matured and something was paid"
    finally:
        ledger.close()
        chain.close()
    assert os.path.exists(data_dir / "pool_address")


# --- the share log on a real SQLite ledger ----------------------------------------------


def share(i: int) -> ShareRecord:
    return ShareRecord(
        i.to_bytes(32, "little"), float(i), new_address(), "w", "1.1", 1, 1e-4, 1.0, b"s"
    )


async def test_sharelog_batches_commits_and_acks_after_them(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    commits: list[float] = []
    log = ShareLog(
        ledger, trio.CapacityLimiter(1), interval=0.01, max_batch=50, observe_commit=commits.append
    )
    done: list[int] = []

    async def submit(i: int) -> None:
        await log.commit(share(i))
        # Acknowledged only once durable: a second connection sees it.
        check = SqliteLedger(tmp_path / "l.sqlite")
        try:
            assert check.insert_shares([share(i)]) == 0
        finally:
            check.close()
        done.append(i)

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        async with trio.open_nursery() as submits:
            for i in range(120):
                submits.start_soon(submit, i)
        nursery.cancel_scope.cancel()
    assert sorted(done) == list(range(120))
    assert ledger.share_count() == 120 and log.committed == 120
    assert len(commits) < 20  # batched, not one commit per share
    ledger.close()


async def test_sharelog_failure_is_never_acknowledged(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    log = ShareLog(ledger, trio.CapacityLimiter(1), interval=0.001)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await log.commit(share(1))
        ledger.close()  # the store goes away: the next commit must fail loudly
        with pytest.raises(ShareLogError, match="share not stored"):
            await log.commit(share(2))
        nursery.cancel_scope.cancel()


async def test_sharelog_shutdown_commits_what_is_queued(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    log = ShareLog(ledger, trio.CapacityLimiter(1), interval=10.0, max_batch=1000)
    acked: list[int] = []

    async def submit(i: int) -> None:
        await log.commit(share(i))
        acked.append(i)

    async with trio.open_nursery() as outer:
        for i in range(10):
            outer.start_soon(submit, i)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as writer:
                await writer.start(log.run)
                await trio.sleep(0.05)  # all ten queued, the 10 s interval not over
                assert ledger.share_count() == 0
                scope.cancel()  # shutdown: the writer commits the queue first
    assert ledger.share_count() == 10 and sorted(acked) == list(range(10))
    with pytest.raises(ShareLogError, match="shut down"):
        await log.commit(share(99))
    ledger.close()


async def test_sharelog_shutdown_commits_a_batch_still_waiting_for_the_ledger(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    limiter = trio.CapacityLimiter(1)
    log = ShareLog(ledger, limiter, interval=0.001, max_batch=1000)
    outcomes: list[object] = []
    busy, free = trio.Event(), trio.Event()

    async def ledger_busy() -> None:  # another user of the ledger holds it meanwhile
        async with limiter:
            busy.set()
            await free.wait()

    async with trio.open_nursery() as outer:
        outer.start_soon(ledger_busy)
        await busy.wait()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as writer:
                await writer.start(log.run)
                for i in range(5):
                    assert log.enqueue(share(i), outcomes.append)
                await trio.sleep(0.05)  # the writer took the batch, waits for the limiter
                assert ledger.share_count() == 0 and outcomes == []
                scope.cancel()  # shutdown while that batch waits
                free.set()
    # the batch it had taken is committed, and each share's callback told so
    assert ledger.share_count() == 5 and outcomes == [True] * 5
    ledger.close()


# --- useful work: a crash between crediting held shares and completing the unit ----------

CRASH_AFTER_CREDIT = """
import os, sys
from pathlib import Path

import numpy as np
import trio
from prometheus_client import CollectorRegistry

from pool.ledger.base import ShareRecord
from pool.ledger.sqlite import SqliteLedger
from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.service import UsefulWork
from protocol.work_messages import WorkResult

root = Path(sys.argv[1])


async def main():
    useful = UsefulWork(root, UsefulConfig(unit_m=32, unit_n=32, r=32),
                        UsefulMetrics(CollectorRegistry()))
    ledger = SqliteLedger(root / "ledger.sqlite")
    rng = np.random.default_rng(5)
    a = rng.integers(-64, 65, (32, 128), dtype=np.int8)
    b = rng.integers(-64, 65, (128, 32), dtype=np.int8)
    useful.queue.submit("alice", a, b)  # one unit, no padding
    lease, _ = await useful.lease("s1")
    await useful.attach(lease, "s1", "job1")
    for i in range(3):
        record = ShareRecord(bytes([i + 1]) * 32, 1.0e9 + i, "mmd1test", "rig", "job1", 7,
                             1e-5, 1.0, b"s" * 8)
        assert await useful.hold(lease.id, record)
    raw = (a.astype(np.int64) @ b.astype(np.int64)).astype("<i4").tobytes()
    delivery = await useful.take_result("s1", WorkResult(
        job_id="job1", unit=lease.unit.unit_id, offset=0, data=raw, final=True))

    async def credit(records):
        # the order under test: the unit is not done yet when its shares are written
        assert useful.queue.unit(lease.unit.key).state == "running"
        assert useful.queue.get_lease(lease.id).state == "delivered"
        ledger.insert_shares(records)
        os._exit(17)  # the pool dies here, before the unit is marked done

    await useful.judge(delivery, credit)
    sys.exit("judge returned: credit was never called")


trio.run(main)
"""


def test_crash_between_credit_and_unit_completion_loses_no_share(tmp_path):
    import subprocess

    from pool.useful import UsefulConfig
    from pool.useful.blobstore import BlobStore
    from pool.useful.queue import WorkQueue

    run = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_CREDIT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 17, run.stderr
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.share_count() == 3  # every acknowledged share survived the crash
        # the restart releases the delivered lease: the unit is computed again, and the
        # voided held copies are the very shares already in the ledger
        queue = WorkQueue(
            tmp_path / "useful.sqlite",
            BlobStore(tmp_path / "useful" / "blobs"),
            UsefulConfig(unit_m=32, unit_n=32, r=32),
        )
        try:
            (end,) = queue.recovered
            assert end.state == "released" and len(end.shares) == 3
            assert queue.unit(end.lease.unit.key).state == "queued"
            assert queue.lease("s2").unit.key == end.lease.unit.key
        finally:
            queue.close()
        digests = sorted(bytes.fromhex(s["digest"]) for s in end.shares)
        assert digests == [bytes([i]) * 32 for i in (1, 2, 3)]
        assert (
            ledger.insert_shares(
                [
                    ShareRecord(d, 1.0e9, "mmd1test", "rig", "job1", 7, 1e-5, 1.0, b"s" * 8)
                    for d in digests
                ]
            )
            == 0
        )
    finally:
        ledger.close()
