"""``Range`` on the model data plane's blob GETs (SPEC §12.12.8 → §12.7): one range of
``X`` or a layer blob → 206 with its bytes and ``Content-Range``, a suffix range, an
unsatisfiable one → 416 with ``bytes */total``; only the bytes sent are counted served."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from pool.http_api import serve_http
from pool.models.routes import DATA_PREFIX
from pool.models.settings import ModelJobsConfig
from protocol.model_messages import layer_blobs
from tests.e2e.test_model_jobs import Pool
from tests.support.model_jobs import batch, make_model


async def test_blob_gets_serve_one_range(tmp_path: Path) -> None:
    model = make_model()
    x = batch(20, model.input_width)
    pool = Pool(tmp_path, ModelJobsConfig(r=32, unit_rows=20, budget_ppm=10**6))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, pool.app(), "127.0.0.1", 0)
        pool.base = f"http://127.0.0.1:{port}"
        pool.desk.queue_batch("mlp3", model, x)
        lease = pool.desk.lease("s", pool.base + DATA_PREFIX)
        assert lease is not None
        auth = {"Authorization": f"Bearer {lease.token}"}
        blob = layer_blobs(model)[1]
        async with httpx.AsyncClient(base_url=pool.base + DATA_PREFIX, headers=auth) as client:

            async def get(name: bytes, wanted: str | None) -> httpx.Response:
                headers = {} if wanted is None else {"Range": wanted}
                return await client.get(f"/blobs/{name.hex()}", headers=headers)

            whole = await get(lease.source.x, None)
            assert whole.status_code == 200 and whole.content == x.tobytes()
            assert whole.headers["accept-ranges"] == "bytes"
            assert whole.headers["etag"] == f'"{lease.source.x.hex()}"'
            before = pool.desk.served_bytes
            part = await get(lease.source.x, "bytes=10-19")
            assert part.status_code == 206 and part.content == x.tobytes()[10:20]
            assert part.headers["content-range"] == f"bytes 10-19/{x.size}"
            assert pool.desk.served_bytes - before == 10
            rest = await get(lease.source.x, "bytes=700-")
            assert rest.status_code == 206 and rest.content == x.tobytes()[700:]
            layer = lease.source.layers[1].blob
            tail = await get(layer, "bytes=-16")
            assert tail.status_code == 206 and tail.content == blob[-16:]
            assert (
                tail.headers["content-range"]
                == f"bytes {len(blob) - 16}-{len(blob) - 1}/{len(blob)}"
            )
            for bad in (f"bytes={len(blob)}-", "bytes=5-2", "lines=1-2"):
                refused = await get(layer, bad)
                assert refused.status_code == 416, bad
                assert refused.headers["content-range"] == f"bytes */{len(blob)}"
                assert "not satisfiable" in refused.json()["error"]
        nursery.cancel_scope.cancel()
    pool.registry.close()
