"""Scale-out: accepted shares/s of one stratum instance, then of two on one PostgreSQL ledger.

    PYTHONPATH=. .venv/bin/python tests/bench/pool_scaleout.py --connections 200 \
        --phase-seconds 8 --instances 1 2

Each instance is a ``matmine-pool serve`` process (``instance_id`` 1, 2, …: distinct
extranonce prefixes) with the same PostgreSQL ledger (a throw-away server from
``tests/support/pg.py``, a fresh database per run) and its own embedded devnet node, which
only makes templates here (the network difficulty is far above every share: no blocks, so
no chain needs sharing). The connections are split evenly over the instances; the ping
phase, then the submit phase, run on all of them at once (as in ``pool_load.py``: every
ticket meets the share difficulty, one request in flight per connection). Prints, per
instance count, the total accepted shares/s and pings/s and their ratio, and the shares
the ledger holds (every accepted share exactly once).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pool_load import REPO, Miner, Phase, connect_all, pool_config, run_phase
from proc_stats import free_port, wait_listening

from protocol.address import new_address
from protocol.workload import Shape
from tests.support.pg import PostgresServer


@contextlib.contextmanager
def instances(
    args: argparse.Namespace, count: int, url: str, tmp: Path
) -> Iterator[list[tuple[int, int]]]:
    """``count`` pools on the ledger at ``url``: ``(pid, stratum port)`` of each."""
    procs: list[subprocess.Popen] = []
    started: list[tuple[int, int]] = []
    try:
        for i in range(1, count + 1):
            stratum, http = free_port(), free_port()
            ledger = f'\n[ledger]\nkind = "postgres"\nurl = "{url}"\n'
            shape = Shape(*args.shape)
            text = pool_config(
                tmp / f"data{i}", stratum, http, shape, args.connections, 1,
                args.check_processes, instance_id=i, extra=ledger,
            )  # fmt: skip
            (tmp / f"pool{i}.toml").write_text(text)
            log = tmp / f"pool{i}.log"
            cmd = [
                sys.executable,
                "-m",
                "pool.cli",
                "serve",
                "--config",
                str(tmp / f"pool{i}.toml"),
            ]
            with log.open("wb") as sink:
                procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT))
            wait_listening(procs[-1], stratum, args.startup_timeout, log)
            started.append((procs[-1].pid, stratum))
        yield started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def phase_all(groups: list[tuple[list[Miner], int]], name: str, seconds: float) -> float:
    """One phase on every instance at once; the total answers per second."""
    phases: list[Phase] = []

    async def one(miners: list[Miner], pid: int) -> None:
        phases.append(await run_phase(miners, name, seconds, pid))

    async with trio.open_nursery() as nursery:
        for miners, pid in groups:
            nursery.start_soon(one, miners, pid)
    for phase in phases:
        print(f"  {phase.line()}")
    return sum(phase.rate for phase in phases)


async def bench(args: argparse.Namespace, pools: list[tuple[int, int]]) -> tuple[float, float]:
    shape = Shape(*args.shape)
    each = args.connections // len(pools)
    groups = []
    for pid, port in pools:
        groups.append((await connect_all(port, each, shape, new_address()), pid))
    pings = await phase_all(groups, "ping", args.phase_seconds)
    shares = await phase_all(groups, "submit", args.phase_seconds)
    for miners, _ in groups:
        for miner in miners:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await miner.stream.aclose()
    return pings, shares


def ledger_shares(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM shares").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200, help="in all, split evenly")
    parser.add_argument("--phase-seconds", type=float, default=8.0)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--check-processes", type=int, default=0, help="per instance")
    parser.add_argument("--shape", type=int, nargs=4, default=(2048, 2048, 2048, 128))
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args()
    server = PostgresServer()
    results = []
    try:
        server.start()
        for count in args.instances:
            url = server.create_database()
            print(f"-- {count} instance(s) on one PostgreSQL ledger")
            with tempfile.TemporaryDirectory(prefix="matmine-scaleout-") as tmp:
                with instances(args, count, url, Path(tmp)) as pools:
                    pings, shares = trio.run(bench, args, pools)
                stored = ledger_shares(url)
            results.append(
                f"{count} instance(s): {shares:8.1f} accepted shares/s vs {pings:8.1f}"
                f" pings/s = {shares / pings:.3f}x; the ledger holds {stored} shares"
            )
    finally:
        server.destroy()
    print("\nsummary (same run):")
    for line in results:
        print(" ", line)


if __name__ == "__main__":
    main()
