"""The machinery of ``tests/bench/useful_link.py``: useful work over one (shaped) link.

:func:`run_case` starts a real pool process and a real ``matmine-worker`` (BLAS) process
on 127.0.0.1, lets the worker mine synthetic work, then submits a case's products as a
customer (:class:`ProductSubmitter`, bound to 127.0.0.2 so that inside a
:mod:`tests.bench.netns` namespace the customer stays off the shaped link), waits until
every product is done and returns a :class:`CaseResult` computed from the difference of
two :class:`Snapshot` s: the pool's ``/metrics`` (mined MACs by kind, verified useful
MACs), the pool process's CPU time, the bytes through the shaped class (when there is
one) and the worker's computed MACs. :func:`measure_link` times a bulk TCP transfer
over the same path; :func:`worker_capacity` runs ``matmine-worker bench``.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from protocol.address import new_address
from protocol.useful import choose_r
from tests.bench.netns import LOOP_HOST, SIDE_HOST, in_shaped_namespace, shaped_bytes
from tests.support import REPO
from tests.support.processes import (
    PoolProcess,
    WorkerProcess,
    cpu_seconds,
    metric,
    pool_toml,
    scrape,
)
from tests.support.running import free_port

MAC_PER_SHARE_DIFFICULTY = 2.0**32
DONE_POLL = 0.05  # s between status polls: the case ends at most this long after it is done
TIMELINE_STEP = 0.1
TIMELINE_COUNTERS = (
    ("useful", "matmine_worker_scanned_macs_total", {"kind": "useful"}),
    ("synthetic", "matmine_worker_scanned_macs_total", {"kind": "synthetic"}),
    ("verified", "matmine_worker_useful_results_total", {"outcome": "verified"}),
    ("bytes_in", "matmine_worker_useful_bytes_total", {"direction": "in"}),
    ("bytes_out", "matmine_worker_useful_bytes_total", {"direction": "out"}),
)


@dataclass(frozen=True)
class Case:
    """``count`` products A (m×k) · B (k×n), all with the same B."""

    name: str
    m: int
    k: int
    n: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count

    @property
    def least_bytes_per_mac(self) -> float:
        """Bytes per MAC if each A, the one B and each C (int32) crossed the link once."""
        moved = self.count * self.m * self.k + self.k * self.n + 4 * self.count * self.m * self.n
        return moved / self.macs

    def label(self) -> str:
        product = f"{self.m}×{self.k}·{self.k}×{self.n}"
        return f"{self.count}×[{product}]" if self.count > 1 else product


def cases(scale: int, stream: int) -> list[Case]:
    """Case (a): one 8192³ product; case (b): ``stream`` products 4096×8192 · 8192×8192
    sharing B; every dimension divided by ``scale``."""
    full = 8192 // scale
    return [
        Case("a", full, full, full),
        Case("b", max(16, 4096 // scale), full, full, stream),
    ]


@dataclass
class Snapshot:
    """What the counters said at one moment."""

    time: float
    mined_useful: float
    mined_synthetic: float
    verified: float
    pool_cpu: float
    worker_macs: float
    worker_useful: float  # the worker's scanned MACs of unit headers before their product
    data_bytes: float  # the pool's useful-work payload bytes (operands out, results in)
    link_bytes: int | None  # bytes through the shaped class; None off a shaped link


@dataclass
class CaseResult:
    """One case on one link; fractions and bounds as the bench prints them."""

    case: Case
    link_bits: float | None  # measured bulk rate, bit/s
    worker_capacity: float  # MAC/s of `matmine-worker bench` at the unit shape
    start: Snapshot
    end: Snapshot
    submission: str
    extra: dict[str, float] = field(default_factory=dict)

    def delta(self, name: str) -> float:
        return float(getattr(self.end, name) - getattr(self.start, name))

    @property
    def seconds(self) -> float:
        return self.end.time - self.start.time

    @property
    def mined(self) -> float:
        return self.delta("mined_useful") + self.delta("mined_synthetic")

    @property
    def mined_useful_fraction(self) -> float | None:
        return self.delta("mined_useful") / self.mined if self.mined else None

    @property
    def verified_fraction(self) -> float | None:
        """Verified useful MACs ÷ all mined MACs: the part of the proven work that was useful."""
        return self.delta("verified") / self.mined if self.mined else None

    @property
    def computed_fraction(self) -> float | None:
        """Verified useful MACs ÷ MACs the worker computed (exact: no share sampling)."""
        computed = self.delta("worker_macs")
        return self.delta("verified") / computed if computed else None

    @property
    def worker_useful_fraction(self) -> float | None:
        """The worker's own count: MACs of unit headers whose product it took ÷ all it did."""
        computed = self.delta("worker_macs")
        return self.delta("worker_useful") / computed if computed else None

    @property
    def worker_rate(self) -> float:
        """MAC/s the worker computed during the case."""
        return self.delta("worker_macs") / self.seconds if self.seconds > 0 else 0.0

    @property
    def moved_bytes(self) -> float:
        """Bytes through the shaped link (the pool's payload bytes off a shaped link)."""
        if self.start.link_bytes is None or self.end.link_bytes is None:
            return self.delta("data_bytes")
        return float(self.end.link_bytes - self.start.link_bytes)

    @property
    def bytes_per_useful_mac(self) -> float | None:
        verified = self.delta("verified")
        return self.moved_bytes / verified if verified else None

    def bound(self, mac_rate: float | None = None) -> float | None:
        """``min(1, link bytes/s ÷ (bytes per useful MAC × MAC/s))``; None without a
        measured link. MAC/s: ``mac_rate``, else the worker's rate during the case — the
        bound that the case's exact useful fraction (:attr:`computed_fraction`) obeys."""
        per_mac = self.bytes_per_useful_mac
        rate = self.worker_rate if mac_rate is None else mac_rate
        if self.link_bits is None or not per_mac or rate <= 0:
            return None
        return min(1.0, self.link_bits / 8 / (per_mac * rate))

    @property
    def achieved_over_bound(self) -> float | None:
        """The exact useful fraction (verified ÷ computed MACs) over :meth:`bound`."""
        bound, achieved = self.bound(), self.computed_fraction
        return achieved / bound if bound and achieved is not None else None

    @property
    def pool_cpu_per_useful_gmac(self) -> float | None:
        verified = self.delta("verified")
        return self.delta("pool_cpu") / (verified / 1e9) if verified else None


def npy(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


async def _post(client: httpx.AsyncClient, path: str, body: bytes, **params: str) -> httpx.Response:
    return await client.post(
        path, params=params, content=body, headers={"Content-Type": "application/x-npy"}
    )


async def offers_registered_operands(client: httpx.AsyncClient) -> bool:
    """Does the pool have registered operands (``GET /api/work/operands``: 404/405 = no)?"""
    r = await client.get("/api/work/operands")
    return r.status_code not in (404, 405)


class ProductSubmitter:
    """Submits ``A_i · B`` products that share one B (``.npy`` bytes), as cheaply as the pool
    allows: with ``share_b`` and a pool that offers registered operands, B is uploaded once
    (``POST /api/work/operands``) and each product names it (``POST /api/work?b_operand=ID``
    with A alone); otherwise — or once the pool refuses that — B goes with every product
    (``application/x-npy``: A.npy then B.npy). ``how`` says which it was."""

    def __init__(self, client: httpx.AsyncClient, b_blob: bytes, *, share_b: bool) -> None:
        self.client = client
        self.b_blob = b_blob
        self.share_b = share_b
        self.operand: str | None = None
        self.how = "B uploaded with every product"
        self._probed = False

    async def _register(self) -> None:
        self._probed = True
        if not await offers_registered_operands(self.client):
            return
        r = await _post(self.client, "/api/work/operands", self.b_blob)
        answer = r.json() if r.status_code in (200, 201) else {}
        found = next((answer[k] for k in ("id", "operand", "hash") if k in answer), None)
        self.operand = None if found is None else str(found)
        self.how = "B registered once" if found else f"registration refused ({r.status_code})"

    async def submit(self, a_blob: bytes) -> str:
        """Submit ``A·B``; return its work id (RuntimeError naming the pool's refusal)."""
        if self.share_b and not self._probed:
            await self._register()
        r = None
        if self.operand is not None:
            r = await _post(self.client, "/api/work", a_blob, b_operand=self.operand)
            if r.status_code != 201:
                self.how, self.operand = f"b_operand refused ({r.status_code}), B uploaded", None
        if self.operand is None:
            r = await _post(self.client, "/api/work", a_blob + self.b_blob)
        assert r is not None
        if r.status_code != 201:
            raise RuntimeError(f"submit refused: HTTP {r.status_code}: {r.text[:200]}")
        return str(r.json()["id"])


async def measure_link(megabytes: float) -> float:
    """Bits per second of one bulk TCP transfer 127.0.0.1 → 127.0.0.1 (the shaped path)."""
    size = int(megabytes * 1e6)
    timing: dict[str, float] = {}
    block = b"\0" * (1 << 20)

    async def receive(stream: trio.SocketStream) -> None:
        got = 0
        while got < size:
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            if not got:
                timing["first"] = time.perf_counter()
            got += len(data)
        timing["last"] = time.perf_counter()
        await stream.send_all(b"k")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, receive, 0, host=LOOP_HOST))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(max(60.0, megabytes / 5)):
            stream = await trio.open_tcp_stream(LOOP_HOST, port)
            async with stream:
                sent = 0
                while sent < size:
                    piece = block[: min(len(block), size - sent)]
                    await stream.send_all(piece)
                    sent += len(piece)
                await stream.receive_some(1)
        nursery.cancel_scope.cancel()
    return size * 8 / (timing["last"] - timing["first"])


def worker_capacity(m: int, n: int, k: int, r: int, seconds: float = 2.0) -> float:
    """MAC/s of ``matmine-worker bench`` (BLAS) at shape m×n×k:r (one header warm-up)."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "--backend", "blas",
         "--shape", f"{m}x{n}x{k}:{r}", "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    found = re.search(r"([\d.]+) GMAC/s", done.stdout + done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"matmine-worker bench failed: {(done.stderr or done.stdout)[-500:]}")
    return float(found.group(1)) * 1e9


@dataclass
class Setup:
    """What every case of one run shares."""

    unit: int
    difficulty: float
    worker_capacity: float
    link_bits: float | None
    timeout: float
    share_b: bool = True
    timeline: bool = False  # sample the worker's counters every TIMELINE_STEP s into a file


def _pool_config(
    tmp: Path, setup: Setup, k: int, stratum: int, http: int, max_frame_size: int = 16384
) -> Path:
    r = choose_r(k, 64)
    config: dict[str, dict[str, Any]] = {
        "stratum": {"host": LOOP_HOST, "port": stratum, "max_frame_size": max_frame_size},
        "http": {"enabled": True, "host": LOOP_HOST, "port": http},
        "pool": {"data_dir": str(tmp / "pool"), "start_difficulty": setup.difficulty},
        "vardiff": {"enabled": False, "min_difficulty": min(setup.difficulty, 1e-3)},
        # synthetic jobs of the unit's own shape: a header costs the same either way
        "work": {"m": setup.unit, "n": setup.unit, "k": k, "r": r},
        "chain.node": {"start_difficulty": 1e9, "min_difficulty": 1.0},
        "useful": {"unit_m": setup.unit, "unit_n": setup.unit, "r": 64},
        # a fixed difficulty with no vardiff may give a fast worker thousands of shares a
        # second (the smoke tests' every ticket a share): the rate limits are not measured here
        "limits": {"messages_per_second": 1e6, "message_burst": 1_000_000},
    }
    path = tmp / "pool.toml"
    path.write_text(pool_toml(config))
    return path


async def _snapshot(
    client: httpx.AsyncClient, pool: PoolProcess, pool_url: str, worker_url: str, shaped: bool
) -> Snapshot:
    p = await scrape(client, f"{pool_url}/metrics")
    w = await scrape(client, f"{worker_url}/metrics")
    worker_macs = sum(v for (name, _), v in w.items() if name == "matmine_worker_work_macs_total")
    return Snapshot(
        time=time.monotonic(),
        mined_useful=metric(p, "matmine_pool_mined_macs_total", kind="useful"),
        mined_synthetic=metric(p, "matmine_pool_mined_macs_total", kind="synthetic"),
        verified=metric(p, "matmine_pool_useful_macs_total"),
        pool_cpu=cpu_seconds(pool.pid),
        worker_macs=worker_macs,
        worker_useful=metric(w, "matmine_worker_scanned_macs_total", kind="useful"),
        data_bytes=sum(v for (name, _), v in p.items() if name == "matmine_pool_data_bytes_total"),
        link_bytes=shaped_bytes() if shaped else None,
    )


async def _timeline(client: httpx.AsyncClient, worker_url: str, path: Path) -> None:
    """Until cancelled: every TIMELINE_STEP s a line of the worker's counters (wall clock
    time, monotonic time as :class:`Snapshot` has it, then :data:`TIMELINE_COUNTERS`), so a
    case's gaps can be read against the logs."""
    with path.open("w") as out:
        names = ["time", "monotonic", *(name for name, _, _ in TIMELINE_COUNTERS)]
        out.write("\t".join(names) + "\n")
        while True:
            w = await scrape(client, f"{worker_url}/metrics")
            values = [metric(w, name, **labels) for _, name, labels in TIMELINE_COUNTERS]
            stamps = [f"{time.time():.3f}", f"{time.monotonic():.3f}"]
            out.write("\t".join([*stamps, *(f"{v:.0f}" for v in values)]) + "\n")
            await trio.sleep(TIMELINE_STEP)


async def _wait_done(client: httpx.AsyncClient, ids: list[str], timeout: float) -> None:
    left = list(ids)
    with trio.fail_after(timeout):
        while left:
            status = (await client.get(f"/api/work/{left[0]}")).json()
            if status.get("state") == "failed":
                raise RuntimeError(f"work {left[0]} failed: {status.get('error')}")
            if status.get("state") == "done":
                left.pop(0)
            else:
                await trio.sleep(DONE_POLL)


async def run_case(case: Case, setup: Setup, tmp: Path) -> CaseResult:
    """One case on a fresh pool and worker (see the module text)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shaped = in_shaped_namespace()
    stratum, http, worker_port = free_port(), free_port(), free_port()
    config = _pool_config(tmp, setup, case.k, stratum, http)
    rng = np.random.default_rng(7)
    b_blob = npy(rng.integers(-64, 65, (case.k, case.n), dtype=np.int8))
    a_blobs = [
        npy(rng.integers(-64, 65, (case.m, case.k), dtype=np.int8)) for _ in range(case.count)
    ]
    pool_url, worker_url = f"http://{LOOP_HOST}:{http}", f"http://{LOOP_HOST}:{worker_port}"
    side = httpx.AsyncHTTPTransport(local_address=SIDE_HOST)  # off the shaped link
    login = f"{new_address()}.linkbench"
    async with (
        httpx.AsyncClient(base_url=pool_url, transport=side, timeout=600) as client,
        PoolProcess(config, tmp / "pool.log") as pool,
        WorkerProcess(
            f"{LOOP_HOST}:{stratum}", login, worker_port, tmp / "cache", tmp / "worker.log"
        ),
    ):
        with trio.fail_after(60):  # the worker has mined (synthetic work) for a while
            while (await _snapshot(client, pool, pool_url, worker_url, False)).mined_synthetic == 0:
                await trio.sleep(0.2)
        async with trio.open_nursery() as nursery:
            if setup.timeline:
                nursery.start_soon(_timeline, client, worker_url, tmp / "timeline.tsv")
            submitter = ProductSubmitter(client, b_blob, share_b=setup.share_b)
            ids = [await submitter.submit(a_blobs[0])]
            start = await _snapshot(client, pool, pool_url, worker_url, shaped)
            ids += [await submitter.submit(a_blob) for a_blob in a_blobs[1:]]
            how = submitter.how if case.count > 1 else "one product (A and B uploaded)"
            await _wait_done(client, ids, setup.timeout)
            end = await _snapshot(client, pool, pool_url, worker_url, shaped)
            nursery.cancel_scope.cancel()
        if setup.timeline:
            (tmp / "window.txt").write_text(f"{start.time:.3f} {end.time:.3f}\n")
    return CaseResult(case, setup.link_bits, setup.worker_capacity, start, end, how)
