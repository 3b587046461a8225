"""``matmine-worker``: mine on a pool, list OpenCL devices, or benchmark the backends offline."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from protocol.errors import ProtocolError
from protocol.version import package_version
from protocol.workload import Shape
from toolkit.logs import setup_logging as toolkit_logging

if TYPE_CHECKING:
    from rich.console import Console

from .autotune import DOT_CHOICES
from .config import (
    BACKENDS,
    DEFAULT_METRICS_PORT,
    LOG_LEVELS,
    ConfigError,
    WorkerConfig,
    default_config_text,
    load_config,
    with_overrides,
)

log = logging.getLogger("worker")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_BENCH_SHAPE = "256x256x2048:128"

_DESCRIPTION = """\
The matmine GPU worker. It mines mmpow-1 (useful int8 matrix-multiplication proof of work)
for a pool: every job's matrices are multiplied with per-header noise on your devices,
every candidate ticket is re-checked on the CPU before it is submitted, and it fails over
between pools when one goes away.
"""


def parse_shape(text: str) -> Shape:
    """``MxNxK:R`` → ``Shape``; ``argparse.ArgumentTypeError`` with the reason otherwise."""
    try:
        dims, _, r = text.lower().partition(":")
        m, n, k = (int(x) for x in dims.split("x"))
        return Shape(m, n, k, int(r))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: expected MxNxK:R, e.g. {DEFAULT_BENCH_SHAPE}"
        ) from None
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(f"shape {text!r}: {exc}") from None


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"`` → bytes (K/M/G/T are powers of 1024, an optional trailing B ignored)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size {text!r}: expected a number of bytes, optionally with K, M, G or T"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a finite, non-negative number")
    return int(value * _SIZE_UNITS[unit])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmine-worker",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mine = commands.add_parser(
        "mine",
        help="connect to one or more pools and mine",
        description="Connect to the pools (first = preferred), mine their jobs on the chosen "
        "backend and submit CPU-checked shares. Every flag has a config-file "
        "equivalent (--config); flags win. Stop with Ctrl-C or SIGTERM.",
    )
    mine.add_argument(
        "--pool",
        action="append",
        dest="pools",
        metavar="HOST:PORT",
        help="pool address, HOST:PORT or tls://HOST:PORT; repeat for failover "
        "pools in order of preference (config: [[pool]] url)",
    )
    mine.add_argument(
        "--login",
        metavar="ADDRESS.WORKER",
        help="payout address, optionally .WORKER to tell rigs apart (config: login)",
    )
    mine.add_argument(
        "--password",
        metavar="TEXT",
        help="pool password, if the pool wants one (config: password; default x)",
    )
    mine.add_argument(
        "--backend",
        choices=BACKENDS,
        help="compute backend: opencl for GPUs, blas for the CPU (config: backend; default blas)",
    )
    mine.add_argument(
        "--devices",
        nargs="+",
        metavar="P:D",
        help="OpenCL devices as PLATFORM:DEVICE (see `matmine-worker devices`); "
        "default all (config: devices)",
    )
    mine.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="port for Prometheus /metrics and the JSON /api/summary on "
        f"127.0.0.1; -1 turns it off (config: [metrics] port; default "
        f"{DEFAULT_METRICS_PORT})",
    )
    mine.add_argument(
        "--dot",
        choices=DOT_CHOICES,
        help="inner product of the OpenCL kernel: auto = the fastest the device claims that "
        "passes its self-test, else portable; or force one (config: [opencl] dot; default auto)",
    )
    mine.add_argument(
        "--no-useful",
        action="store_true",
        default=None,
        help="do not take useful-work (blob) jobs, only synthetic ones "
        "(config: [useful] enabled = false)",
    )
    mine.add_argument(
        "--blob-cache",
        metavar="DIR",
        help="directory of verified operand blobs (config: [useful] cache_dir; "
        "default ~/.cache/matmine-worker/blobs)",
    )
    mine.add_argument(
        "--blob-cache-max",
        type=parse_size,
        metavar="SIZE",
        help="size bound of the blob cache, bytes or with K/M/G "
        "(config: [useful] cache_max_bytes; default 1G)",
    )
    mine.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (every key with its default: 'matmine-worker init-config')",
    )
    mine.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log verbosity (config: log_level; default INFO)",
    )

    commands.add_parser(
        "init-config",
        help="print a commented TOML file of every setting at its default",
        description="Print a complete, commented configuration file with every key at its "
        "default value: matmine-worker init-config > worker.toml, then edit it and run "
        "matmine-worker mine --config worker.toml.",
    )
    commands.add_parser(
        "devices",
        help="list OpenCL platforms and devices, and whether the kernels build",
        description="List every OpenCL platform and device with the PLATFORM:DEVICE spec "
        "that --devices takes, and whether the mining kernels build and pass the "
        "self-test on it (and why not). Exits 1 if no device is usable.",
    )

    bench = commands.add_parser(
        "bench",
        help="benchmark the backends offline, checked against the reference",
        description="Mine a synthetic workload offline on each usable device, print MAC/s, "
        "and check every result against the reference implementation. A device "
        "whose kernels do not build is skipped with a warning. Exits 1 on any "
        "mismatch (a device that computes wrong results) or when no device works.",
    )
    bench.add_argument(
        "--backend",
        choices=(*BACKENDS, "all"),
        default="blas",
        help="which backend to measure (default blas; all = every backend)",
    )
    bench.add_argument(
        "--shape",
        type=parse_shape,
        default=parse_shape(DEFAULT_BENCH_SHAPE),
        metavar="MxNxK:R",
        help=f"workload shape; R is the slab width (default {DEFAULT_BENCH_SHAPE})",
    )
    bench.add_argument(
        "--devices",
        nargs="+",
        metavar="P:D",
        help="OpenCL devices as PLATFORM:DEVICE (default all)",
    )
    bench.add_argument(
        "--dot",
        choices=DOT_CHOICES,
        help="inner product of the OpenCL kernel: auto = the fastest the device claims that "
        "passes its self-test, else portable; or force one (default auto)",
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="measuring time per device, after one warm-up header (default 2)",
    )
    bench.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="WARNING",
        help="log verbosity (default WARNING)",
    )
    return parser


def setup_logging(level: str, console: Console | None = None) -> None:
    """Log to stderr in the programs' one style, or through ``rich`` when the live view owns
    the terminal."""
    if console is None:
        toolkit_logging(level)
        return
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    toolkit_logging(level, handler=handler)


def _mine(args: argparse.Namespace) -> int:
    try:
        config: WorkerConfig = with_overrides(
            load_config(args.config),
            pools=args.pools,
            login=args.login,
            password=args.password,
            backend=args.backend,
            devices=args.devices,
            metrics_port=args.metrics_port,
            log_level=args.log_level,
            no_useful=args.no_useful,
            blob_cache=args.blob_cache,
            blob_cache_max=args.blob_cache_max,
            dot=args.dot,
        ).validate()
    except ConfigError as exc:
        print(f"matmine-worker mine: {exc}", file=sys.stderr)
        return EXIT_USAGE

    import trio
    from prometheus_client import CollectorRegistry
    from rich.console import Console

    from .app import WorkerApp, run_until_signal
    from .backends import Backend, BackendError, open_backends
    from .backends.opencl import open_device
    from .console import live_view

    console = Console() if live_view(config.console.live) else None
    setup_logging(config.log_level.upper(), console)
    try:
        opencl: dict[str, Any] = {"dot": config.opencl.dot} if config.backend == "opencl" else {}
        backends = open_backends(config.backend, list(config.devices) or None, **opencl)
    except BackendError as exc:
        log.error("cannot open the %s backend: %s", config.backend, exc)
        return EXIT_FAILURE
    # the devices that passed their self-test, by index, for the watchdog to reopen
    specs = [str(getattr(b, "spec", "")) for b in backends]

    def reopen(index: int) -> Backend:
        if config.backend == "opencl":
            return open_device(specs[index], **opencl)
        return open_backends(config.backend, None)[0]

    app = WorkerApp(config, backends, CollectorRegistry(), reopen=reopen, console=console)
    return trio.run(run_until_signal, app)


def _devices(args: argparse.Namespace) -> int:
    from .backends.opencl import probe_kernels

    toolkit_logging(logging.ERROR)
    devices = probe_kernels()
    if not devices:
        print("no OpenCL platform or device found (is an OpenCL driver or PoCL installed?)")
        return EXIT_FAILURE
    print(
        f"{'spec':<6} {'platform':<28} {'device':<40} {'CUs':>4} {'memory':>10}  "
        f"{'dot':<11} kernels"
    )
    for d, reason, dot in devices:
        verdict = "ok" if reason is None else f"FAIL: {reason}"
        print(
            f"{d.spec:<6} {d.platform[:28]:<28} {d.name[:40]:<40} {d.compute_units:>4} "
            f"{d.memory / 2**30:>8.1f}Gi  {dot or '-':<11} {verdict}"
        )
    usable = sum(reason is None for _, reason, _ in devices)
    if not usable:
        print("no usable OpenCL device: the kernels build and pass the self-test on none")
        return EXIT_FAILURE
    return EXIT_OK


def report_bench(rows: list[dict], out: TextIO) -> int:
    """Print one line per measured device; the exit status: 1 on any mismatch or no rows."""
    failed = False
    for row in rows:
        name = str(row.get("backend", "?"))
        rate = float(row.get("macs_per_s", 0.0))
        mismatches = int(row.get("mismatches", 0))
        verdict = "OK" if mismatches == 0 else f"MISMATCH x{mismatches}"
        kernel = f"  [{row['kernel']}]" if row.get("kernel") else ""
        print(
            f"{name:<24} {row.get('shape', ''):<20} {rate / 1e9:10.3f} GMAC/s  "
            f"{row.get('headers', '?')} headers  {verdict}{kernel}",
            file=out,
        )
        failed = failed or mismatches > 0
    if not rows:
        print("nothing was measured", file=out)
        return EXIT_FAILURE
    return EXIT_FAILURE if failed else EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from .backends import BackendError
    from .bench import run_bench

    toolkit_logging(args.log_level)
    kinds = list(BACKENDS) if args.backend == "all" else [args.backend]
    rows: list[dict] = []
    failed = False
    for kind in kinds:
        devices = args.devices if kind == "opencl" else None
        opencl = {"dot": args.dot} if kind == "opencl" and args.dot else {}
        try:
            rows.extend(run_bench(kind, args.shape, devices, seconds=args.seconds, **opencl))
        except BackendError as exc:
            print(f"{kind}: cannot run: {exc}", file=sys.stderr)
            failed = True
    status = report_bench(rows, sys.stdout)
    return EXIT_FAILURE if failed else status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matmine-worker`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "init-config":
        sys.stdout.write(default_config_text())
        return EXIT_OK
    handlers = {"mine": _mine, "devices": _devices, "bench": _bench}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
