"""The model-job case (m) of ``tests/bench/useful_link.py``: a synthetic deep model's batches
through a real pool and a real worker over one (shaped) link.

:func:`run_model_case` starts the pool and the worker as :func:`~tests.support.link_bench.
run_case` does, registers the model once (``POST /api/models``, before any window), then
streams batches as a customer would (``POST /api/work/infer?model=NAME``, the next batch
queued while one runs) and reports two windows: the first batch (the worker fetches the
weights) and the stream of the others (the worker holds them). Verified MACs are each
batch's rows × the registered model's ``macs_per_row`` once it is done (from the API; a pool
that counts passed audits in ``matmine_pool_useful_macs_total`` must agree). The worker's
MACs are its own metrics: it counts each model layer it mined as a useful scan
(``matmine_worker_scanned_macs_total{kind="useful"}``, in ``work_macs_total`` too);
``pass_macs`` (the units' padded layer shapes) is in ``extra`` beside them. The pool's
``stratum.max_frame_size`` is raised to hold a share of the widest layer: below that the
pool leases the unit to no session and the batch waits.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import trio

from pool.models.settings import ModelJobsConfig
from pool.models.units import unit_rows
from protocol.address import new_address
from protocol.model import Model, reference_pass, save_model
from protocol.model_messages import layer_submit_bytes
from protocol.model_work import layer_shape
from protocol.workload import Shape
from tests.bench.netns import LOOP_HOST, SIDE_HOST, in_shaped_namespace
from tests.support.link_bench import (
    DONE_POLL,
    Case,
    CaseResult,
    Setup,
    _pool_config,
    _snapshot,
    npy,
)
from tests.support.model_jobs import batch, make_model
from tests.support.processes import PoolProcess, WorkerProcess
from tests.support.running import free_port

MODEL_NAME = "linkbench"


@dataclass(frozen=True)
class ModelCase(Case):
    """A batch of ``m`` rows through ``layers`` layers of ``k × n`` (k = n = the width)."""

    layers: int = 16

    @property
    def macs(self) -> int:
        return self.layers * self.m * self.k * self.n

    @property
    def least_bytes_per_mac(self) -> float:
        """Bytes per MAC if the weights, X and Y (int32: the last layer is raw) crossed once."""
        moved = self.layers * self.k * self.n + self.m * self.k + 4 * self.m * self.n
        return moved / self.macs

    def label(self) -> str:
        return f"{self.m} rows·{self.layers}×[{self.k}×{self.n}]"


def model_case(layers: int, width: int, rows: int, scale: int) -> ModelCase:
    """Case (m): ``rows`` × ``width`` through ``layers`` layers of width², width and rows
    divided by ``scale`` (at least 16)."""
    w, m = max(16, width // scale), max(16, rows // scale)
    return ModelCase("m", m, w, w, 1, layers)


def synthetic_model(case: ModelCase) -> Model:
    """Random int8 weights, ReLU on even layers, requantized but for the raw last layer."""
    return make_model(tuple((case.k, case.n) for _ in range(case.layers)), seed=11)


def unit_shapes(model: Model, rows: int, config: ModelJobsConfig | None = None) -> list[Shape]:
    """The padded layer shapes of every unit of a batch of ``rows`` (units of
    ``pool.models.units.unit_rows`` rows, the last one the rest), at the pool's defaults."""
    config = config or ModelJobsConfig()
    per_unit = unit_rows(model, rows, config.budget_ppm, config.unit_rows)
    sizes = [per_unit] * (rows // per_unit) + ([rows % per_unit] if rows % per_unit else [])
    return [layer_shape(model, i, size, config.r) for size in sizes for i in range(model.depth)]


def pass_macs(model: Model, rows: int, config: ModelJobsConfig | None = None) -> int:
    """MACs the worker computes for a batch of ``rows``: every unit's padded layer shapes."""
    return sum(s.m * s.n * s.k for s in unit_shapes(model, rows, config))


async def _register(client: httpx.AsyncClient, model: Model) -> None:
    r = await client.post("/api/models", params={"name": MODEL_NAME}, content=save_model(model))
    if r.status_code not in (200, 201):
        raise RuntimeError(f"model registration refused: HTTP {r.status_code}: {r.text[:200]}")


async def _infer(client: httpx.AsyncClient, x: np.ndarray) -> tuple[int, int]:
    """Queue the batch ``x`` through the registered model: (batch id, its units)."""
    r = await client.post("/api/work/infer", params={"model": MODEL_NAME}, content=npy(x))
    if r.status_code != 201:
        raise RuntimeError(f"inference refused: HTTP {r.status_code}: {r.text[:200]}")
    return int(r.json()["id"]), int(r.json()["units"])


async def _wait_batch(client: httpx.AsyncClient, item: int, timeout: float) -> np.ndarray:
    status: dict[str, object] = {}
    with trio.move_on_after(timeout):
        while (status := (await client.get(f"/api/work/infer/{item}")).json())["state"] != "done":
            await trio.sleep(DONE_POLL)
    if status.get("state") != "done":
        done, units = status.get("done_units"), status.get("units")
        raise RuntimeError(f"model batch {item} not done after {timeout:g} s: {done}/{units} units")
    r = await client.get(f"/api/work/infer/{item}/result")
    r.raise_for_status()
    return np.load(io.BytesIO(r.content), allow_pickle=False)


async def run_model_case(
    case: ModelCase, setup: Setup, tmp: Path, *, batches: int = 1, check_output: bool = False
) -> list[CaseResult]:
    """Case (m) on a fresh pool and worker (see the module text): the first batch's result
    (the worker fetches the weights), then, for ``batches`` > 1, the stream's (batches 2..N,
    the weights held). With ``check_output`` every batch's Y must equal ``reference_pass``
    (RuntimeError otherwise)."""
    if batches < 1:
        raise ValueError("at least one batch")
    tmp.mkdir(parents=True, exist_ok=True)
    shaped = in_shaped_namespace()
    stratum, http, worker_port = free_port(), free_port(), free_port()
    model = synthetic_model(case)
    # a unit is leased only to a session whose frames hold a layer share (the default
    # 16 KiB holds k ≤ 900 or so): room for the widest layer's
    frame = max(16384, *(layer_submit_bytes(s) for s in unit_shapes(model, case.m)))
    config = _pool_config(tmp, setup, case.k, stratum, http, max_frame_size=frame)
    xs = [batch(case.m, case.k, seed=3 + i) for i in range(batches)]
    pool_url, worker_url = f"http://{LOOP_HOST}:{http}", f"http://{LOOP_HOST}:{worker_port}"
    side = httpx.AsyncHTTPTransport(local_address=SIDE_HOST)  # off the shaped link
    login = f"{new_address()}.linkbench"
    ys: list[np.ndarray] = []
    async with (
        httpx.AsyncClient(base_url=pool_url, transport=side, timeout=600) as client,
        PoolProcess(config, tmp / "pool.log") as pool,
        WorkerProcess(
            f"{LOOP_HOST}:{stratum}",
            login,
            worker_port,
            tmp / "cache",
            tmp / "worker.log",
            models=tmp / "models",
        ),
    ):
        await _register(client, model)  # once, by the customer (off the shaped link)
        with trio.fail_after(60):  # the worker has mined (synthetic work) for a while
            while (await _snapshot(client, pool, pool_url, worker_url, False)).mined_synthetic == 0:
                await trio.sleep(0.2)
        snapshots = [await _snapshot(client, pool, pool_url, worker_url, shaped)]
        # the first batch alone (so no pass of the stream straddles the windows' boundary),
        # then a customer streaming batches: the next one queued while one runs (at most 2)
        queued = [await _infer(client, xs[0])]
        for i in range(batches):
            if i > 0 and i + 1 < batches:
                queued.append(await _infer(client, xs[i + 1]))
            ys.append(await _wait_batch(client, queued[i][0], setup.timeout))
            if i == 0 or i == batches - 1:
                snapshots.append(await _snapshot(client, pool, pool_url, worker_url, shaped))
            if i == 0 and batches > 1:
                queued.append(await _infer(client, xs[1]))
        info = (await client.get(f"/api/models/{MODEL_NAME}")).json()
    if check_output:
        for x, y in zip(xs, ys, strict=True):
            if not np.array_equal(y, reference_pass(model, x).output):
                raise RuntimeError("a batch's Y differs from reference_pass")
    units = queued[0][1]
    computed = pass_macs(model, case.m)
    per_batch = case.m * int(info["macs_per_row"])
    windows = [(1, "first batch: weights fetched")]
    if batches > 1:
        windows.append((batches - 1, f"stream of {batches - 1} more: weights held"))
    pairs = list(itertools.pairwise(snapshots))
    # the pool's count of verified MACs, where it counts model passes: whole batches, all of
    # them in all (a batch may be done before the snapshot that ends the window before it)
    counted = [end.verified - start.verified for start, end in pairs]
    if any(counted) and (
        sum(counted) != batches * per_batch or any(c % per_batch for c in counted)
    ):
        raise RuntimeError(f"the pool counted {counted} verified MACs, batches of {per_batch}")
    results = []
    for (count, how), (start, end), pool_count in zip(windows, pairs, counted, strict=True):
        done = round(pool_count / per_batch) if any(counted) else count
        end = dataclasses.replace(end, verified=start.verified + done * per_batch)
        how = f"model registered once, {units} unit{'s' * (units != 1)}/batch, {how}"
        how += f" ({done} done in the window)" if done != count else ""
        result = CaseResult(case, setup.link_bits, setup.worker_capacity, start, end, how)
        result.extra.update(pass_macs=float(done * computed), units=float(done * units))
        results.append(result)
    return results
