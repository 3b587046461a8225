"""Model batches in ``models_queue.sqlite`` (real SQLite): what one desk queued and judged
is put back into a fresh desk on the same data dir — a passed unit with its ``Y`` and its
audit, the rest queued — batch ids are never given twice, and a batch whose model file is
gone is left out with one line and kept for when it is back."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import trio

from pool.http_api import serve_http
from pool.models.desk import ModelDesk
from pool.models.receipt import receipt_json
from pool.models.settings import ModelJobsConfig
from pool.models.store import run_model_store
from protocol.model import reference_pass, save_model
from tests.e2e.test_model_jobs import Pool, runner
from tests.support.model_jobs import batch, make_model
from worker.backends.blas import BlasBackend

CONFIG = ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6)


async def test_batches_are_put_back_into_a_fresh_desk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, other = make_model(), make_model(seed=4)
    x1, x2, x3 = (batch(rows, model.input_width, seed=rows) for rows in (40, 20, 21))
    pool = Pool(tmp_path, CONFIG)
    pool.registry.add("mlp3", save_model(model))
    pool.registry.add("other", save_model(other))
    data = tmp_path / "pool"
    async with trio.open_nursery() as nursery:
        await nursery.start(run_model_store, pool.desk, data, pool.limiter)
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        one = await pool.desk.queue("mlp3", model, x1)
        two = await pool.desk.queue("mlp3", model, x2)
        three = await pool.desk.queue("other", other, x3)
        _, result, _ = await pool.mine_one("s", runner(tmp_path, BlasBackend(threads=1), "w"), "j")
        assert result.verified and one.units[0].state == "done"
        before = receipt_json(one, pool.desk.receipts)
        await pool.desk.receipts.written()
        nursery.cancel_scope.cancel()
    gone = pool.registry.path(other.model_id)
    kept = gone.read_bytes()
    gone.unlink()

    desk = ModelDesk(CONFIG, pool.limiter)
    with caplog.at_level(logging.ERROR, "pool.models"):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_model_store, desk, data, pool.limiter)
            assert set(desk.items) == {one.id, two.id}
            back = desk.items[one.id]
            assert [u.state for u in back.units] == ["done", "queued"]
            assert back.units[0].output is not None
            want = reference_pass(model, x1).output[:20]
            assert np.array_equal(back.units[0].output, want)
            assert receipt_json(back, desk.receipts) == before
            assert [u.state for u in desk.items[two.id].units] == ["queued"]
            four = await desk.queue("mlp3", model, x2)
            assert four.id == three.id + 1  # ids are never given twice
            nursery.cancel_scope.cancel()
    (line,) = [r.getMessage() for r in caplog.records if "not restored" in r.getMessage()]
    assert line.startswith(f"model batch {three.id} not restored (kept in models_queue.sqlite)")
    assert "'other'" in line and "cannot be read" in line

    gone.write_bytes(kept)  # the model file is back: so is its batch
    desk = ModelDesk(CONFIG, pool.limiter)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_model_store, desk, data, pool.limiter)
        assert set(desk.items) == {one.id, two.id, three.id, three.id + 1}
        assert np.array_equal(desk.items[three.id].x, x3)
        nursery.cancel_scope.cancel()
    pool.registry.close()
