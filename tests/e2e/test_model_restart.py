"""Model batches survive a pool restart: the real pool as a process (``pool.cli serve``)
killed with SIGKILL and started again on the same data dir. A batch done before the kill
keeps its ``Y`` and its receipt; a batch whose unit was leased (layer 0's shares held,
the worker stuck on layer 1) at the kill is leased again after it (to another worker) and
done, with only the
new lease's audit and shares on its receipt (the held ones were never credited)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from protocol.address import new_address
from protocol.model import reference_pass
from protocol.model_work import weight_roots
from tests.support.model_jobs import batch, make_model
from tests.support.model_pool import infer, model_settings, wait_done
from tests.support.processes import PoolProcess, pool_toml
from tests.support.running import WrappedBackend, free_port, running_worker
from tests.support.useful_pool import blas, useful_settings
from worker.config import PoolEndpoint

pytestmark = pytest.mark.slow


class StuckBackend(WrappedBackend):
    """Blocks (once) when it starts the layer whose weights have ``b_root``."""

    def __init__(self, inner: Any, b_root: bytes) -> None:
        super().__init__(inner)
        self.b_root, self.reached, self.release = b_root, threading.Event(), threading.Event()

    def prepare(self, workload: Any) -> None:
        if workload.b_root == self.b_root and not self.reached.is_set():
            self.reached.set()
            self.release.wait(60)
        super().prepare(workload)


def config_file(tmp: Path, stratum: int, http: int) -> Path:
    path = tmp / "pool.toml"
    path.write_text(
        pool_toml(
            {
                "stratum": {"host": "127.0.0.1", "port": stratum},
                "http": {"enabled": True, "host": "127.0.0.1", "port": http},
                "pool": {"data_dir": str(tmp / "pool"), "start_difficulty": 1e-7},
                "vardiff": {"enabled": False, "min_difficulty": 1e-7},
                "work": {"m": 64, "n": 64, "k": 256, "r": 64, "job_refresh_seconds": 1.0},
                "chain.node": {"start_difficulty": 1e9, "min_difficulty": 1.0},
                "useful": {"r": 32},
                "models": {"r": 32, "unit_rows": 32, "budget_ppm": 10**6},
                "limits": {"messages_per_second": 1e5, "message_burst": 100000},
            }
        )
    )
    return path


async def test_batches_continue_after_the_pool_is_killed(tmp_path: Path) -> None:
    model = make_model()
    xa, xb = batch(64, model.input_width, seed=1), batch(32, model.input_width, seed=2)
    stratum, http = free_port(), free_port()
    config = config_file(tmp_path, stratum, http)
    endpoint = [PoolEndpoint("127.0.0.1", stratum)]
    login = {"login": f"{new_address()}.w"}
    stuck = StuckBackend(blas(), weight_roots(model, 32)[1])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", timeout=30) as client:
        pool = PoolProcess(config, tmp_path / "pool1.log")
        async with pool:
            async with running_worker(
                endpoint, [blas()], useful=useful_settings(tmp_path / "a"),
                model=model_settings(tmp_path / "a"), **login,
            ):  # fmt: skip
                a = await infer(client, model, xa)
                ya = await wait_done(client, a, 60)
            receipt_a = (await client.get(f"/api/work/infer/{a}/receipt")).json()
            async with running_worker(
                endpoint, [stuck], useful=useful_settings(tmp_path / "b"),
                model=model_settings(tmp_path / "b"), **login,
            ):  # fmt: skip
                b = await infer(client, model, xb)
                with trio.fail_after(60):  # layer 0 mined and its shares held, then stuck
                    while not stuck.reached.is_set():
                        await trio.sleep(0.05)
                await trio.sleep(0.5)
                assert pool.process is not None
                pool.process.kill()
                await pool.process.wait()
                stuck.release.set()
        async with (
            PoolProcess(config, tmp_path / "pool2.log"),
            running_worker(
                endpoint, [blas()], useful=useful_settings(tmp_path / "c"),
                model=model_settings(tmp_path / "c"), **login,
            ),
        ):  # fmt: skip
            r = await client.get(f"/api/work/infer/{a}/result")
            assert r.status_code == 200
            assert np.array_equal(np.load(io.BytesIO(r.content)), ya)
            assert (await client.get(f"/api/work/infer/{a}/receipt")).json() == receipt_a
            yb = await wait_done(client, b, 60)
            receipt_b = (await client.get(f"/api/work/infer/{b}/receipt")).json()
            c = await infer(client, model, xb)
    assert np.array_equal(ya, reference_pass(model, xa).output)
    assert np.array_equal(yb, reference_pass(model, xb).output)
    assert receipt_a["state"] == "done" and len(receipt_a["units"]) == 2
    (unit,) = receipt_b["units"]
    (audit,) = unit["audits"]  # the lease of the killed pool was never judged
    assert audit["outcome"] == "passed" and audit["at"] >= receipt_b["created"]
    assert unit["shares"] == audit["shares"] == receipt_b["shares"] > 0
    assert c > b > a  # an id is never given twice
