"""Many connections: the load client of ``tests/bench/pool_conns.py`` against a real pool at
200 connections (valid shares, closed and open loop), and the pool's open-file limit."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pool.config import StratumConfig
from pool.inbox import Inbox, Notice
from pool.miner_state import MinerState
from pool.vardiff import Vardiff, VardiffConfig
from pool.watchdog import SessionWatchdog
from protocol.address import new_address
from tests.support.load_client import SHARE_DIFFICULTY, Fleet
from tests.support.pools import StartPool

REPO = Path(__file__).resolve().parents[2]
CONNECTIONS = 200
SHAPE = (64, 64, 256, 64)


@pytest.mark.slow
async def test_fleet_of_200_gets_every_share_accepted(start_pool: StartPool, nursery) -> None:
    handle = await start_pool(
        settings={
            "pool.start_difficulty": SHARE_DIFFICULTY,
            "stratum.max_connections": CONNECTIONS + 10,
            "stratum.max_connections_per_ip": CONNECTIONS + 10,
            "limits.checks_per_ip_per_second": 100_000.0,
            "limits.check_burst_per_ip": 100_000,
            "limits.messages_per_second": 100_000.0,
            "limits.message_burst": 100_000,
        }
    )
    fleet = Fleet(handle.stratum_port, SHAPE, new_address())
    await fleet.connect(CONNECTIONS)
    assert len(fleet.miners) == CONNECTIONS
    assert sum(1 for s in handle.context.sessions if s.authorized) == CONNECTIONS
    await nursery.start(fleet.run_readers)
    closed = await fleet.closed_loop(0.5, 20)
    assert closed.sent > 20 and not closed.errors and closed.answered == closed.sent
    opened = await fleet.open_loop(rate=200.0, seconds=1.0)
    assert opened.sent == 200 and not opened.errors, opened.errors
    assert len(opened.latencies) == 200 and opened.pct(0.5) <= opened.pct(0.999)
    # every share went round-robin over the connections: each session had exactly one
    accepted = sorted(s.accepted for s in handle.context.sessions)
    assert sum(accepted) == closed.sent + opened.sent
    assert accepted[0] >= 1
    await fleet.aclose()


LIMIT_SCRIPT = """
import resource, sys
from pool.sockets import raise_open_files
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(raise_open_files(int(sys.argv[3])))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _limit(soft: int, hard: int, connections: int) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", LIMIT_SCRIPT, str(soft), str(hard), str(connections)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    return out[0], int(out[1])


def test_open_file_limit_raised_to_the_hard_limit() -> None:
    why, soft = _limit(64, 2000, 1000)
    assert why == "None" and soft == 2000


def test_open_file_limit_below_the_connection_slots_is_told() -> None:
    why, soft = _limit(64, 300, 1000)
    assert soft == 300  # raised as far as it goes
    assert "open-file limit is 300" in why and "1256" in why and "max_connections = 1000" in why


def test_an_idle_session_wakes_at_its_deadlines_not_every_tick() -> None:
    limits = StratumConfig(idle_timeout=300.0, handshake_timeout=10.0)
    watchdog = SessionWatchdog(limits, vardiff_idle_seconds=60.0)
    miner = MinerState(peer="127.0.0.1", connected_at=100.0, last_message=105.0)
    assert watchdog.tick == 1.0
    assert watchdog.next_check(105.0, miner, False, None) == 110.0  # the handshake deadline
    assert watchdog.next_check(106.0, miner, True, None) == 405.0  # then only the idle one
    vardiff = Vardiff(VardiffConfig(idle_seconds=60.0), 1.0, now=100.0)
    assert watchdog.next_check(106.0, miner, True, vardiff) == 160.0  # the idle sweep's
    vardiff.record_share(150.0)
    assert watchdog.next_check(151.0, miner, True, vardiff) == 210.0
    # a sweep that is due but changed nothing: look again a tick later, as before
    assert watchdog.next_check(215.0, miner, True, vardiff) == 216.0
    assert watchdog.overdue(405.5, miner, True) is not None
    assert watchdog.overdue(404.5, miner, True) is None


async def test_inbox_waits_with_a_deadline_and_wakes_on_a_post() -> None:
    inbox = Inbox(size=2)
    assert await inbox.receive(trio.current_time() + 0.05) is None  # nothing came in time

    async def post_later() -> None:
        await trio.sleep(0.05)
        assert inbox.post(Notice("hi"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post_later)
        with trio.fail_after(5):
            assert await inbox.receive() == Notice("hi")
    inbox.close()
    assert not inbox.post(Notice("late"))
    with pytest.raises(trio.ClosedResourceError):
        await inbox.receive()


@pytest.mark.slow
def test_the_bench_runs_at_200_connections() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "bench" / "pool_conns.py"),
            *("--connections", "200", "--warmup", "20", "--seconds", "1"),
            *("--probe-seconds", "0.5", "--probe-connections", "20", "--shape", "64", "64"),
            *("256", "64"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "200 subscribed + authorized" in out.stdout
    assert "KiB per connection" in out.stdout and "p999" in out.stdout
    assert "unanswered" not in out.stdout and "errors" not in out.stdout, out.stdout


async def test_a_pool_whose_slots_exceed_the_open_file_limit_says_so(start_pool, caplog) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here")
    with caplog.at_level(logging.WARNING, logger="pool"):
        await start_pool(settings={"stratum.max_connections": hard + 1})
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised as far as it goes
    lines = [r.getMessage() for r in caplog.records if "open-file limit" in r.getMessage()]
    assert len(lines) == 1 and f"max_connections = {hard + 1}" in lines[0], lines
