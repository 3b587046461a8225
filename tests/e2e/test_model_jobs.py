"""Model jobs end to end on loopback: the pool's inference API, model data plane and desk
(real HTTP on 127.0.0.1) and the worker's model job runner on the BLAS backend: a 3-layer
model registered, a batch inferred, shares checked by ``check_layer_share`` and held until
the audit, ``Y`` equal to ``reference_pass`` bit for bit; a worker that fakes one row of
one layer is caught by the audit and its shares are voided.

The session side is the test itself here: it leases a unit from the desk and sends the
worker's submits to ``ModelDesk.check_share`` (the stratum hook is not part of this slice).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from starlette.applications import Starlette

from pool.http_api import serve_http
from pool.models.api import create_model_routes
from pool.models.desk import ModelDesk
from pool.models.registry import ModelRegistry
from pool.models.routes import DATA_PREFIX, create_infer_routes
from pool.models.settings import ModelJobsConfig
from pool.useful.cli import main as work_main
from protocol.hashing import H
from protocol.header import coinbase_parts
from protocol.messages import Notify, Submit
from protocol.model import Model, reference_pass, save_model
from tests.support.model_jobs import EN1, POOL_ADDRESS, batch, make_model
from worker.backends.blas import BlasBackend
from worker.model_cache import ModelCache
from worker.model_job import ModelJobRunner

DIFFICULTY = 3e-5  # about a quarter of the tickets of a k' = 128 layer meet it


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def job_of(work, job_id: str, difficulty: float = DIFFICULTY) -> Notify:
    c1, c2 = coinbase_parts(1, 50 * 10**8, POOL_ADDRESS, "test", len(EN1))
    return Notify(
        job_id, True, 1, 1, b"\x11" * 32, c1, c2, 1_700_000_000, 0x1F010000, difficulty, work
    )


class FakingBlas(BlasBackend):
    """A cheating worker: after mining layer ``layer`` it alters row ``row`` of the product
    (so of ``A_{layer+1}``), consistently committed."""

    def __init__(self, layer: int, row: int) -> None:
        super().__init__(threads=1)
        self.layer, self.row, self.prepared = layer, row, -1

    def prepare(self, workload):
        self.prepared += 1
        super().prepare(workload)

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        result = super().scan(header, share_target, should_stop, want_product)
        if self.prepared % 3 == self.layer and result.product is not None:
            result.product[self.row] += 1 << 20
        return result


class Pool:
    """The pool's model side on a real socket, and its credited / escalated records."""

    def __init__(self, tmp: Path, config: ModelJobsConfig, clock=time.time) -> None:
        self.registry = ModelRegistry(tmp / "pool")
        self.limiter = trio.CapacityLimiter(2)
        self.failed: list[tuple[str, str]] = []
        self.desk = ModelDesk(
            config,
            self.limiter,
            pool_secret=b"\x07" * 32,
            on_failed=lambda s, why: self.failed.append((s, why)),
            clock=clock,
        )
        self.credited: list[object] = []
        self.on_ack: Callable[[int], object] = lambda layer: None  # a share was accepted
        self.base = ""

    async def credit(self, records: list[object]) -> None:
        self.credited.extend(records)

    def app(self) -> Starlette:
        return Starlette(
            routes=create_infer_routes(self.desk, self.registry, self.limiter, self.credit)
            + create_model_routes(self.registry, self.limiter)
        )

    async def mine_one(
        self, session: str, runner: ModelJobRunner, job_id: str, difficulty: float = DIFFICULTY
    ):
        """Lease a unit to ``session`` and have the worker do it; (lease, result, acks)."""
        lease = self.desk.lease(session, self.base + DATA_PREFIX)
        assert lease is not None
        job = job_of(lease.work, job_id, difficulty)
        acks: list[tuple[int, bool]] = []

        async def submit(message: Submit) -> None:
            record = (session, message)
            share = await self.desk.check_share(lease.id, job, EN1, message, lambda _: record)
            acks.append((share.head.layer, any(r is record for r in self.credited)))
            self.on_ack(share.head.layer)

        result = await runner.run(job, submit)
        return lease, result, acks


@asynccontextmanager
async def serving(pool: Pool) -> AsyncIterator[None]:
    """``pool``'s HTTP app on a real socket (``pool.base``) until the block exits."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        yield
        nursery.cancel_scope.cancel()
    pool.registry.close()


def runner(tmp: Path, backend: BlasBackend, name: str) -> ModelJobRunner:
    cache = ModelCache(tmp / name / "models", 1 << 26, 1 << 26)
    return ModelJobRunner(backend, cache, trio.CapacityLimiter(1), EN1, check_products=False)


async def test_a_batch_is_inferred_audited_and_credited(tmp_path: Path) -> None:
    model = make_model()
    x = batch(40, model.input_width)
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    worker = runner(tmp_path, BlasBackend(threads=1), "w1")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=pool.base) as client:
            r = await client.post("/api/models", params={"name": "mlp3"}, content=save_model(model))
            assert r.status_code == 201, r.text
            r = await client.post("/api/work/infer", params={"model": "mlp3"}, content=npy(x))
            assert r.status_code == 201, r.text
            item = r.json()["id"]
            assert r.json()["units"] == 2
            r = await client.get(f"/api/work/infer/{item}/result")
            assert r.status_code == 409
            served = []
            for n in range(2):
                before = pool.desk.served_bytes
                lease, result, acks = await pool.mine_one("s1", worker, f"job.{n}")
                served.append(pool.desk.served_bytes - before)
                assert result.verified, result.reason
                assert acks and not any(credited_then for _, credited_then in acks)
                layers = [layer for layer, _ in acks]
                assert layers == sorted(layers) and set(layers) <= {0, 1, 2}
                assert len(lease.held) == result.shares == len(acks)
                held = [h.record for h in lease.held]
                assert all(any(r is h for r in pool.credited) for h in held)  # after the audit
            x_bytes = 20 * model.input_width
            blob_bytes = sum(len(b) for b in pool.desk._weights[model.model_id].blobs.values())
            assert served == [x_bytes + blob_bytes, x_bytes]  # the weights went out once
            assert worker.cache.stats.fetches == 1
            r = await client.get(f"/api/work/infer/{item}")
            assert r.json()["state"] == "done"
            r = await client.get(f"/api/work/infer/{item}/result")
            assert r.status_code == 200
            y = np.load(io.BytesIO(r.content), allow_pickle=False)
            want = reference_pass(model, x).output
            assert y.dtype == want.dtype and np.array_equal(y, want)
        nursery.cancel_scope.cancel()
    assert not pool.failed
    pool.registry.close()


@pytest.mark.parametrize("layer", [0, 1, 2])
async def test_a_faked_row_is_caught_and_its_shares_voided(tmp_path: Path, layer: int) -> None:
    model = make_model()
    x = batch(20, model.input_width)
    config = ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6, challenges=4000)
    pool = Pool(tmp_path, config)
    cheat = runner(tmp_path, FakingBlas(layer, row=7), "cheat")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        model_name = "mlp3"
        pool.registry.add(model_name, save_model(model))
        item = pool.desk.queue_batch(model_name, model, x)
        lease, result, acks = await pool.mine_one("cheat", cheat, "job.c")
        assert acks, "the cheat's shares passed check_layer_share and were held"
        assert not result.verified
        assert "row 7" in result.reason and f"layer {layer}" in result.reason
        assert lease.voided == len(acks) and not lease.held and not pool.credited
        assert pool.failed == [("cheat", result.reason)]
        assert item.units[0].state == "queued"
        assert pool.desk.lease("cheat", pool.base + DATA_PREFIX) is None  # never again
        honest = runner(tmp_path, BlasBackend(threads=1), "honest")
        lease, result, acks = await pool.mine_one("honest", honest, "job.h")
        assert result.verified and item.done
        assert np.array_equal(item.output(), reference_pass(model, x).output)
        nursery.cancel_scope.cancel()
    pool.registry.close()


async def test_the_cli_infers_a_batch_and_writes_y(tmp_path: Path) -> None:
    model = make_model()
    x = batch(30, model.input_width, seed=3)
    (tmp_path / "x.npy").write_bytes(npy(x))
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=16, budget_ppm=10**6))
    pool.registry.add("mlp3", save_model(model))
    worker = runner(tmp_path, BlasBackend(threads=1), "w")
    out = tmp_path / "y.npy"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        argv = ["work", "infer", "--model", "mlp3", str(tmp_path / "x.npy"), "--wait"]
        argv += ["-o", str(out), "--poll", "0.05", "--api", pool.base, "--timeout", "60"]
        codes: list[int] = []

        async def cli() -> None:
            codes.append(await trio.to_thread.run_sync(work_main, argv))

        nursery.start_soon(cli)
        with trio.fail_after(30):
            while not pool.desk.items:
                await trio.sleep(0.01)
        for n in range(2):
            _, result, _ = await pool.mine_one("s1", worker, f"job.{n}")
            assert result.verified, result.reason
        with trio.fail_after(30):
            while not codes:
                await trio.sleep(0.01)
        assert codes == [0]
        y = np.load(out, allow_pickle=False)
        assert np.array_equal(y, reference_pass(model, x).output)
        bad = await trio.to_thread.run_sync(
            work_main,
            ["work", "infer", "--model", "nope", str(tmp_path / "x.npy"), "--api", pool.base],
        )
        assert bad == 1
        nursery.cancel_scope.cancel()
    pool.registry.close()


class SwitchingRunner(ModelJobRunner):
    """A cheat that mines honestly, then delivers another ``a_root_1`` than its shares'."""

    async def _deliver(self, http, job, source, model, outcome, sent):
        outcome.a_roots = (H(b"another activation"), *outcome.a_roots[1:])
        return await super()._deliver(http, job, source, model, outcome, sent)


async def test_shares_on_another_a_root_than_the_delivered_one_are_void(tmp_path: Path) -> None:
    model = make_model()
    x = batch(20, model.input_width)
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    cache = ModelCache(tmp_path / "cheat", 1 << 26, 1 << 26)
    cheat = SwitchingRunner(
        BlasBackend(threads=1), cache, trio.CapacityLimiter(1), EN1, check_products=False
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        item = pool.desk.queue_batch("mlp3", model, x)
        lease, result, acks = await pool.mine_one("cheat", cheat, "job.s", difficulty=1e-7)
        assert 1 in {layer for layer, _ in acks}  # every ticket is a share: layer 1 has some
        assert not result.verified and "layer 1's shares were mined on another a_root" in (
            result.reason
        )
        assert lease.voided == len(acks) and not pool.credited
        assert pool.failed == [("cheat", result.reason)] and item.units[0].state == "queued"
        nursery.cancel_scope.cancel()
    pool.registry.close()


def units_of_20_rows(tmp: Path, rows: int) -> tuple[Model, np.ndarray, Pool, ModelJobRunner]:
    """A model, a batch of ``rows``, a pool that cuts it into units of 20 rows, a worker."""
    model = make_model()
    pool = Pool(tmp, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    return model, batch(rows, model.input_width), pool, runner(tmp, BlasBackend(threads=1), "w1")


async def test_a_delivered_unit_frees_its_session_for_the_next_while_its_audit_runs(
    tmp_path: Path,
) -> None:
    model, x, pool, worker = units_of_20_rows(tmp_path, rows=40)
    seen: list[tuple[str, object, object]] = []  # at each delivery: session, next lease, first

    def delivered(session: str) -> None:  # the pool's hook: the session's next job now
        first = pool.desk.leases[min(pool.desk.leases)]
        seen.append((session, pool.desk.lease(session, pool.base + DATA_PREFIX), first.verdict))

    pool.desk.on_delivered = delivered
    async with serving(pool):
        item = pool.desk.queue_batch("mlp3", model, x)
        first, result, _ = await pool.mine_one("s1", worker, "job.1")
        assert result.verified, result.reason
        (session, second, verdict), *_ = seen
        # delivered, not yet judged: the session had leased the other unit already
        assert session == "s1" and verdict is None and second is not None
        assert second is not first and second.unit is item.units[1]
        assert pool.desk.holds("s1") and pool.desk.lease("s1", pool.base + DATA_PREFIX) is second
        again, result, _ = await pool.mine_one("s1", worker, "job.2")  # its current lease
        assert again is second and result.verified and item.done
        assert not pool.desk.holds("s1") and len(seen) == 2 and seen[1][1] is None
        assert np.array_equal(item.output(), reference_pass(model, x).output)
    assert not pool.failed


async def test_a_session_that_leaves_before_its_delivered_units_verdict_ends_it(
    tmp_path: Path,
) -> None:
    model, x, pool, worker = units_of_20_rows(tmp_path, rows=20)
    pool.desk.on_delivered = pool.desk.release_session  # it leaves right after delivering
    async with serving(pool):
        item = pool.desk.queue_batch("mlp3", model, x)
        lease, result, acks = await pool.mine_one("s1", worker, "job.1")
        # as before the next job came at delivery: stale, not counted against it
        assert acks and not result.verified and result.reason == "the session left"
        assert lease.voided == len(acks) and not pool.credited and not pool.failed
        assert item.units[0].state == "queued"


async def test_a_finished_batch_is_forgotten_after_keep_seconds(tmp_path: Path) -> None:
    now = [1000.0]
    model = make_model()
    x = batch(20, model.input_width)
    config = ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6, keep_seconds=60)
    pool = Pool(tmp_path, config, clock=lambda: now[0])
    worker = runner(tmp_path, BlasBackend(threads=1), "w")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        item = pool.desk.queue_batch("mlp3", model, x)
        lease, result, _ = await pool.mine_one("s", worker, "job.k")
        assert result.verified and item.done
        now[0] += 59
        assert pool.desk.lease("s", pool.base) is None and item.id in pool.desk.items
        now[0] += 2
        assert pool.desk.lease("s", pool.base) is None
        assert item.id not in pool.desk.items and lease.id not in pool.desk.leases
        async with httpx.AsyncClient(base_url=pool.base) as client:
            r = await client.get(f"/api/work/infer/{item.id}/result")
            assert r.status_code == 404
        nursery.cancel_scope.cancel()
    pool.registry.close()


class WaitingBlas(BlasBackend):
    """Its scan of the last layer (the ``prepared``-th workload) waits until a share of
    layer 0 has been acknowledged by the pool, and notes whether it was."""

    def __init__(self, acked: threading.Event) -> None:
        super().__init__(threads=1)
        self.acked, self.prepared, self.seen_during_last_layer = acked, 0, None

    def prepare(self, workload):
        self.prepared += 1
        super().prepare(workload)

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        if self.prepared == 3:
            self.seen_during_last_layer = self.acked.wait(10)
        return super().scan(header, share_target, should_stop, want_product)


async def test_layer_shares_go_out_while_later_layers_run(tmp_path: Path) -> None:
    model = make_model()
    x = batch(20, model.input_width)
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    acked = threading.Event()
    backend = WaitingBlas(acked)
    worker = runner(tmp_path, backend, "w")
    pool.on_ack = lambda layer: acked.set() if layer == 0 else None
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        pool.desk.queue_batch("mlp3", model, x)
        _, result, _ = await pool.mine_one("s", worker, "job.w", difficulty=1e-7)
        assert result.verified and backend.seen_during_last_layer is True
        nursery.cancel_scope.cancel()
    pool.registry.close()


async def test_a_batch_whose_layer_shares_no_session_could_send_is_refused(
    tmp_path: Path,
) -> None:
    """A layer share must fit the sessions' frames: a batch that could never be mined is
    refused when it is submitted, with the size to raise the limit to (not queued forever)."""
    model = make_model()
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    pool.desk.max_frame_size = 1000  # below any layer share of this model
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.post("/api/models", params={"name": "mlp3"}, content=save_model(model))
            assert r.status_code == 201, r.text
            x = npy(batch(40, model.input_width))
            r = await client.post("/api/work/infer", params={"model": "mlp3"}, content=x)
            assert r.status_code == 422, r.text
            assert "over the pool's stratum.max_frame_size (1000)" in r.json()["error"]
            assert pool.desk.items == {}
        nursery.cancel_scope.cancel()
