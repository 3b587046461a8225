"""Useful work on a limited link: how much of the mined work is useful when pool and worker
talk over 100 Mbit/s or 1 Gbit/s, against the physical bound.

For each ``--rates`` entry the bench creates a network namespace (:mod:`tests.bench.netns`:
``ip netns add``, loopback shaped with ``tc`` HTB + tbf) and re-runs itself inside it. There
it measures the link with a bulk TCP transfer and the worker's capacity with ``matmine-worker
bench`` (BLAS, the unit's shape), then for each case starts a real pool process and a real
``matmine-worker`` process talking over the shaped 127.0.0.1, and submits as a customer
bound to 127.0.0.2 (off the shaped link: a customer's upload is another link):

- (a) one 8192×8192×8192 product;
- (b) ``--stream`` products 4096×8192 · 8192×8192 sharing one B (B registered once when the
  pool offers ``POST /api/work/operands``, else uploaded with each product);
- (m) a synthetic deep model (``--model-layers`` layers of ``--model-width``², batches of
  ``--model-rows``) registered once and ``--model-batches`` batches streamed through it
  (:mod:`tests.support.link_model`: two rows, the first batch, whose units fetch the
  weights, and the stream of the others, the weights held; verified MACs from the API,
  the worker's from its own metrics);

every dimension divided by ``--scale`` (the model's layer count kept). Per (rate, case) it
prints the useful fraction of the mined MACs (pool metrics, from the first product's
acceptance until the last is done):
``useful/(useful+synthetic)`` of ``matmine_pool_mined_macs_total`` and verified useful MACs
(``matmine_pool_useful_macs_total``) ÷ all mined MACs; the bound ``min(1, link B/s ÷ (link
bytes per useful MAC × worker MAC/s))`` with the bytes counted by the shaped class, at
the worker's MAC/s during the case (what verified ÷ computed MACs obeys) and at its capacity
(``matmine-worker bench`` at the unit's shape); the least bytes per MAC (each A, B and C
across once); the ratio achieved (verified ÷ computed MACs) / bound; the pool's
CPU seconds per useful GMAC (/proc); and the same bound for a GPU worker at 50 and 300
TMAC/s. Needs root and iproute2 (``--no-netns``: plain
loopback, no bound; for smoke tests).

    sudo .venv/bin/python tests/bench/useful_link.py [--rates 100mbit,1gbit] [--scale 2]
        [--stream 3] [--cases a,b,m] [--unit 1024] [--model-layers 16] [--model-width 2048]
        [--model-rows 256] [--model-batches 4]

``tests/bench/useful_plane.py`` compares the HTTP data plane with stratum chunks on loopback.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.useful import choose_r
from tests.bench.netns import (
    ShapedNamespace,
    in_shaped_namespace,
    parse_rate,
    remove_stale,
    require_root_and_tc,
)
from tests.support.link_bench import (
    MAC_PER_SHARE_DIFFICULTY,
    Case,
    CaseResult,
    Setup,
    Snapshot,
    cases,
    measure_link,
    run_case,
    worker_capacity,
)
from tests.support.link_model import ModelCase, model_case, run_model_case

GPU_RATES = (50e12, 300e12)


async def run_all(args: argparse.Namespace) -> list[CaseResult]:
    """Every chosen case on this namespace's link (or plain loopback)."""
    every = cases(args.scale, args.stream)
    every.append(model_case(args.model_layers, args.model_width, args.model_rows, args.scale))
    chosen = [c for c in every if c.name in args.cases.split(",")]
    k = max(c.k for c in chosen)
    unit = min(args.unit, max(c.m for c in chosen))
    capacity = await trio.to_thread.run_sync(
        worker_capacity, unit, unit, k, choose_r(k, 64), args.bench_seconds
    )
    link = None
    if in_shaped_namespace():
        link = await measure_link(args.link_megabytes)
    # fixed share difficulty: about --shares-per-second at the worker's capacity
    difficulty = capacity / args.shares_per_second / MAC_PER_SHARE_DIFFICULTY
    setup = Setup(
        unit, difficulty, capacity, link, args.timeout, not args.no_register, bool(args.keep)
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="useful_link-") as scratch:
        tmp = Path(args.keep or scratch)
        for case in chosen:
            if isinstance(case, ModelCase):
                results += await run_model_case(
                    case, setup, tmp / case.name, batches=args.model_batches
                )
            else:
                results.append(await run_case(case, setup, tmp / case.name))
    return results


def _dump(results: list[CaseResult]) -> str:
    return json.dumps([asdict(r) for r in results])


def _load(text: str) -> list[CaseResult]:
    out = []
    for d in json.loads(text):
        d["case"] = ModelCase(**d["case"]) if "layers" in d["case"] else Case(**d["case"])
        d["start"], d["end"] = Snapshot(**d["start"]), Snapshot(**d["end"])
        out.append(CaseResult(**d))
    return out


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value, spec)


def table(rows: list[tuple[str, CaseResult]]) -> str:
    """The results as a fixed-width table (one line per rate and case) and a legend."""
    head = (
        f"{'link':>8} {'meas':>7} {'case':<24} {'u/mined':>7} {'verif':>6} {'bound':>6} "
        f"{'v/comp':>6} {'w u/sc':>6} {'bnd@cap':>7} {'ach/bnd':>7} {'B/uMAC':>8} {'least':>8} "
        f"{'wGMAC/s':>7} {'runGMAC':>7} {'cpu s/uGMAC':>11} "
        f"{'@50T':>7} {'@300T':>7} {'secs':>6}  submission"
    )
    lines = [head, "-" * len(head)]
    for rate, r in rows:
        gpu = [r.bound(gpu_rate) for gpu_rate in GPU_RATES]
        lines.append(
            f"{rate:>8} {_fmt(r.link_bits and r.link_bits / 1e6, '7.1f')} "
            f"{r.case.name + ' ' + r.case.label():<24} "
            f"{_fmt(r.mined_useful_fraction, '7.3f')} {_fmt(r.verified_fraction, '6.3f')} "
            f"{_fmt(r.bound(), '6.3f')} {_fmt(r.computed_fraction, '6.3f')} "
            f"{_fmt(r.worker_useful_fraction, '6.3f')} "
            f"{_fmt(r.bound(r.worker_capacity), '7.3f')} "
            f"{_fmt(r.achieved_over_bound, '7.2f')} "
            f"{_fmt(r.bytes_per_useful_mac, '8.5f')} {r.case.least_bytes_per_mac:8.5f} "
            f"{r.worker_capacity / 1e9:7.1f} "
            f"{r.worker_rate / 1e9:7.1f} {_fmt(r.pool_cpu_per_useful_gmac, '11.4f')} "
            f"{_fmt(gpu[0], '7.5f')} {_fmt(gpu[1], '7.5f')} {r.seconds:6.1f}  {r.submission}"
        )
    lines += [
        "",
        "meas: bulk TCP Mbit/s on the link; u/mined: useful/(useful+synthetic) of mined MACs;"
        " verif: verified useful MACs / all mined MACs;",
        "v/comp: verified useful MACs / MACs the worker computed (exact, no share noise);"
        " w u/sc: the worker's useful scanned MACs (unit headers whose product it took) / all;",
        "bound: min(1, link B/s / (B/uMAC x runGMAC)), what v/comp obeys; bnd@cap: the same"
        " at wGMAC/s; ach/bnd: v/comp / bound;",
        "B/uMAC: link bytes per verified useful MAC; least: bytes per MAC if every A, B and C"
        " crossed once;",
        "wGMAC/s: worker capacity (matmine-worker bench); "
        "runGMAC: worker MAC/s during the case; cpu s/uGMAC: pool process CPU s per verified"
        " GMAC; @50T/@300T: the bound for a 50/300 TMAC/s GPU.",
        "m (model job): verif, v/comp count the passes' MACs from the API (rows x macs_per_row"
        " once done, checked against the pool's counter; the worker's from its metrics, model"
        " layers counted useful); u/mined: the pool's split (held layer shares useful);",
        "  first batch: the worker fetches the weights in it; stream: the later batches, the"
        " next queued while one runs, the weights held (a worker fetches them once).",
    ]
    return "\n".join(lines)


def _inner_args(args: argparse.Namespace) -> list[str]:
    out = []
    names = ("scale", "stream", "cases", "unit", "shares_per_second", "timeout")
    for name in (*names, "model_layers", "model_width", "model_rows", "model_batches"):
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out += ["--bench-seconds", str(args.bench_seconds), "--link-megabytes"]
    return out


def _run_inside(ns: ShapedNamespace, command: list[str]) -> str:
    """Run ``command`` in the namespace; its stdout. On any exit of ours (Ctrl-C, SIGTERM)
    it gets SIGINT first, so that it stops its pool and worker before the namespace goes."""
    with subprocess.Popen(ns.exec(command), stdout=subprocess.PIPE, text=True) as child:
        try:
            out, _ = child.communicate()
        except BaseException:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=45)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
    if child.returncode != 0:
        sys.exit(f"error: the bench inside {ns.name} failed (exit {child.returncode})")
    return out


def outer(args: argparse.Namespace) -> list[tuple[str, CaseResult]]:
    """One namespace per rate, the bench re-run inside each; their results."""
    require_root_and_tc()
    for name in remove_stale():
        print(f"removed the namespace {name} of a bench that was killed", file=sys.stderr)
    rows = []
    for rate in args.rates.split(","):
        megabytes = args.link_megabytes or max(8.0, min(500.0, parse_rate(rate) / 8e6 * 3))
        command = [sys.executable, __file__, "--inside", *_inner_args(args), str(megabytes)]
        if args.keep:  # each rate's pool and worker files apart
            command += ["--keep", str(Path(args.keep).resolve() / rate)]
        if args.no_register:
            command.append("--no-register")
        with ShapedNamespace(rate) as ns:
            print(f"{rate}: running in namespace {ns.name} ...", file=sys.stderr, flush=True)
            rows += [(rate, r) for r in _load(_run_inside(ns, command))]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rates", default="100mbit,1gbit", help="tc rates, comma-separated")
    parser.add_argument("--scale", type=int, default=2, help="divide every dimension by this")
    parser.add_argument("--stream", type=int, default=3, help="products in case (b)")
    parser.add_argument("--cases", default="a,b", help="which cases, of a, b, m: a,b,m")
    parser.add_argument("--unit", type=int, default=1024, help="the pool's unit_m = unit_n")
    parser.add_argument("--model-layers", type=int, default=16, help="layers of case (m)")
    parser.add_argument("--model-width", type=int, default=2048, help="case (m)'s layer width")
    parser.add_argument("--model-rows", type=int, default=256, help="case (m)'s batch rows")
    parser.add_argument(
        "--model-batches", type=int, default=4, help="case (m)'s batches, streamed (first apart)"
    )
    parser.add_argument("--shares-per-second", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--bench-seconds", type=float, default=2.0)
    parser.add_argument("--link-megabytes", type=float, default=0.0, help="bulk probe size")
    parser.add_argument("--no-register", action="store_true", help="never register B")
    parser.add_argument(
        "--keep",
        default="",
        help=(
            "keep each case's pool and worker logs, and a timeline of the worker's counters"
            " (timeline.tsv), under this folder"
        ),
    )
    parser.add_argument("--no-netns", action="store_true", help="plain loopback, no bound")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale < 1 or 8192 % args.scale or args.stream < 1:
        parser.error("--scale must divide 8192 and --stream be at least 1")
    if min(args.model_layers, args.model_width, args.model_rows, args.model_batches) < 1:
        parser.error(
            "--model-layers, --model-width, --model-rows and --model-batches must be at least 1"
        )
    if not set(args.cases.split(",")) <= {"a", "b", "m"}:
        parser.error(f"--cases: unknown case in {args.cases!r} (a, b, m)")
    try:
        for rate in args.rates.split(","):
            parse_rate(rate)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main() -> None:
    args = parse_args()
    if args.inside:
        print(_dump(trio.run(run_all, args)))
        return
    rows = [("loopback", r) for r in trio.run(run_all, args)] if args.no_netns else outer(args)
    print(table(rows))


if __name__ == "__main__":
    main()
