"""Pool load benchmark: N miners on loopback against a real pool in a subprocess.

    .venv/bin/python tests/bench/pool_load.py --connections 500 --phase-seconds 10 \
        --check-threads 1 2 --check-processes 1 2

With ``--baseline-repo DIR`` (another checkout, e.g. ``git worktree add /tmp/old main``)
each pool run is made twice, that tree's pool first, then this one's: before/after figures
from the same run.

The pool runs as ``matmine-pool`` (``python -m pool.cli serve``) with a fresh data dir, the
embedded devnet node (network difficulty far above the share difficulty, so no blocks) and
vardiff off at a share difficulty so small that *every* ticket meets it: valid shares need
no mining, only distinct (extranonce2, tile) pairs, so the client is never the miner.

Phases, all over the same N sockets in the same run:

1. connect, subscribe, authorize; RSS of the pool process before and after → RSS/connection
2. echo baseline: every connection sends ``mining.ping`` in a closed loop (one in flight)
3. shares: every connection sends ``mining.submit`` in a closed loop (one in flight)

(phases 2 and 3 ``--rounds`` times, alternating; the ratio printed is the rounds' median)

The whole run is repeated for each ``--check-threads`` value (the pool's ``check_threads``,
a fresh pool each time) and then for each ``--check-processes`` value (``check_processes``:
checks in that many worker processes), so accepted shares/s with check threads and with
check processes come from the same run, each as a ratio to that pool's pings/s. Prints
requests/s and p50/p99 request→answer latency of both phases, their ratio (the cost of
judging and durably storing a share over a bare msgpack round trip), the pool's CPU time
per answer in each phase (its event-loop thread, where every request's Python runs, the
whole process, and its check processes; from ``/proc``, :mod:`proc_stats`), and the pool's
own ``matmine_pool_share_check_seconds`` and ``matmine_pool_db_write_seconds`` means from
/metrics. The client shares the machine's
cores with the pool: on a small box the absolute rates are bounded by both; the ratio is the
figure to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
from proc_stats import (
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    histogram_mean,
    rss_kib,
    wait_listening,
)

from pool.workloads import SyntheticSource
from protocol.address import new_address
from protocol.chain import BlockTemplate
from protocol.framing import FrameDecoder, encode_frame
from protocol.ticket import verify_ticket, verify_ticket_fast
from protocol.workload import Shape, synthetic_rows

REPO = Path(__file__).resolve().parents[2]
SHARE_DIFFICULTY = 1e-7  # every ticket of k >= 4·32 meets it: D <= 256·k / 2³²


def bare_check_seconds(shape: Shape, fast: bool, count: int = 200) -> float:
    """Mean time of one share's CPU work in this process, nothing else running, a new header
    each share. ``fast``: the pool's check (cached row bands, ``verify_ticket_fast``); else
    what it did before (derive the 16 + 16 synthetic rows, the reference ``verify_ticket``)."""
    block = BlockTemplate(height=1, prev_hash=bytes(32), bits=0x1D010000, time=0, reward=1)
    work = SyntheticSource(shape).prepare(block)
    start = time.perf_counter()
    for i in range(count):
        header = os.urandom(128)
        tile = (i % shape.tiles_m, (i * 7) % shape.tiles_n)
        if fast:
            a, bt = work.tile_rows(tile)
            verify_ticket_fast(header, shape, tile, a, bt, work.header_noise(header, shape))
        else:
            a = synthetic_rows(work.seed, "A", tile[0] * 16, 16, shape.k)
            bt = synthetic_rows(work.seed, "B", tile[1] * 16, 16, shape.k)
            verify_ticket(header, shape, tile, a, bt)
    return (time.perf_counter() - start) / count


def pool_config(
    data: Path,
    stratum: int,
    http: int,
    shape: Shape,
    connections: int,
    check_threads: int,
    check_processes: int = 0,
    instance_id: int = 0,
    extra: str = "",
) -> str:
    """A pool's TOML for the bench (``extra``: more sections, e.g. ``[ledger]``)."""
    return f"""
[stratum]
host = "127.0.0.1"
port = {stratum}
max_connections = {connections + 100}
max_connections_per_ip = {connections + 100}
idle_timeout = 600.0
handshake_timeout = 120.0

[http]
host = "127.0.0.1"
port = {http}

[pool]
data_dir = "{data}"
start_difficulty = {SHARE_DIFFICULTY}
check_threads = {check_threads}
check_processes = {check_processes}
instance_id = {instance_id}
log_level = "warning"

[vardiff]
enabled = false
min_difficulty = {SHARE_DIFFICULTY}

[work]
m = {shape.m}
n = {shape.n}
k = {shape.k}
r = {shape.r}
job_refresh_seconds = 3600.0
job_expiry_seconds = 3600.0

[limits]
messages_per_second = 100000.0
message_burst = 100000
max_shares_per_job = 1000000

[chain.node]
start_difficulty = 1e9
min_difficulty = 1e9
{extra}"""


@dataclass
class Miner:
    """One bench connection: a raw framed msgpack client (no validation, to stay cheap)."""

    stream: trio.SocketStream
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    inbox: list[dict] = field(default_factory=list)
    job: dict | None = None
    en2: itertools.count = field(default_factory=itertools.count)
    tiles: list[tuple[int, int]] = field(default_factory=list)
    tile_index: int = 0
    extranonce2: bytes = b""
    last_message: str = ""

    async def request(self, method: str, params: dict) -> dict:
        """Send a request and return its response; notifications seen meanwhile are kept."""
        rid = next(self.ids)
        await self.stream.send_all(encode_frame({"id": rid, "method": method, "params": params}))
        while True:
            while self.inbox:
                msg = self.inbox.pop(0)
                if msg.get("id") == rid:
                    return msg
                if msg.get("method") == "mining.notify":
                    self.job = msg["params"]
                elif msg.get("method") == "client.show_message":
                    self.last_message = msg["params"].get("text", "")
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError(f"pool closed the connection: {self.last_message!r}")
            self.inbox.extend(self.decoder.feed(data))

    async def wait_job(self) -> None:
        """Wait for the first job (it may already sit in the inbox)."""
        while True:
            for msg in self.inbox:
                if msg.get("method") == "mining.notify":
                    self.job = msg["params"]
            self.inbox.clear()
            if self.job is not None:
                return
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError(f"pool closed the connection: {self.last_message!r}")
            self.inbox.extend(self.decoder.feed(data))

    def next_share(self) -> dict:
        """A distinct, valid share for the current job (every ticket meets the difficulty)."""
        assert self.job is not None
        if not self.extranonce2 or self.tile_index == len(self.tiles):
            self.extranonce2 = next(self.en2).to_bytes(8, "little")
            self.tile_index = 0
        tile = self.tiles[self.tile_index]
        self.tile_index += 1
        return {
            "job_id": self.job["job_id"],
            "extranonce2": self.extranonce2,
            "time": self.job["time"],
            "tile": list(tile),
        }


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    main_cpu: float = 0.0  # CPU seconds of the pool's event-loop thread in this phase
    pool_cpu: float = 0.0  # CPU seconds of the whole pool process (its threads too)
    procs_cpu: float = 0.0  # CPU seconds of the pool's check processes
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def per_answer_us(self, cpu: float) -> float:
        return cpu / len(self.latencies) * 1e6 if self.latencies else float("nan")

    def line(self) -> str:
        errors = f", errors {self.errors}" if self.errors else ""
        return (
            f"{self.name:>6}: {len(self.latencies):7d} answers in {self.seconds:5.1f} s ="
            f" {self.rate:8.1f}/s   p50 {self.pct(0.5) * 1e3:7.2f} ms"
            f"   p99 {self.pct(0.99) * 1e3:7.2f} ms   pool CPU/answer: event loop"
            f" {self.per_answer_us(self.main_cpu):5.0f} µs, all threads"
            f" {self.per_answer_us(self.pool_cpu):5.0f} µs, check processes"
            f" {self.per_answer_us(self.procs_cpu):5.0f} µs{errors}"
        )


async def connect_all(port: int, count: int, shape: Shape, address: str) -> list[Miner]:
    miners: list[Miner] = []
    tiles = [(ti, tj) for ti in range(shape.m // 16) for tj in range(shape.n // 16)]
    limiter = trio.CapacityLimiter(32)  # connect in waves, not a SYN flood

    async def one(i: int) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            miner = Miner(stream, tiles=tiles)
            r = await miner.request("mining.subscribe", {"agent": "pool_load", "protocol": 1})
            if "error" in r:
                raise RuntimeError(f"subscribe failed: {r['error']}")
            r = await miner.request("mining.authorize", {"login": f"{address}.w{i}"})
            if "error" in r:
                raise RuntimeError(f"authorize failed: {r['error']}")
            await miner.wait_job()
            miners.append(miner)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return miners


async def run_phase(miners: list[Miner], name: str, seconds: float, pid: int) -> Phase:
    phase = Phase(name)
    method = "mining.ping" if name == "ping" else "mining.submit"

    async def loop(miner: Miner) -> None:
        while True:
            params = {} if method == "mining.ping" else miner.next_share()
            t0 = time.perf_counter()
            r = await miner.request(method, params)
            if "error" in r:
                code = r["error"]["code"]
                phase.errors[code] = phase.errors.get(code, 0) + 1
            else:
                phase.latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    main_cpu, pool_cpu = cpu_seconds(pid, pid), cpu_seconds(pid)
    procs_cpu = children_cpu_seconds(pid)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for miner in miners:
                nursery.start_soon(loop, miner)
    phase.seconds = time.perf_counter() - start
    phase.main_cpu = cpu_seconds(pid, pid) - main_cpu
    phase.pool_cpu = cpu_seconds(pid) - pool_cpu
    phase.procs_cpu = children_cpu_seconds(pid) - procs_cpu
    return phase


async def bench(
    args: argparse.Namespace, pid: int, stratum: int, http: int, results: list[str]
) -> None:
    shape = Shape(*args.shape)
    rss_before = rss_kib(pid)
    t0 = time.perf_counter()
    with trio.fail_after(args.startup_timeout + args.connections * 0.2):
        miners = await connect_all(stratum, args.connections, shape, new_address())
    connect_s = time.perf_counter() - t0
    await trio.sleep(1.0)  # let the pool settle before reading RSS
    rss_after = rss_kib(pid)
    print(f"connections: {len(miners)} set up in {connect_s:.1f} s")
    print(
        f"pool RSS: {rss_before / 1024:.1f} MiB idle -> {rss_after / 1024:.1f} MiB connected ="
        f" {(rss_after - rss_before) / len(miners):.1f} KiB per connection"
    )
    ratios: list[float] = []
    loop_cpu: list[tuple[float, float]] = []  # (per submit, per ping) of each round, µs
    for _ in range(args.rounds):  # ping, submit, ping, submit, …: load drifts hit both
        ping = await run_phase(miners, "ping", args.phase_seconds, pid)
        print(ping.line())
        shares = await run_phase(miners, "submit", args.phase_seconds, pid)
        print(shares.line())
        if ping.rate and shares.rate:
            ratios.append(shares.rate / ping.rate)
            loop_cpu.append(
                (shares.per_answer_us(shares.main_cpu), ping.per_answer_us(ping.main_cpu))
            )
            print(
                f"submit vs ping: throughput {shares.rate / ping.rate:.3f}x,"
                f" p50 latency {shares.pct(0.5) / ping.pct(0.5):.1f}x,"
                f" p99 latency {shares.pct(0.99) / ping.pct(0.99):.1f}x"
            )
    if ratios:
        rounds = ", ".join(f"{r:.3f}" for r in ratios)
        results.append(
            f"{args.mode:>19}: {shares.rate:8.1f} accepted shares/s vs"
            f" {ping.rate:8.1f} pings/s (last round); ratio median"
            f" {statistics.median(ratios):.3f}x of rounds [{rounds}]; event-loop CPU per"
            f" submit {shares.per_answer_us(shares.main_cpu):.0f} µs vs per ping"
            f" {ping.per_answer_us(ping.main_cpu):.0f} µs, check processes per submit"
            f" {shares.per_answer_us(shares.procs_cpu):.0f} µs"
        )
        submit_us = statistics.median(s for s, _ in loop_cpu)
        ping_us = statistics.median(p for _, p in loop_cpu)
        results.append(
            f"{'':>19}  event-loop CPU, median of rounds: {submit_us:.0f} µs per submit,"
            f" {ping_us:.0f} µs per ping, {submit_us - ping_us:.0f} µs a submit costs beyond"
            " a ping"
        )
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{http}/metrics")).text
    check, checks = histogram_mean(text, "matmine_pool_share_check_seconds")
    db, writes = histogram_mean(text, "matmine_pool_db_write_seconds")
    accepted = re.search(r'^matmine_pool_shares_total\{result="accepted"\} (\S+)$', text, re.M)
    print(
        f"pool-side (from /metrics): share_check_seconds mean {check * 1e3:.3f} ms over"
        f" {checks:.0f} checks (timed in the check thread or process);"
        f" db write mean {db * 1e3:.3f} ms over {writes:.0f} writes;"
        f" accepted counter {accepted.group(1) if accepted else '?'}"
    )
    for miner in miners:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await miner.stream.aclose()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the cleanup below (stop the pool) on SIGTERM too


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500, help="simulated miners")
    parser.add_argument(
        "--phase-seconds", type=float, default=10.0, help="length of each timed phase (2 phases)"
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=4,
        default=(2048, 2048, 2048, 128),
        metavar=("M", "N", "K", "R"),
        help="job shape (the pool's default cpu profile)",
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="ping + submit phases per pool (median ratio)"
    )
    parser.add_argument(
        "--check-threads", type=int, nargs="*", default=[1, 2], help="one pool run for each"
    )
    parser.add_argument(
        "--check-processes",
        type=int,
        nargs="*",
        default=[1, 2],
        help="then one pool run for each (checks in that many processes)",
    )
    parser.add_argument(
        "--baseline-repo",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/old main`): each pool run is made"
        " with its pool first, then with this tree's, so both come from the same run",
    )
    args = parser.parse_args()
    shape = Shape(*args.shape)  # validate early
    before, after = bare_check_seconds(shape, False), bare_check_seconds(shape, True)
    print(
        f"bare ticket check (1 thread, no pool running, a new header each): before (rows"
        f" derived + verify_ticket) {before * 1e6:.0f} µs = {1 / before:.0f}/s per core;"
        f" now (cached rows + verify_ticket_fast) {after * 1e6:.0f} µs = {1 / after:.0f}/s"
        f" per core ({before / after:.1f}x)"
    )
    results: list[str] = []
    runs = [(t, 0) for t in args.check_threads] + [(1, p) for p in args.check_processes]
    trees = [REPO] if args.baseline_repo is None else [args.baseline_repo.resolve(), REPO]
    for threads, processes in runs:
        for tree in trees:
            args.threads, args.processes, args.repo = threads, processes, tree
            args.mode = f"check_processes {processes}" if processes else f"check_threads {threads}"
            if len(trees) > 1:
                args.mode += " (baseline)" if tree != REPO else " (this tree)"
            print(f"\n-- pool with {args.mode}, from {tree}")
            run_pool(args, results)
    print("\nsummary (same run, same connections):")
    for line in results:
        print(" ", line)


def run_pool(args: argparse.Namespace, results: list[str]) -> None:
    """One fresh pool with ``args.threads`` check threads (or ``args.processes`` check
    processes), benched through all phases."""
    stratum, http = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="matmine-bench-") as tmp:
        config = Path(tmp) / "pool.toml"
        config.write_text(
            pool_config(
                Path(tmp) / "data",
                stratum,
                http,
                Shape(*args.shape),
                args.connections,
                args.threads,
                args.processes,
            )
        )
        log_path = Path(tmp) / "pool.log"
        cmd = [sys.executable, "-m", "pool.cli", "serve", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(args.repo)}  # that tree's pool, not this one's
        with log_path.open("wb") as log:
            pool = subprocess.Popen(
                cmd, cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_listening(pool, stratum, args.startup_timeout, log_path)
            print(f"pool pid {pool.pid}, shape {tuple(args.shape)}, cpus {os.cpu_count()}")
            trio.run(bench, args, pool.pid, stratum, http, results)
        except BaseException:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            pool.send_signal(signal.SIGTERM)
            try:
                pool.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pool.kill()
                pool.wait()
            if pool.returncode not in (0, -signal.SIGTERM):
                tail = log_path.read_text(errors="replace")[-3000:]
                print(f"pool exited {pool.returncode}:\n{tail}", file=sys.stderr)


if __name__ == "__main__":
    main()
