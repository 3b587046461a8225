"""A model batch's receipt and the audits' metrics through the real pool and the real
worker on loopback: the CLI queues a batch with ``--wait --receipt``, the receipt's roots
are the honest pass's and the weights', its shares are those the ledger credited, the
output hash is ``Y``'s; the audits' outcomes and cost are on ``/metrics`` and in
``/api/pool``; a faked row's audit shows as failed, with its shares voided."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry

from pool.http_api import serve_http
from pool.metrics import ModelMetrics
from pool.models.routes import DATA_PREFIX
from pool.models.settings import ModelJobsConfig
from pool.useful.cli import main as work_main
from protocol.audit import audit_cost
from protocol.hashing import H
from protocol.model import output_bytes, reference_pass, save_model
from protocol.model_delivery import encode_delivery
from protocol.model_work import weight_roots
from tests.e2e.test_model_jobs import Pool
from tests.support.model_jobs import EN1, Unit, batch, make_model
from tests.support.model_pool import failed_cheat, model_pool, model_settings
from tests.support.processes import metric, scrape
from tests.support.running import running_worker
from tests.support.useful_pool import blas, npy, useful_settings
from worker.backends.blas import BlasBackend
from worker.model_cache import ModelCache
from worker.model_job import ModelJobRunner


async def test_the_receipt_names_the_roots_the_credited_shares_and_the_output(
    tmp_path: Path,
) -> None:
    model = make_model()
    x = batch(64, model.input_width, seed=11)
    (tmp_path / "x.npy").write_bytes(npy(x))
    receipt_file, y_file = tmp_path / "receipt.json", tmp_path / "y.npy"
    async with (
        model_pool(tmp_path / "pool") as pool,
        running_worker(
            [pool.endpoint],
            [blas()],
            useful=useful_settings(tmp_path),
            model=model_settings(tmp_path),
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        r = await client.post("/api/models", params={"name": "mlp3"}, content=save_model(model))
        assert r.status_code == 201, r.text
        started = time.time()
        argv = ["work", "infer", "--model", "mlp3", str(tmp_path / "x.npy"), "--wait"]
        argv += ["-o", str(y_file), "--receipt", str(receipt_file), "--poll", "0.05"]
        argv += ["--api", f"http://127.0.0.1:{pool.handle.http_port}", "--timeout", "60"]
        with trio.fail_after(90):
            code = await trio.to_thread.run_sync(work_main, argv)
        assert code == 0
        receipt = json.loads(receipt_file.read_text())
        assert receipt == (await client.get(f"/api/work/infer/{receipt['id']}/receipt")).json()
        leases = [le for le in pool.handle.context.models.leases.values() if le.held]
        records = [held.record for lease in leases for held in lease.held]
        assert len(records) == receipt["shares"] > 0
        h = pool.handle
        with trio.fail_after(10):  # every share the receipt names was credited: none is new
            while await trio.to_thread.run_sync(h.ledger.insert_shares, records):
                await trio.sleep(0.05)
        samples = await scrape(client, "/metrics")
        stats = (await client.get("/api/pool")).json()["useful"]["models"]

    y = reference_pass(model, x).output
    assert receipt["state"] == "done" and receipt["rows"] == 64 and receipt["model"] == "mlp3"
    assert receipt["model_id"] == model.model_id.hex()
    assert receipt["output_hash"] == H(output_bytes(model, y)).hex()
    assert receipt["x_hash"] == H(x.tobytes()).hex()
    b_roots = [root.hex() for root in weight_roots(model, 32)]
    assert [layer["b_root"] for layer in receipt["layers"]] == b_roots
    assert started <= receipt["created"] <= receipt["finished"] <= time.time()
    assert len(receipt["units"]) == 2
    total_cost = 0
    for unit in receipt["units"]:
        rows = x[unit["start"] : unit["start"] + unit["rows"]]
        honest = Unit(model, rows, 32)
        assert unit["state"] == "done"
        assert [layer["a_root"] for layer in unit["layers"]] == [
            w.a_root.hex() for w in honest.workloads
        ]
        assert [layer["b_root"] for layer in unit["layers"]] == b_roots
        assert (
            unit["output_hash"] == H(output_bytes(model, y[unit["start"] :][: unit["rows"]])).hex()
        )
        headers = [h for layer in unit["layers"] for h in layer["headers"]]
        assert headers and all(h["shares"] >= 1 and h["difficulty"] > 0 for h in headers)
        assert sum(h["shares"] for h in headers) == unit["shares"]
        (lease,) = [le for le in leases if le.unit.unit_id.hex() == unit["unit_id"]]
        credited = [held.record.difficulty for held in lease.held]
        assert sum(h["shares"] * h["difficulty"] for h in headers) == pytest.approx(sum(credited))
        (audit,) = unit["audits"]
        assert audit["outcome"] == "passed" and audit["reason"] == ""
        assert audit["shares"] == unit["shares"]
        assert audit["challenges"] == len(lease.challenges) > 0
        assert audit["cost_macs"] == audit_cost(model, lease.challenges) > 0
        assert receipt["created"] <= audit["at"] <= receipt["finished"]
        total_cost += audit["cost_macs"]
    assert metric(samples, "matmine_pool_model_audits_total", outcome="passed") == 2
    assert metric(samples, "matmine_pool_model_audits_total", outcome="failed") == 0
    assert metric(samples, "matmine_pool_model_audit_macs_total") == total_cost
    assert metric(samples, "matmine_pool_model_audit_seconds_count") == 2
    assert metric(samples, "matmine_pool_database_bytes", database="models_queue") > 0
    assert stats["audits"] == {"passed": 2, "failed": 0, "unanswered": 0}
    assert stats["audit_macs"] == total_cost
    assert stats["audit_seconds"] > 0 and stats["audit_challenges"] > 0
    assert stats["audit_cost_ppm"] == total_cost * 10**6 / (64 * model.macs_per_row)


async def test_a_failed_audit_is_on_the_receipt_and_the_metrics(tmp_path: Path) -> None:
    model = make_model()
    x = batch(32, model.input_width, seed=5)
    async with (
        model_pool(tmp_path / "pool") as pool,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        desk = pool.handle.context.models
        async with failed_cheat(pool, client, tmp_path, model, x) as (item, _):
            pass
        receipt = (await client.get(f"/api/work/infer/{item}/receipt")).json()
        samples = await scrape(client, "/metrics")
        stats = (await client.get("/api/pool")).json()["useful"]["models"]
        (lease,) = desk.leases.values()

    assert receipt["state"] == "running" and receipt["output_hash"] is None
    assert receipt["shares"] == 0  # nothing credited
    (unit,) = receipt["units"]
    assert unit["state"] == "queued" and unit["output_hash"] is None
    assert all(layer["a_root"] is None and not layer["headers"] for layer in unit["layers"])
    (audit,) = unit["audits"]
    assert audit["outcome"] == "failed" and "row 9" in audit["reason"]
    assert audit["shares"] == lease.voided > 0
    assert audit["challenges"] == len(lease.challenges)
    assert audit["cost_macs"] == audit_cost(model, lease.challenges)
    assert metric(samples, "matmine_pool_model_audits_total", outcome="failed") == 1
    assert metric(samples, "matmine_pool_model_audits_total", outcome="passed") == 0
    assert stats["audits"]["failed"] == 1


async def test_a_receipt_of_no_such_batch_is_a_404(tmp_path: Path) -> None:
    async with (
        model_pool(tmp_path / "pool") as pool,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
    ):
        for path in ("/api/work/infer/7/receipt", "/api/work/infer/x/receipt"):
            r = await client.get(path)
            assert r.status_code == 404 and "no inference batch" in r.json()["error"]


class SilentRunner(ModelJobRunner):
    """A worker that delivers its unit and never answers the audit."""

    async def _deliver(self, http, job, source, model, outcome, sent):
        body = encode_delivery(model, outcome.a_roots, outcome.output)
        answer = await http.put(
            f"{source.data}/results/{source.unit.hex()}",
            params={"offset": "0"},
            content=body,
            headers={"Authorization": f"Bearer {source.token}", "X-Result-Hash": H(body).hex()},
        )
        assert answer.json()["delivered"]
        return None


async def test_an_unanswered_audit_is_on_the_receipt_and_cost_nothing(tmp_path: Path) -> None:
    now = [1000.0]
    model = make_model()
    x = batch(20, model.input_width)
    config = ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6, audit_seconds=60)
    pool = Pool(tmp_path, config, clock=lambda: now[0])
    metrics = ModelMetrics(CollectorRegistry())
    pool.desk.receipts.listeners.append(metrics.audited)
    cache = ModelCache(tmp_path / "models", 1 << 26, 1 << 26)
    silent = SilentRunner(BlasBackend(threads=1), cache, trio.CapacityLimiter(1), EN1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        item = pool.desk.queue_batch("mlp3", model, x)
        lease, _, acks = await pool.mine_one("silent", silent, "job.s")
        assert acks and lease.record is not None and lease.challenges
        now[0] += 61  # past the audit's deadline: the next lease judges it
        assert pool.desk.lease("other", pool.base + DATA_PREFIX) is not None
        async with httpx.AsyncClient(base_url=pool.base) as client:
            receipt = (await client.get(f"/api/work/infer/{item.id}/receipt")).json()
        nursery.cancel_scope.cancel()
    pool.registry.close()
    (unit,) = receipt["units"]
    (audit,) = unit["audits"]
    assert audit == {
        "outcome": "unanswered",
        "reason": "no audit answer by the deadline",
        "challenges": len(lease.challenges),
        "cost_macs": 0,
        "at": 1061.0,
        "shares": len(acks),
    }
    assert receipt["created"] == 1000.0 and receipt["shares"] == 0
    assert metrics.stats()["audits"] == {"passed": 0, "failed": 0, "unanswered": 1}
    assert metrics.stats()["audit_macs"] == 0 and metrics.stats()["audit_cost_ppm"] is None


async def test_the_cli_writes_a_running_receipt_or_says_why_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model()
    (tmp_path / "x.npy").write_bytes(npy(batch(20, model.input_width)))
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    pool.registry.add("mlp3", save_model(model))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        argv = ["work", "infer", "--model", "mlp3", str(tmp_path / "x.npy")]
        argv += ["--api", f"http://127.0.0.1:{port}", "--receipt"]
        code = await trio.to_thread.run_sync(work_main, [*argv, str(tmp_path / "r.json")])
        assert code == 0
        receipt = json.loads((tmp_path / "r.json").read_text())
        assert receipt["state"] == "running" and receipt["shares"] == 0
        assert [u["state"] for u in receipt["units"]] == ["queued"]
        capsys.readouterr()
        code = await trio.to_thread.run_sync(work_main, [*argv, str(tmp_path / "no" / "r.json")])
        assert code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot write") and "\n" not in err
        nursery.cancel_scope.cancel()
    pool.registry.close()
