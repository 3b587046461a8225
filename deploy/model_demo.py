"""Model-job demo: a real int8 network on scikit-learn's digits, run by the pool (SPEC §12.12).

1. Trains ``MLPClassifier((256, 256))`` (ReLU) offline on 70 % of the bundled digits
   (``load_digits``: 1797 images of 8×8 pixels 0..16) and quantises it to the §12.12
   format (``deploy/quantise.py``: int8 weights, int32 biases, per-column requantisation,
   int32 logits).
2. Starts a real pool (embedded devnet node, stratum and HTTP on 127.0.0.1) and a real
   BLAS worker in this process, registers the model (``POST /api/models``), infers the test
   split through them (``POST /api/work/infer``) and waits for ``Y``.
3. Asserts the delivered ``Y`` equals ``protocol.model.reference_pass`` bit for bit (exit 1
   otherwise) and prints float vs int8 accuracy, the units, the audit outcomes, the shares
   credited and the pool's useful fraction.

    .venv/bin/pip install -e '.[demo]' && .venv/bin/python deploy/model_demo.py   # < 1 min

Needs scikit-learn (the ``demo`` extra).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio
from prometheus_client import CollectorRegistry

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a script from anywhere

from quantise import quantise_input, quantise_mlp  # noqa: E402

from pool.app import PoolHandle, run_pool  # noqa: E402
from pool.config import PoolConfig, validate  # noqa: E402
from protocol.address import new_address  # noqa: E402
from protocol.model import Model, reference_pass, save_model  # noqa: E402
from worker.app import WorkerApp  # noqa: E402
from worker.backends import open_backends  # noqa: E402
from worker.config import PoolEndpoint, UsefulConfig, WorkerConfig  # noqa: E402
from worker.model_settings import ModelConfig  # noqa: E402

MODEL_NAME = "digits-mlp"


@dataclass
class Digits:
    """The trained float network, its int8 model and the test split."""

    model: Model
    x_test: np.ndarray  # int8 codes, rows × 64
    y_test: np.ndarray
    float_accuracy: float
    train_seconds: float


def train(hidden: tuple[int, ...], test_rows: int | None, seed: int) -> Digits:
    """Fit the MLP on 70 % of the digits, quantise it; the test split (its first
    ``test_rows`` when given)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )
    if test_rows is not None:
        x_test, y_test = x_test[:test_rows], y_test[:test_rows]
    started = time.monotonic()
    net = MLPClassifier(hidden, activation="relu", max_iter=300, random_state=seed)
    net.fit(x_train / 16.0, y_train)
    seconds = time.monotonic() - started
    model = quantise_mlp(net.coefs_, net.intercepts_, x_train / 16.0)
    accuracy = float(net.score(x_test / 16.0, y_test))
    return Digits(model, quantise_input(x_test), np.asarray(y_test), accuracy, seconds)


def pool_config(data_dir: Path, unit_rows: int, budget_ppm: int, difficulty: float) -> PoolConfig:
    """A pool on 127.0.0.1 (ports chosen by the OS) with a devnet node, fixed difficulty."""
    config = PoolConfig()
    config.pool.data_dir = str(data_dir)
    config.stratum.host, config.stratum.port = "127.0.0.1", 0
    config.http.enabled, config.http.host, config.http.port = True, "127.0.0.1", 0
    config.vardiff.enabled = False
    config.pool.start_difficulty = config.vardiff.min_difficulty = difficulty
    config.work.m, config.work.n, config.work.k, config.work.r = 64, 64, 256, 64
    config.work.job_refresh_seconds = 1.0
    config.useful.r = config.models.r = 32
    config.models.unit_rows, config.models.budget_ppm = unit_rows, budget_ppm
    config.chain.node = {"start_difficulty": 1e9, "min_difficulty": 1.0, "maturity": 1}
    config.limits.messages_per_second = 100_000.0  # tiny difficulty: many shares a second
    config.limits.message_burst = 100_000
    config.limits.checks_per_ip_per_second = 100_000.0
    config.limits.check_burst_per_ip = 100_000
    validate(config)
    return config


@dataclass
class Outcome:
    """What the pool delivered and said."""

    y: np.ndarray
    seconds: float
    units: int
    audits: list[tuple[bool, str]] = field(default_factory=list)
    credited: int = 0
    voided: int = 0
    pool: dict[str, Any] = field(default_factory=dict)
    difficulty: float = 0.0


async def _wait_done(client: httpx.AsyncClient, item: int) -> np.ndarray:
    while (await client.get(f"/api/work/infer/{item}")).json()["state"] != "done":
        await trio.sleep(0.1)
    answer = await client.get(f"/api/work/infer/{item}/result")
    answer.raise_for_status()
    return np.load(io.BytesIO(answer.content), allow_pickle=False)


async def _through_pool(handle: PoolHandle, model: Model, x: np.ndarray, timeout: float) -> Outcome:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
        added = await client.post(
            "/api/models", params={"name": MODEL_NAME}, content=save_model(model)
        )
        if added.status_code not in (200, 201):
            raise SystemExit(f"model add refused: {added.status_code} {added.text}")
        npy = io.BytesIO()
        np.save(npy, x, allow_pickle=False)
        started = time.monotonic()
        queued = await client.post(
            "/api/work/infer", params={"model": MODEL_NAME}, content=npy.getvalue()
        )
        if queued.status_code != 201:
            raise SystemExit(f"infer refused: {queued.status_code} {queued.text}")
        print(f"  batch {queued.json()['id']}: {len(x)} rows in {queued.json()['units']} units")
        with trio.move_on_after(timeout) as waited:
            y = await _wait_done(client, queued.json()["id"])
        if waited.cancelled_caught:
            raise SystemExit(f"the batch was not done after {timeout:g} s")
        outcome = Outcome(y, time.monotonic() - started, queued.json()["units"])
        await trio.sleep(0.5)  # let the share log commit the credited shares
        outcome.pool = (await client.get("/api/pool")).json()
    desk = handle.context.models
    if desk is None:
        raise SystemExit("the pool has model jobs off")
    leases = desk.leases.values()
    outcome.audits = [lease.verdict for lease in leases if lease.verdict is not None]
    outcome.credited = sum(len(lease.held) for lease in leases if lease.verdict == (True, ""))
    outcome.voided = sum(lease.voided for lease in leases)
    return outcome


async def run_demo(workdir: Path, model: Model, x: np.ndarray, args: argparse.Namespace) -> Outcome:
    """Pool and worker in this trio run; the batch through them."""
    config = pool_config(workdir / "pool", args.unit_rows, args.budget_ppm, args.difficulty)
    async with trio.open_nursery() as nursery:
        handle: PoolHandle = await nursery.start(run_pool, config)
        worker_config = WorkerConfig(
            pools=(PoolEndpoint("127.0.0.1", handle.stratum_port),),
            login=f"{new_address()}.digits",
            useful=UsefulConfig(enabled=True, cache_dir=str(workdir / "blobs")),
            model=ModelConfig(cache_dir=str(workdir / "models")),
        ).validate()
        backends = open_backends("blas", None, threads=args.threads)
        worker = WorkerApp(worker_config, backends, CollectorRegistry(), status=False)
        await nursery.start(worker.run)
        outcome = await _through_pool(handle, model, x, args.timeout)
        outcome.difficulty = args.difficulty
        nursery.cancel_scope.cancel()
    return outcome


def report(digits: Digits, outcome: Outcome) -> bool:
    """Print the results; True when ``Y`` is ``reference_pass``'s bit for bit."""
    model, x = digits.model, digits.x_test
    expected = reference_pass(model, x).output
    exact = outcome.y.dtype == expected.dtype and np.array_equal(outcome.y, expected)
    int8_accuracy = float(np.mean(outcome.y.argmax(axis=1) == digits.y_test))
    print(f"\ndelivered Y: {outcome.y.shape} {outcome.y.dtype} in {outcome.seconds:.1f} s")
    print(f"Y equals the local reference_pass bit for bit: {exact}")
    print(
        f"test accuracy ({len(x)} images): float {digits.float_accuracy:.4f}, "
        f"int8 through the pool {int8_accuracy:.4f}"
    )
    passed = sum(ok for ok, _ in outcome.audits)
    failed = [why for ok, why in outcome.audits if not ok]
    reasons = f" ({'; '.join(failed)})" if failed else ""
    print(f"units: {outcome.units}; audits passed {passed}, failed {len(failed)}{reasons}")
    print(f"layer shares credited after their audits: {outcome.credited} (voided {outcome.voided})")
    useful = len(x) * model.macs_per_row
    layer_work = outcome.credited * outcome.difficulty * 2.0**32
    print(
        f"useful MACs of the batch {useful:,}; its layer shares prove {layer_work:,.0f} MACs "
        f"(difficulty {outcome.difficulty:g} · 2^32 each): useful fraction "
        f"{useful / layer_work:.1%}"
        if layer_work
        else "no layer share credited"
    )
    stats = outcome.pool.get("useful") or {}
    accepted = outcome.pool.get("accepted_work_macs") or 0.0
    print(
        f"pool (/api/pool, whole run, synthetic jobs too): accepted work {accepted:,.0f} MACs, "
        f"verified useful {stats.get('useful_macs') or 0:,} MACs, useful fraction "
        f"{100 * (stats.get('useful_fraction') or 0.0):.1f}%"
    )
    return exact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="256,256", help="hidden widths (default 256,256)")
    parser.add_argument("--rows", type=int, help="infer only the first ROWS test images")
    parser.add_argument("--unit-rows", type=int, default=128, help="rows of a unit wanted")
    parser.add_argument(
        "--budget-ppm", type=int, default=10**6, help="the audit's cost bound (a small batch "
        "needs a loose one: units are at least the audit's m_min rows)",
    )  # fmt: skip
    parser.add_argument(
        "--difficulty", type=float, default=2.0**-14, help="fixed share difficulty (a "
        "share stands for difficulty·2^32 MACs; default 2^-14)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="BLAS worker threads")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds for the batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the pool's and worker's files here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")

    hidden = tuple(int(width) for width in args.hidden.split(","))
    digits = train(hidden, args.rows, args.seed)
    model = digits.model
    print(
        f"model: MLP 64→{'→'.join(map(str, hidden))}→10 (ReLU), trained in "
        f"{digits.train_seconds:.1f} s; int8 model {model.model_id.hex()[:16]}…, "
        f"{model.macs_per_row:,} MACs a row"
    )
    with tempfile.TemporaryDirectory(prefix="matmine-model-demo-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        print(f"starting a pool and a BLAS worker on 127.0.0.1 (files in {workdir})")
        outcome = trio.run(run_demo, workdir, model, digits.x_test, args)
    return 0 if report(digits, outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
