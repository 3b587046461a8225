"""Connection benchmark: 10,000 miners on one pool, its memory per connection and its
open-loop submit latency.

    .venv/bin/python tests/bench/pool_conns.py --connections 10000 --seconds 20

The pool runs as ``matmine-pool serve`` in its own process (loopback, the embedded devnet
node, a fresh data dir), with the connection limits (total, per IP) raised in its config and
vardiff off at a share difficulty that every ticket meets (``tests/support/load_client.py``:
real shares, checked by the pool in full, that need no mining). This process is the load
client; both raise their open-file limit. Phases, over the same connections:

1. connect: ``--warmup`` connections, the pool's RSS (``VmRSS``), then the rest, its RSS
   again → KiB per connection (target < 30 KiB), each connection subscribed, authorized
   and holding its first job;
2. closed loop (``--probe-seconds``, ``--probe-connections`` miners, one submit in flight
   each): the pool's maximum accepted shares/s here;
3. open loop (``--seconds``): submits at a fixed total rate (``--rate``, default half the
   closed-loop maximum), round-robin over *every* connection, each sent at its scheduled
   time whatever the answers do; prints the achieved rate and p50/p99/p999 from scheduled
   send to answer (target p99 < 50 ms), and how far the client itself fell behind its
   schedule (part of those figures: a busy client shows up as latency, never hides it).

On a small box the client shares the cores with the pool: the absolute rates are bounded by
both, the latency at a fixed fraction of the maximum is the figure to compare.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from proc_stats import free_port, rss_kib, wait_listening

from protocol.address import new_address
from tests.support.load_client import SHARE_DIFFICULTY, Fleet, Results, raise_open_files

REPO = Path(__file__).resolve().parents[2]
RSS_TARGET_KIB = 30.0
P99_TARGET_MS = 50.0


def pool_config(
    data: Path, stratum: int, http: int, shape: tuple[int, ...], connections: int
) -> str:
    """The pool's TOML: embedded defaults, limits raised for ``connections`` from one IP."""
    m, n, k, r = shape
    slots = connections + 100
    return f"""
[stratum]
host = "127.0.0.1"
port = {stratum}
max_connections = {slots}
max_connections_per_ip = {slots}
idle_timeout = 900.0
handshake_timeout = 300.0

[http]
host = "127.0.0.1"
port = {http}

[pool]
data_dir = "{data}"
start_difficulty = {SHARE_DIFFICULTY}
log_level = "warning"

[vardiff]
enabled = false
min_difficulty = {SHARE_DIFFICULTY}

[work]
m = {m}
n = {n}
k = {k}
r = {r}
job_refresh_seconds = 3600.0
job_expiry_seconds = 3600.0

[limits]
messages_per_second = 100000.0
message_burst = 100000
max_shares_per_job = 10000000
checks_per_ip_per_second = 1000000.0
check_burst_per_ip = 1000000

[chain.node]
start_difficulty = 1e9
min_difficulty = 1e9
"""


def histogram(metrics: str, name: str) -> str:
    """``name``'s mean and the bucket holding its p99, from the pool's /metrics text."""
    buckets = [
        (float(le), float(count))
        for le, count in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M)
    ]
    total = re.search(rf"^{name}_sum (\S+)$", metrics, re.M)
    if not buckets or not buckets[-1][1] or total is None:
        return f"{name}: none"
    count = buckets[-1][1]
    p99 = next(le for le, seen in buckets if seen >= 0.99 * count)
    return (
        f"{name.removeprefix('matmine_pool_')}: mean {float(total.group(1)) / count * 1e3:.2f}"
        f" ms, p99 <= {p99 * 1e3:g} ms over {count:.0f}"
    )


def latency_line(name: str, r: Results) -> str:
    errors = f", errors {r.errors}" if r.errors else ""
    lost = r.sent - r.answered
    return (
        f"{name}: {r.sent} sent, {len(r.latencies)} accepted in {r.seconds:.1f} s ="
        f" {r.rate:.1f}/s; submit->ack p50 {r.pct(0.5) * 1e3:.2f} ms"
        f"  p99 {r.pct(0.99) * 1e3:.2f} ms  p999 {r.pct(0.999) * 1e3:.2f} ms"
        f"{errors}{f', {lost} unanswered' if lost else ''}"
    )


async def bench(args: argparse.Namespace, pid: int, port: int, http: int) -> list[str]:
    """The three phases against the pool ``pid`` listening on ``port``; the summary."""
    fleet = Fleet(port, tuple(args.shape), new_address())
    warmup = min(args.warmup, args.connections)
    rss_idle = rss_kib(pid)
    t0 = time.perf_counter()
    await fleet.connect(warmup)
    await trio.sleep(0.5)
    rss_warm = rss_kib(pid)
    await fleet.connect(args.connections - warmup)
    connect_s = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # the client's 10,000 connections are long-lived: no full collections of them
    await trio.sleep(1.0)  # let the pool settle before reading RSS
    rss_all = rss_kib(pid)
    added = len(fleet.miners) - warmup
    per_conn = (rss_all - rss_warm) / added if added else float("nan")
    summary = [
        f"connections: {len(fleet.miners)} subscribed + authorized in {connect_s:.1f} s",
        f"pool RSS: {rss_idle / 1024:.1f} MiB idle, {rss_warm / 1024:.1f} MiB at {warmup},"
        f" {rss_all / 1024:.1f} MiB at {len(fleet.miners)} = {per_conn:.1f} KiB per"
        f" connection (target < {RSS_TARGET_KIB:g})",
    ]
    print(*summary, sep="\n", flush=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run_readers)
        probe = await fleet.closed_loop(
            args.probe_seconds, min(args.probe_connections, len(fleet.miners))
        )
        summary.append(latency_line("closed loop (max)", probe))
        print(summary[-1], flush=True)
        rate = args.rate or probe.rate / 2
        line = await fleet.open_loop(rate, args.seconds)
        summary.append(latency_line(f"open loop at {rate:.0f}/s", line))
        summary.append(
            f"open loop: achieved {line.answered / line.seconds:.1f} answers/s of {rate:.1f}"
            f" scheduled over {len(fleet.miners)} connections; p99"
            f" {line.pct(0.99) * 1e3:.1f} ms (target < {P99_TARGET_MS:g}); the client's own"
            f" lag behind the schedule (in those figures) p50"
            f" {line.pct(0.5, line.send_lags) * 1e3:.2f} ms, p99"
            f" {line.pct(0.99, line.send_lags) * 1e3:.2f} ms"
        )
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{http}/metrics")).text
        summary.append(
            "pool-side, both loops (/metrics): "
            + "; ".join(
                histogram(text, f"matmine_pool_{name}")
                for name in ("share_check_seconds", "db_write_seconds")
            )
        )
        print(*summary[-3:], sep="\n", flush=True)
        nursery.cancel_scope.cancel()
    await fleet.aclose()
    return summary


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the cleanup below (stop the pool) on SIGTERM too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="simulated miners")
    parser.add_argument("--warmup", type=int, default=100, help="connections before the RSS base")
    parser.add_argument("--seconds", type=float, default=20.0, help="open-loop phase length")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open-loop shares/s (0: half the closed-loop max)"
    )
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="closed-loop length")
    parser.add_argument("--probe-connections", type=int, default=200, help="closed-loop miners")
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
        "--pool-repo",
        type=Path,
        default=REPO,
        help="checkout whose pool is benched (e.g. an older commit's worktree: before/after)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    """Run the benchmark; the summary lines (also printed)."""
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    nofile = raise_open_files(args.connections + 256)
    if nofile < args.connections + 64:
        raise SystemExit(f"open-file limit {nofile} is too low for {args.connections} sockets")
    port, http = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="matmine-conns-") as tmp:
        config = Path(tmp) / "pool.toml"
        config.write_text(pool_config(Path(tmp) / "data", port, http, args.shape, args.connections))
        log_path = Path(tmp) / "pool.log"
        cmd = [sys.executable, "-m", "pool.cli", "serve", "--config", str(config)]
        with log_path.open("wb") as log:
            env = {**os.environ, "PYTHONPATH": str(args.pool_repo)}
            pool = subprocess.Popen(
                cmd, cwd=args.pool_repo, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_listening(pool, port, args.startup_timeout, log_path)
            print(
                f"pool pid {pool.pid} from {args.pool_repo}, shape {tuple(args.shape)},"
                f" cpus {os.cpu_count()}"
            )
            summary = trio.run(bench, args, pool.pid, port, http)
        except BaseException:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            pool.send_signal(signal.SIGTERM)
            try:
                pool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pool.kill()
                pool.wait()
        tail = log_path.read_text(errors="replace").strip()
        if tail:
            print(f"pool log (last lines):\n{tail[-1500:]}")
    return summary


if __name__ == "__main__":
    main()
