"""Useful-work demo: an int8-quantised layer of a real classifier, computed by the pool.

Data: scikit-learn's bundled handwritten digits (``load_digits``: 1797 images of 8×8
pixels, offline). Model, fitted here in numpy: a random-feature network. The input is
``[x, x²/16]`` (128 features), the hidden layer ``h = relu(X·W + b)`` with random W
(128 × ``--hidden``), the read-out a ridge regression from h to the ten classes, fitted
on 70 % of the images and scored on the other 30 %.

The hidden layer's matrix product runs on the pool: X and W are quantised to int8 in
[-64, 64] (X exactly: pixels are 0..16, so ×4; W with one scale), ``X_q·W_q`` is
submitted to the pool's work API, a BLAS worker mines its units, and the delivered
product is checked to equal ``X_q.astype(int64) @ W_q`` exactly. The read-out is then
applied to the dequantised pool product and its accuracy compared with the float model.

Finally: useful MACs (the pool's ``matmine_pool_useful_macs_total``) against the MACs the
pool credited (Σ share difficulty · 2³², read from its ledger after a clean stop).

By default the script starts its own pool (embedded devnet node) and one BLAS worker as
subprocesses on 127.0.0.1, in a temporary directory, and stops them at the end; with
``--api URL`` it only submits to a running pool (and reports what its /metrics say).

    .venv/bin/python deploy/useful_demo.py            # ≈ 1 minute on 2 CPU cores
    .venv/bin/python deploy/useful_demo.py --api http://127.0.0.1:8080

Needs scikit-learn (the ``demo`` extra) for the data set.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent

POOL_CONFIG = """\
[stratum]
host = "127.0.0.1"
port = {stratum_port}

[http]
host = "127.0.0.1"
port = {http_port}

[pool]
data_dir = "{data_dir}"
start_difficulty = {difficulty}
log_level = "info"

[vardiff]
enabled = false
min_difficulty = {difficulty}

[work]
m = 256
n = 256
k = 128
r = 32
job_refresh_seconds = 2.0

[useful]
unit_m = {unit}
unit_n = {unit}
r = 64
"""


# --- the model ----------------------------------------------------------------------------


@dataclass
class Model:
    x_q: np.ndarray  # images × 128 int8 (features ×4)
    w_q: np.ndarray  # 128 × hidden int8
    x_scale: float
    w_scale: float
    bias: np.ndarray  # hidden
    readout: np.ndarray  # (hidden + 1) × 10
    y: np.ndarray
    test: np.ndarray  # indices of the test images
    float_hidden: np.ndarray  # X·W in float64 (unquantised)


def build_model(hidden: int, seed: int) -> Model:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, y = digits.data, digits.target  # 0..16
    x = np.hstack([pixels, pixels**2 / 16.0])  # 128 features in [0, 16]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((x.shape[1], hidden)) / np.sqrt(x.shape[1])
    bias = rng.standard_normal(hidden) * 2.0
    x_scale = 4.0  # exact: x·4 is an integer in [0, 64] for the pixels ...
    x_q = np.clip(np.rint(x * x_scale), -64, 64).astype(np.int8)  # ... and x²/16 rounded
    w_scale = 64.0 / np.abs(w).max()
    w_q = np.clip(np.rint(w * w_scale), -64, 64).astype(np.int8)
    order = rng.permutation(len(y))
    train, test = order[: int(0.7 * len(y))], order[int(0.7 * len(y)) :]
    float_hidden = x @ w
    features = _features(float_hidden, bias)
    targets = np.eye(10)[y]
    a = features[train]
    readout = np.linalg.solve(a.T @ a + 1e-1 * np.eye(a.shape[1]), a.T @ targets[train])
    return Model(x_q, w_q, x_scale, w_scale, bias, readout, y, test, float_hidden)


def _features(hidden: np.ndarray, bias: np.ndarray) -> np.ndarray:
    h = np.maximum(hidden + bias, 0.0)
    return np.hstack([h, np.ones((h.shape[0], 1))])


def accuracy(model: Model, hidden: np.ndarray) -> tuple[float, np.ndarray]:
    predicted = np.argmax(_features(hidden, model.bias) @ model.readout, axis=1)
    return float(np.mean(predicted[model.test] == model.y[model.test])), predicted


# --- the pool and the worker ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited ({proc.returncode}) before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout:g}s")


def stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop in 20 s; killing it")
            proc.kill()
            proc.wait(5)


@dataclass
class Local:
    pool: subprocess.Popen
    worker: subprocess.Popen
    api: str
    worker_api: str
    ledger: Path


def start_local(workdir: Path, unit: int, difficulty: float) -> Local:
    from protocol.address import new_address

    stratum, http, metrics = free_port(), free_port(), free_port()
    data = workdir / "pool"
    config = workdir / "pool.toml"
    config.write_text(
        POOL_CONFIG.format(
            stratum_port=stratum, http_port=http, data_dir=data, difficulty=difficulty, unit=unit
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(workdir / "pool.log", "w") as log:  # the child keeps its own descriptor
        pool = subprocess.Popen(
            [str(BIN / "matmine-pool"), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    api = f"http://127.0.0.1:{http}"
    wait_http(f"{api}/healthz", 60, pool)
    with open(workdir / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [
                str(BIN / "matmine-worker"),
                "mine",
                "--pool",
                f"127.0.0.1:{stratum}",
                "--login",
                f"{new_address()}.demo",
                "--backend",
                "blas",
                "--metrics-port",
                str(metrics),
                "--blob-cache",
                str(workdir / "blobs"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    worker_api = f"http://127.0.0.1:{metrics}"
    wait_http(f"{worker_api}/api/summary", 60, worker)
    deadline = time.monotonic() + 30
    while not httpx.get(f"{worker_api}/api/summary").json()["pool"]["connected"]:
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not connect to the pool in 30 s")
        time.sleep(0.2)
    return Local(pool, worker, api, worker_api, data / "pool.sqlite")


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def metrics(api: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{api}/metrics").text.splitlines():
        if line.startswith("matmine_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def run_product(
    api: str, x_q: np.ndarray, w_q: np.ndarray, timeout: float, token: str | None
) -> tuple[np.ndarray, dict, float]:
    headers = {"Content-Type": "application/x-npy"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        started = time.monotonic()
        answer = client.post("/api/work", content=npy(x_q) + npy(w_q))
        if answer.status_code != 201:
            raise SystemExit(f"submit refused: {answer.status_code} {answer.text}")
        work_id = answer.json()["id"]
        print(f"  submitted work {work_id}: {answer.json().get('units')} units")
        last = ""
        while True:
            status = client.get(f"/api/work/{work_id}").json()
            line = f"{status['state']} {status.get('unit_states', {})}"
            if line != last:
                print(f"  [{time.monotonic() - started:6.1f}s] {line}")
                last = line
            if status["state"] == "done":
                break
            if status["state"] == "failed":
                raise SystemExit(f"work failed: {status.get('error')}")
            if time.monotonic() - started > timeout:
                raise SystemExit(f"work not done after {timeout:g}s")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        result = client.get(f"/api/work/{work_id}/result")
        result.raise_for_status()
        return np.load(io.BytesIO(result.content), allow_pickle=False), status, elapsed


def credited(ledger: Path, since: float = 0.0, until: float = float("inf")) -> tuple[int, float]:
    """Shares in the pool's ledger (found between ``since`` and ``until``): count, Σ difficulty."""
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        count, total = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(difficulty), 0) FROM shares "
            "WHERE time >= ? AND time <= ?",
            (since, min(until, 1e18)),
        ).fetchone()
    return int(count), float(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", help="use a running pool's HTTP API instead of starting one")
    parser.add_argument("--token", help="work API token (a pool with [useful.tokens])")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden units (default 1024)")
    parser.add_argument(
        "--unit",
        type=int,
        default=512,
        help="unit size of the pool this script starts (default 512)",
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=2.0**-4,
        help="fixed share difficulty of that pool (default 2^-4)",
    )
    parser.add_argument(
        "--timeout", type=float, default=150.0, help="seconds to wait for the product (default 150)"
    )
    parser.add_argument("--workdir", help="keep the pool's and worker's files here")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    print("model: random-feature network on scikit-learn's digits")
    model = build_model(args.hidden, args.seed)
    m, k = model.x_q.shape
    n = model.w_q.shape[1]
    print(f"  hidden layer X_q·W_q: {m}×{k} · {k}×{n} int8, {m * n * k:,} MACs")
    expected = model.x_q.astype(np.int64) @ model.w_q.astype(np.int64)

    local: Local | None = None
    tmp = None
    if args.api is None:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="matmine-demo-")
            workdir = Path(tmp.name)
        print(f"starting a pool and a BLAS worker on 127.0.0.1 (files in {workdir})")
        local = start_local(workdir, args.unit, args.difficulty)
        api = local.api
    else:
        api = args.api.rstrip("/")

    def scanned() -> int | None:
        """MACs the local worker's devices have scanned so far (None: no local worker)."""
        if local is None:
            return None
        devices = httpx.get(f"{local.worker_api}/api/summary").json().get("devices", [])
        return sum(int(d.get("macs", 0)) for d in devices)

    try:
        before = metrics(api)
        scanned_before = scanned()
        print(f"submitting to {api}")
        submitted = time.time()
        c, _, elapsed = run_product(api, model.x_q, model.w_q, args.timeout, args.token)
        finished = time.time()
        after = metrics(api)
        scanned_after = scanned()
        summary = httpx.get(f"{local.worker_api}/api/summary").json() if local else None
    finally:
        if local is not None:
            stop(local.worker, "worker")
            stop(local.pool, "pool")

    exact = c.shape == expected.shape and np.array_equal(c.astype(np.int64), expected)
    print(
        f"\ndelivered C: {c.shape} {c.dtype} in {elapsed:.1f} s; "
        f"equals numpy's X_q·W_q exactly: {exact}"
    )
    pool_hidden = c.astype(np.float64) / (model.x_scale * model.w_scale)
    acc_float, pred_float = accuracy(model, model.float_hidden)
    acc_pool, pred_pool = accuracy(model, pool_hidden)
    agree = float(np.mean(pred_float[model.test] == pred_pool[model.test]))
    print(
        f"test accuracy ({len(model.test)} images): float model {acc_float:.4f}, "
        f"int8 layer computed by the pool {acc_pool:.4f}; predictions agree on "
        f"{agree:.2%}"
    )

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    useful = delta("matmine_pool_useful_macs_total")
    checks = {
        o: delta(f'matmine_pool_result_checks_total{{outcome="{o}"}}')
        for o in ("pass", "fail", "malformed")
    }
    print(f"pool: useful MACs {useful:,.0f} (this product: {m * n * k:,}); result checks {checks}")
    if local is not None:
        print(
            f"pool ledger (share difficulty {args.difficulty:g}; a share stands for "
            f"difficulty · 2^32 MACs):"
        )
    if local is not None:
        for label, window in (
            ("over the whole run (pool start to stop)", (0.0, float("inf"))),
            ("while the product was in the pool", (submitted, finished)),
        ):
            shares, difficulty = credited(local.ledger, *window)
            total = difficulty * 2**32
            fraction = f"{useful / total:.1%}" if total else "n/a (no shares in the window)"
            print(
                f"credited {label}: {shares} shares, Σ difficulty "
                f"{difficulty:.4f} = {total:,.0f} MACs; useful fraction {fraction}"
            )
        if summary is not None:
            u = summary.get("useful", {})
            print(
                f"worker: {summary['shares']}, blob bytes fetched {u.get('blob_bytes')}, "
                f"unit results {u.get('results')}"
            )
        if scanned_before is not None and scanned_after is not None and checks["pass"]:
            mined = scanned_after - scanned_before
            units = int(checks["pass"])
            print(
                f"worker scanned {mined:,} MACs while the product was in the pool "
                f"(exact, not share-sampled): useful fraction {useful / mined:.1%}; "
                f"≈ {mined / useful:.1f} headers mined per unit ({units} units) before "
                f"the next job arrived, of which one header's product is the result"
            )
        unit = min(args.unit, m), min(args.unit, n)
        rounds = 3
        check = rounds * (unit[0] * unit[1] + unit[1] * k + unit[0] * k)
        print(
            f"one Freivalds check of a {unit[0]}×{unit[1]}×{k} unit ({rounds} rounds): "
            f"{check:,} MACs = {check / (unit[0] * unit[1] * k):.2%} of the unit's "
            f"{unit[0] * unit[1] * k:,}"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0 if exact and useful >= m * n * k else 1


if __name__ == "__main__":
    sys.exit(main())
