"""The work API served for real: hypercorn + starlette on trio, 127.0.0.1, real SQLite.

Units are completed the way miners will complete them: mine one header of the unit's
workload with the reference miner, denoise, upload in chunks, Freivalds-check.
"""

import io
import json
from functools import partial

import httpx
import numpy as np
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request

from pool.useful import UsefulConfig
from pool.useful.api import WorkApi, create_work_routes, is_loopback
from pool.useful.blobstore import BlobStore
from pool.useful.cli import main as cli_main
from pool.useful.queue import WorkQueue
from pool.useful.results import ResultDesk
from protocol.denoise import denoise
from protocol.ticket import mine_header
from protocol.useful import chunks
from protocol.workload import Workload
from tests.support.useful_queue_data import check_and_complete


def operands(seed, m, k, n):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


def npy(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def work_all_units(queue, desk, session="miner"):
    """Act as a miner: lease, mine one header, denoise, upload, until nothing is queued."""
    done = 0
    while (lease := queue.lease(session)) is not None:
        a, bt = queue.blobs.matrix(lease.unit.a_blob), queue.blobs.matrix(lease.unit.b_blob)
        work = mine_header(bytes([done % 256]) * 128, Workload(lease.unit.shape, a, bt))
        c = denoise(work.noisy_product, a, bt, work.seed, lease.unit.shape.r)
        for offset, data, final in chunks(c.astype("<i4").tobytes(), 4096):
            desk.receive(lease, session, lease.unit.unit_id, offset, data, final)
        assert check_and_complete(desk, lease.id, desk.take_upload(lease.id)).passed
        done += 1
    return done


class Pool:
    def __init__(self, tmp_path, tokens, config):
        self.blobs = BlobStore(tmp_path / "blobs")
        self.queue = WorkQueue(tmp_path / "useful.sqlite", self.blobs, config)
        self.desk = ResultDesk(self.queue, self.blobs)
        self.app = Starlette(
            routes=create_work_routes(self.queue, self.blobs, tokens, trio.CapacityLimiter(2))
        )
        self.url = ""


async def start_pool(nursery, tmp_path, tokens=None, **config):
    settings = {
        "unit_m": 32,
        "unit_n": 32,
        "r": 32,
        "max_upload_bytes": 64 * 1024,
        "max_active_items": 4,
        "unit_b_max_bytes": 0,  # units cut along m and n
        **config,
    }
    pool = Pool(tmp_path, tokens, UsefulConfig(**settings))
    hc = Config()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    hc.errorlog = None
    binds = await nursery.start(partial(serve, pool.app, hc))
    pool.url = binds[0]
    return pool


@pytest.fixture
async def pool(nursery, tmp_path):
    p = await start_pool(nursery, tmp_path)
    yield p
    p.queue.close()


@pytest.fixture
async def client(pool):
    async with httpx.AsyncClient(base_url=pool.url, timeout=10) as c:
        yield c


async def test_submit_poll_and_fetch_a_product_of_several_units(pool, client):
    a, b = operands(1, 70, 100, 40)
    r = await client.post(
        "/api/work", content=npy(a) + npy(b), headers={"Content-Type": "application/x-npy"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    work_id = body["id"]
    assert r.headers["location"] == f"/api/work/{work_id}"
    assert body["state"] == "queued" and body["units"] == 6
    assert body["shape"] == {"m": 70, "k": 100, "n": 40}
    r = await client.get(f"/api/work/{work_id}/result")
    assert r.status_code == 409 and "is queued (0/6 units done)" in r.json()["error"]

    lease = await trio.to_thread.run_sync(pool.queue.lease, "early")
    r = await client.get(f"/api/work/{work_id}")
    assert r.json()["state"] == "running" and r.json()["unit_states"]["running"] == 1
    await trio.to_thread.run_sync(pool.queue.release_session, lease.session)

    assert await trio.to_thread.run_sync(work_all_units, pool.queue, pool.desk) == 6
    status = (await client.get(f"/api/work/{work_id}")).json()
    assert status["state"] == "done" and status["progress"] == 1.0 and status["result"]
    r = await client.get(f"/api/work/{work_id}/result")
    assert r.status_code == 200
    c = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert c.dtype == np.int32 and c.shape == (70, 40)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))


async def test_multipart_and_raw_uploads(pool, client):
    a, b = operands(2, 20, 33, 17)
    r = await client.post("/api/work", files={"a": ("A.npy", npy(a)), "b": ("B.npy", npy(b))})
    assert r.status_code == 201, r.text
    multipart_id = r.json()["id"]
    r = await client.post(
        "/api/work?m=20&k=33&n=17&dtype=int8",
        content=a.tobytes() + b.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    raw_id = r.json()["id"]
    # Fortran-ordered .npy is read correctly too
    r = await client.post(
        "/api/work",
        content=npy(np.asfortranarray(a)) + npy(b),
        headers={"Content-Type": "application/x-npy"},
    )
    assert r.status_code == 201, r.text
    fortran_id = r.json()["id"]
    await trio.to_thread.run_sync(work_all_units, pool.queue, pool.desk)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    for work_id in (multipart_id, raw_id, fortran_id):
        r = await client.get(f"/api/work/{work_id}/result")
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), expected)


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"content": b"not an npy", "headers": {"Content-Type": "application/x-npy"}},
            400,
            "A is not a valid .npy",
        ),
        (
            {
                "content": npy(np.zeros((4, 4), np.int16)) + npy(np.zeros((4, 4), np.int8)),
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "A must be int8, got int16",
        ),
        (
            {
                "content": npy(np.zeros((4, 4), np.int8)),
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "the body holds only A",
        ),
        (
            {
                "content": npy(np.zeros((4, 4), np.int8)) + npy(np.zeros((4, 4), np.int8)) + b"xx",
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "2 bytes after B.npy",
        ),
        (
            {
                "content": npy(np.zeros((4, 4), np.int8)) + npy(np.zeros((5, 4), np.int8)),
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "inner dimensions differ",
        ),
        (
            {
                "content": npy(np.full((4, 4), 65, np.int8)) + npy(np.zeros((4, 4), np.int8)),
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "A has entries outside",
        ),
        (
            {
                "content": npy(np.zeros((4, 4, 1), np.int8)) + npy(np.zeros((4, 4), np.int8)),
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "A must be 2-D",
        ),
        (
            {
                "content": npy(np.zeros((4, 4), np.int8))[:-3] + b"",
                "headers": {"Content-Type": "application/x-npy"},
            },
            400,
            "cut short",
        ),
        (
            {
                "content": bytes(10),
                "params": {"m": 2, "k": 2, "n": 2},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "int8 need 8",
        ),
        (
            {
                "content": bytes(8),
                "params": {"m": 2, "k": 2, "n": 2, "dtype": "float32"},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "dtype must be int8",
        ),
        (
            {
                "content": bytes(8),
                "params": {"m": 2, "k": "x", "n": 2},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "query parameter k",
        ),
        (
            {
                "content": bytes(8),
                "params": {"m": 2, "k": "\u00b2", "n": 2},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "query parameter k",
        ),
        (
            {
                "content": bytes(8),
                "params": {"m": 2, "k": "9" * 5000, "n": 2},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "query parameter k",
        ),
        (
            {"content": b"{}", "headers": {"Content-Type": "application/json"}},
            400,
            "unsupported Content-Type",
        ),
        ({"files": {"a": ("A.npy", npy(np.zeros((4, 4), np.int8)))}}, 400, "multipart field 'b'"),
        (
            {
                "content": bytes(200 * 1024),
                "params": {"m": 100, "k": 1024, "n": 100},
                "headers": {"Content-Type": "application/octet-stream"},
            },
            413,
            "over the limit",
        ),
    ],
)
async def test_malformed_uploads_get_clear_errors_and_store_nothing(
    pool, client, kwargs, status, message
):
    r = await client.post("/api/work", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert pool.queue.unit_counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0}


async def test_count_limit_and_unknown_ids(pool, client):
    a, b = operands(3, 16, 16, 16)
    for _ in range(4):
        r = await client.post(
            "/api/work", content=npy(a) + npy(b), headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 201
    r = await client.post(
        "/api/work", content=npy(a) + npy(b), headers={"Content-Type": "application/x-npy"}
    )
    assert r.status_code == 429 and "limit per customer is 4" in r.json()["error"]
    assert (await client.get("/api/work/nope")).status_code == 404
    assert (await client.get("/api/work/nope/result")).status_code == 404


async def test_tokens_authenticate_customers(nursery, tmp_path):
    pool = await start_pool(nursery, tmp_path, tokens={"tok-alice": "alice", "tok-bob": "bob"})
    a, b = operands(4, 16, 16, 16)
    body = {"content": npy(a) + npy(b), "headers": {"Content-Type": "application/x-npy"}}
    async with httpx.AsyncClient(base_url=pool.url, timeout=10) as anon:
        r = await anon.post("/api/work", **body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    async with httpx.AsyncClient(
        base_url=pool.url, timeout=10, headers={"Authorization": "Bearer wrong"}
    ) as wrong:
        assert (await wrong.post("/api/work", **body)).status_code == 403
    async with httpx.AsyncClient(
        base_url=pool.url, timeout=10, headers={"Authorization": "Bearer tok-alice"}
    ) as alice:
        r = await alice.post("/api/work", **body)
        assert r.status_code == 201
        work_id = r.json()["id"]
        assert (await alice.get(f"/api/work/{work_id}")).status_code == 200
    async with httpx.AsyncClient(
        base_url=pool.url, timeout=10, headers={"Authorization": "Bearer tok-bob"}
    ) as bob:
        assert (await bob.get(f"/api/work/{work_id}")).status_code == 404  # not bob's
        assert (await bob.get(f"/api/work/{work_id}/result")).status_code == 404
    assert pool.queue.status(work_id).customer == "alice"
    pool.queue.close()


def test_without_tokens_only_loopback_clients(tmp_path):
    blobs = BlobStore(tmp_path / "b")
    queue = WorkQueue(tmp_path / "q.sqlite", blobs)
    api = WorkApi(queue, blobs, None, trio.CapacityLimiter(1))

    def request(host):
        return Request(
            {
                "type": "http",
                "method": "GET",
                "path": "/api/work/x",
                "headers": [],
                "client": (host, 5555),
            }
        )

    assert api.customer(request("127.0.0.1")) == "local"
    assert api.customer(request("::1")) == "local"
    for host in ("10.0.0.7", "192.168.1.2", "2001:db8::1", "localhost-ish"):
        with pytest.raises(Exception, match="loopback clients only"):
            api.customer(request(host))
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback(None)
    queue.close()


async def test_cli_submit_wait_output_and_status(pool, tmp_path):
    a, b = operands(5, 40, 64, 20)
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    out = tmp_path / "C.npy"

    async def miner():
        with trio.fail_after(20):
            while not await trio.to_thread.run_sync(work_all_units, pool.queue, pool.desk):
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(miner)
        code = await trio.to_thread.run_sync(
            cli_main,
            [
                "work",
                "submit",
                "--api",
                pool.url,
                str(tmp_path / "A.npy"),
                str(tmp_path / "B.npy"),
                "--wait",
                "-o",
                str(out),
                "--poll",
                "0.05",
                "--timeout",
                "20",
            ],
        )
    assert code == 0
    np.testing.assert_array_equal(np.load(out), a.astype(np.int64) @ b.astype(np.int64))
    (item,) = [s for s in _items(pool)]
    code = await trio.to_thread.run_sync(cli_main, ["work", "status", "--api", pool.url, item])
    assert code == 0
    code = await trio.to_thread.run_sync(
        cli_main, ["work", "status", "--api", pool.url, "no-such-id"]
    )
    assert code == 1
    code = await trio.to_thread.run_sync(
        cli_main, ["work", "submit", "--api", pool.url, str(tmp_path / "missing.npy"), str(out)]
    )
    assert code == 2


def _items(pool):
    with pool.queue._lock:
        return [r[0] for r in pool.queue._db.execute("SELECT id FROM items")]


async def test_cli_prints_the_id_and_reports_http_errors(pool, tmp_path, capsys):
    a, b = operands(6, 16, 16, 16)
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b.astype(np.int32))
    code = await trio.to_thread.run_sync(
        cli_main,
        ["work", "submit", "--api", pool.url, str(tmp_path / "A.npy"), str(tmp_path / "B.npy")],
    )
    assert code == 2  # judged before the upload (nothing sent)
    assert "B.npy: B must be int8, got int32 (nothing uploaded)" in capsys.readouterr().err
    code = await trio.to_thread.run_sync(
        cli_main,
        [
            "work",
            "submit",
            "--no-check",
            "--api",
            pool.url,
            str(tmp_path / "A.npy"),
            str(tmp_path / "B.npy"),
        ],
    )
    assert code == 1
    assert "HTTP 400: B must be int8, got int32" in capsys.readouterr().err
    np.save(tmp_path / "B.npy", b)
    code = await trio.to_thread.run_sync(
        cli_main,
        ["work", "submit", "--api", pool.url, str(tmp_path / "A.npy"), str(tmp_path / "B.npy")],
    )
    assert code == 0
    captured = capsys.readouterr()
    work_id = captured.out.strip()
    assert pool.queue.status(work_id).state == "queued"
    code = await trio.to_thread.run_sync(cli_main, ["work", "status", "--api", pool.url, work_id])
    assert json.loads(capsys.readouterr().out)["id"] == work_id
