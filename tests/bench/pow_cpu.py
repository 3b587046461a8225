"""Benchmark of the mmpow-1 reference miner and verifier on the CPU.

For each shape it prints, measured in the same run: the reference miner's MAC/s
(``protocol.ticket.mine_header``: noise, float32 slab products, XOR folds, digests),
numpy's float32 ``A @ B`` MAC/s on the same shape (the baseline), their ratio, and the
cost of one ``verify_ticket`` against the time the miner needs for the expected
2³² MACs of one difficulty-1 share.

Then one pool share check at ``--check-shape`` (default 2048³ r128), all in the same run:

- before: what the pool did per share until now, derive the 16 + 16 synthetic rows and
  run the reference ``verify_ticket``;
- after: ``verify_ticket_fast`` on the pool's cached row bands, with the header's index
  pairs derived for this share (a header with one share) and cached (several shares);
- baselines: the bare arithmetic (the 16 float32 slab products, one batched sgemm) and a
  ``mining.ping``'s framing (decode the request, encode the answer);
- checks/s with 1 and 2 threads, one check a call and 8 a call (``tile_digests``, as the
  pool's ``CheckBatcher`` does): only numpy's kernels run in parallel, outside the GIL.

Last, the cost of a share check as a check process pays it: each row in a fresh Python
process (its heap as small as a check process's: big working arrays freed there go back to
the OS and are faulted in again), BLAS on one thread, best of many short bursts, each
figure also as a ratio to a ``mining.ping``'s framing measured in that process: one ticket
a call on a new header (its index pairs derived) and on a seen one, and batches of 8 and 32
tickets on one header (``tile_digests``), each also with the working arrays kept between
calls where the checked code has ``PassArrays`` (as a check process keeps them). Without
them each call gets the checked code's default: a fresh set in checkouts before
``protocol.ticket_check``, the calling thread's kept set since (so both rows agree there).
``--protocol-root DIR`` checks the ``protocol`` package of another checkout (e.g. a
``git worktree`` of main, or ``git archive main protocol`` unpacked: before/after).

    python tests/bench/pow_cpu.py [--shapes 512,1024,2048] [--r 64] [--repeat 3]
                                  [--check-shape 2048 2048 2048 128] [--checks 2000]
                                  [--protocol-root DIR] [--only-costs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from timing import best_of

from pool.workloads import SyntheticSource
from protocol.chain import BlockTemplate
from protocol.framing import FrameDecoder, encode_frame
from protocol.target import share_macs
from protocol.ticket import (
    HeaderNoise,
    TileCheck,
    mine_header,
    tile_digests,
    verify_ticket,
    verify_ticket_fast,
)
from protocol.workload import Shape, Workload, synthetic_rows


def measure(size: int, r: int, repeat: int) -> str:
    """One table row for an m = n = k = ``size`` job."""
    shape = Shape(size, size, size, r)
    workload = Workload.synthetic(bytes(32), shape)
    header = bytes(range(128))
    a32 = workload.a.astype(np.float32)
    b32 = workload.bt.T.astype(np.float32)
    t_np = best_of(repeat, lambda: a32 @ b32)
    t_mine = best_of(repeat, lambda: mine_header(header, workload))
    a_rows, b_rows = workload.a[:16], workload.bt[:16]
    n_verify = 20

    def verify_many() -> None:
        for _ in range(n_verify):
            verify_ticket(header, shape, (0, 0), a_rows, b_rows)

    t_verify = best_of(repeat, verify_many) / n_verify
    miner_rate = shape.macs_per_header / t_mine
    t_share = share_macs(1.0) / miner_rate
    return (
        f"{f'{size}^3 r{r}':>12} {miner_rate:12.3e} {shape.macs_per_header / t_np:12.3e} "
        f"{t_np / t_mine:6.3f} {t_verify * 1e6:10.0f} {t_share * 1e6:14.0f} "
        f"{t_verify / t_share:12.2e}"
    )


def per_call(count: int, fn: object) -> float:
    """Mean seconds of ``fn(i)`` over ``count`` calls (best of 3 runs)."""
    assert callable(fn)
    return best_of(3, lambda: [fn(i) for i in range(count)]) / count


def check_table(shape: Shape, count: int) -> None:
    """One share check at ``shape``, before and after, beside its baselines (module doc)."""
    block = BlockTemplate(height=1, prev_hash=bytes(32), bits=0x1D010000, time=0, reward=1)
    work = SyntheticSource(shape).prepare(block)  # the row bands, as the pool keeps them
    headers = [os.urandom(128) for _ in range(count)]
    tiles = [(i % shape.tiles_m, (i * 7) % shape.tiles_n) for i in range(count)]
    one_header = HeaderNoise.of(headers[0], shape.k, shape.r)

    def before(i: int) -> bytes:
        ti, tj = tiles[i]
        a = synthetic_rows(work.seed, "A", ti * 16, 16, shape.k)
        bt = synthetic_rows(work.seed, "B", tj * 16, 16, shape.k)
        return verify_ticket(headers[i], shape, tiles[i], a, bt)

    def fresh(i: int) -> bytes:
        a, bt = work.tile_rows(tiles[i])
        return verify_ticket_fast(
            headers[i], shape, tiles[i], a, bt, work.header_noise(headers[i], shape)
        )

    def cached(i: int) -> bytes:
        a, bt = work.tile_rows(tiles[i])
        return verify_ticket_fast(headers[0], shape, tiles[i], a, bt, one_header)

    assert all(before(i) == fresh(i) for i in range(20)), "fast check differs from the reference"
    a32 = np.zeros((shape.slabs, 16, shape.r), np.float32)
    b32 = np.zeros((shape.slabs, shape.r, 16), np.float32)
    ping = encode_frame({"id": 1, "method": "mining.ping", "params": {}})
    decoder = FrameDecoder()

    def ping_framing(i: int) -> bytes:
        request = decoder.feed(ping)[0]
        return encode_frame({"id": request["id"], "result": "pong"})

    n_before = max(20, count // 10)
    t_before = per_call(n_before, before)
    work.noise.max_bytes = 0  # every header new: its index pairs derived per share
    t_fresh = per_call(count, fresh)
    t_cached = per_call(count, cached)
    t_math = per_call(count, lambda i: np.matmul(a32, b32))
    t_ping = per_call(count, ping_framing)
    print(f"\nshare check at {shape.m}x{shape.n}x{shape.k} r{shape.r}, one core:")
    rows = [
        ("before: rows derived + verify_ticket", t_before),
        ("after: cached rows, new header", t_fresh),
        ("after: cached rows, header seen", t_cached),
        ("baseline: the 16 slab sgemms alone", t_math),
        ("baseline: a ping's framing", t_ping),
    ]
    for name, t in rows:
        print(f"{name:>40} {t * 1e6:9.1f} µs  {t_before / t:7.2f}x faster than before")
    print(
        f"{'after (new header) / arithmetic':>40} {t_fresh / t_math:9.2f}x;"
        f"  / ping framing {t_fresh / t_ping:.2f}x"
    )

    def batch_of_8(i: int) -> list[bytes]:
        picked = [(i * 8 + b) % count for b in range(8)]
        return tile_digests(
            [
                TileCheck(work.header_noise(headers[p], shape), tiles[p], *work.tile_rows(tiles[p]))
                for p in picked
            ]
        )

    for threads in (1, 2):
        for name, fn, size in (("one a call", fresh, 1), ("8 a call", batch_of_8, 8)):
            n = count * threads // size
            with ThreadPoolExecutor(threads) as pool:
                start = time.perf_counter()
                list(pool.map(fn, (i % count for i in range(n))))
                rate = n * size / (time.perf_counter() - start)
            print(f"{f'checks/s, {threads} thread(s), {name}':>40} {rate:9.0f}")


def bursts(fn: object, calls: int, rounds: int = 40) -> float:
    """Seconds of one ``fn(i)``: the fastest of ``rounds`` bursts of ``calls`` calls (the
    least disturbed by other processes on a shared machine)."""
    assert callable(fn)
    best = float("inf")
    at = 0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(at)
            at += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def child_costs(dims: list[int], row: str) -> dict[str, float]:
    """In this (fresh) process: seconds per share of one way of checking, ``row`` of
    :data:`COST_ROWS`, and of a ping's framing ({} when the checked code lacks ``row``)."""
    from threadpoolctl import threadpool_limits

    from protocol import ticket

    threadpool_limits(1)
    shape = Shape(*dims)
    rng = np.random.default_rng(1)
    k = shape.k
    bands = [
        (
            rng.integers(-64, 65, (k, 16), dtype=np.int8),
            rng.integers(-64, 65, (k, 16), dtype=np.int8),
        )
        for _ in range(64)
    ]
    tiles = [(i % shape.tiles_m, (7 * i + 3) % shape.tiles_n) for i in range(64)]
    headers = [os.urandom(128) for _ in range(256)]
    seen = ticket.HeaderNoise.of(headers[0], k, shape.r)
    checks = [ticket.TileCheck(seen, t, a.T, b.T) for t, (a, b) in zip(tiles, bands, strict=True)]
    ping = encode_frame({"id": 1, "method": "mining.ping", "params": {}})
    decoder = FrameDecoder()

    def ping_framing(i: int) -> bytes:
        request = decoder.feed(ping)[0]
        return encode_frame({"id": request["id"], "result": "pong"})

    kept = getattr(ticket, "PassArrays", None)

    def first_share(keep: object) -> object:
        def run(i: int) -> bytes:
            noise = ticket.HeaderNoise.of(headers[i % 256], k, shape.r)
            a, b = bands[i % 64]
            if keep is None:
                return ticket.tile_digest(noise, tiles[i % 64], a.T, b.T)
            return ticket.tile_digest(noise, tiles[i % 64], a.T, b.T, keep)

        return run

    def seen_header(keep: object) -> object:
        def run(i: int) -> bytes:
            c = checks[i % 64]
            if keep is None:
                return ticket.tile_digest(c.noise, c.tile, c.a_rows, c.bt_rows)
            return ticket.tile_digest(c.noise, c.tile, c.a_rows, c.bt_rows, keep)

        return run

    def batch(size: int, keep: object) -> object:
        def run(i: int) -> list[bytes]:
            part = [checks[(i * size + j) % 64] for j in range(size)]
            return (
                ticket.tile_digests(part, keep) if keep is not None else ticket.tile_digests(part)
            )

        return run

    rows: dict[str, tuple[object, int, int]] = {
        "one a call, new header": (first_share(None), 10, 1),
        "one a call, header seen": (seen_header(None), 10, 1),
        "batch of 8, one header": (batch(8, None), 1, 8),
        "batch of 32, one header": (batch(32, None), 1, 32),
    }
    if kept is not None:
        rows["one a call, new header, arrays kept"] = (first_share(kept()), 10, 1)
        rows["one a call, header seen, arrays kept"] = (seen_header(kept()), 10, 1)
        rows["batch of 8, arrays kept"] = (batch(8, kept()), 1, 8)
        rows["batch of 32, arrays kept"] = (batch(32, kept()), 1, 32)
    if row not in rows:
        return {}
    fn, calls, size = rows[row]
    return {"ping framing": bursts(ping_framing, 200), row: bursts(fn, calls, 40) / size}


COST_ROWS = (
    "one a call, new header",
    "one a call, header seen",
    "one a call, new header, arrays kept",
    "one a call, header seen, arrays kept",
    "batch of 8, one header",
    "batch of 8, arrays kept",
    "batch of 32, one header",
    "batch of 32, arrays kept",
)
"""The rows of :func:`cost_table`, each measured in a process of its own (a row measured
after another inherits its heap: what a check costs there depends on it)."""


def cost_table(shape: Shape, protocol_root: str | None) -> None:
    """:func:`child_costs` in a fresh process, printed as µs and as ratios to the ping."""
    root = os.path.abspath(protocol_root or os.path.join(os.path.dirname(__file__), "..", ".."))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    dims = [str(d) for d in (shape.m, shape.n, shape.k, shape.r)]
    print(
        f"\nshare check at {shape.m}x{shape.n}x{shape.k} r{shape.r}, one core, a fresh process"
        f" a row (protocol from {root}):"
    )
    for row in COST_ROWS:
        done = subprocess.run(
            [sys.executable, __file__, "--child-costs", *dims, "--row", row],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        costs = json.loads(done.stdout.strip().splitlines()[-1])
        if costs:
            t, ping = costs[row], costs["ping framing"]
            ratio = f"{t / ping:7.2f}x a ping's framing ({ping * 1e6:.1f} µs)"
            print(f"{row:>40} {t * 1e6:9.1f} µs  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shapes", default="512,1024,2048", help="cube sizes m=n=k")
    parser.add_argument("--r", type=int, default=64, help="slab width r")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--check-shape",
        type=int,
        nargs=4,
        default=(2048, 2048, 2048, 128),
        metavar=("M", "N", "K", "R"),
        help="shape of the share-check table",
    )
    parser.add_argument("--checks", type=int, default=2000, help="share checks timed per row")
    parser.add_argument("--protocol-root", help="checkout whose protocol package the costs check")
    parser.add_argument("--only-costs", action="store_true", help="only the fresh-process costs")
    parser.add_argument("--child-costs", type=int, nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_costs:
        print(json.dumps(child_costs(args.child_costs, args.row)))
        return
    if args.only_costs:
        cost_table(Shape(*args.check_shape), args.protocol_root)
        return
    print(
        f"{'shape':>12} {'miner MAC/s':>12} {'numpy MAC/s':>12} {'ratio':>6} "
        f"{'verify µs':>10} {'diff-1 µs':>14} {'verify/mine':>12}"
    )
    for size in (int(s) for s in args.shapes.split(",")):
        print(measure(size, args.r, args.repeat), flush=True)
    check_table(Shape(*args.check_shape), args.checks)
    cost_table(Shape(*args.check_shape), args.protocol_root)


if __name__ == "__main__":
    main()
