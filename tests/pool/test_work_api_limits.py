"""The work API cannot run the pool out of memory, never answers 5xx to a bad upload, and
refuses to serve anyone's work on a non-loopback address without tokens.

The memory test runs a real pool (``python -m pool.cli serve``) as a subprocess and reads
its peak RSS (``VmHWM``, reset through ``clear_refs`` after start-up) from /proc while four
large bad uploads stream in at once, each from a generator (the client holds 1 MiB).
"""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pool.cli import main as pool_main
from pool.config import ConfigError, PoolConfig, apply_overrides, validate
from pool.useful import UsefulConfig
from pool.useful.upload import NpyPairBody
from tests.support import REPO

MIB = 1 << 20
BLOCK = np.tile(np.arange(-64, 64, dtype=np.int8), MIB // 128).tobytes()

CONFIG = """
[stratum]
port = 0
[http]
port = 0
[pool]
data_dir = "{data_dir}"
[work]
m = 64
n = 64
k = 256
r = 64
[useful]
max_inflight_upload_bytes = 4294967296
"""


def header(shape, descr="|i1", fortran=False):
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        f, {"descr": descr, "fortran_order": fortran, "shape": shape}
    )
    return f.getvalue()


async def stream(*parts):
    """Bytes objects as they are, ints as that many bytes of BLOCK (1 MiB at a time)."""
    for part in parts:
        if isinstance(part, bytes):
            yield part
            continue
        while part > 0:
            yield BLOCK[: min(part, MIB)]
            part -= MIB
            await trio.sleep(0)


def status_kb(pid, field):
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


@pytest.fixture
async def pool_process(tmp_path):
    config = tmp_path / "pool.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    log = tmp_path / "pool.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pool.cli",
                "serve",
                "--config",
                str(config),
                "--log-level",
                "info",
            ],
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    try:
        with trio.fail_after(60):
            while not (
                match := re.search(
                    r"HTTP API and /metrics on http://[\d.]+:(\d+)/", log.read_text()
                )
            ):
                assert process.poll() is None, log.read_text()
                await trio.sleep(0.05)
        yield process.pid, f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.slow
async def test_concurrent_large_bad_uploads_keep_the_pool_small(pool_process):
    pid, url = pool_process
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        # warm up every code path once (small valid upload)
        a = np.ones((16, 16), np.int8)
        f = io.BytesIO()
        np.save(f, a)
        r = await client.post(
            "/api/work", content=f.getvalue() * 2, headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 201, r.text
        baseline = status_kb(pid, "VmRSS")
        with contextlib.suppress(OSError):  # else VmHWM also covers start-up: stricter
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM
        npy = {"Content-Type": "application/x-npy"}
        attacks = [
            # A (128 MiB) streams in whole, B's header does not fit A: 400 at B's header
            (
                "/api/work",
                stream(header((8192, 16384)), 128 * MIB, header((8192, 8192)), 64 * MIB),
                npy,
                400,
                "inner dimensions differ",
            ),
            # entries out of range in the last MiB of B: 400 after ~128 MiB
            (
                "/api/work",
                stream(
                    header((8192, 8192)), 64 * MIB, header((8192, 8192)), 63 * MIB, b"\x7f" * MIB
                ),
                npy,
                400,
                "B has entries outside",
            ),
            # raw bytes: 160 MiB where the query asks for 128 MiB: 400 once past it
            (
                "/api/work?m=8192&k=8192&n=8192",
                stream(160 * MIB),
                {"Content-Type": "application/octet-stream"},
                400,
                "the body is over",
            ),
            # a shape whose element count wraps in int64: refused at the header, 4xx not 500
            ("/api/work", stream(header((2**62, 2**62)), 192 * MIB), npy, 413, "over the limit"),
        ]
        results = {}

        async def attack(i, path, body, headers, status, message):
            r = await client.post(path, content=body, headers=headers)
            results[i] = (r.status_code, r.json()["error"])
            assert r.status_code == status and message in r.json()["error"], r.text

        async with trio.open_nursery() as nursery:
            for i, a in enumerate(attacks):
                nursery.start_soon(attack, i, *a)
        peak = status_kb(pid, "VmHWM")
        after = status_kb(pid, "VmRSS")
    growth = (peak - baseline) / 1024
    print(
        f"\nRSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
        f"(+{growth:.1f} MiB), after {after / 1024:.1f} MiB; {results}"
    )
    assert growth < 64, f"peak RSS grew by {growth:.1f} MiB"


@pytest.mark.slow
async def test_large_valid_upload_round_trips_exactly(pool_process, tmp_path):
    _, url = pool_process
    m = k = n = 4096  # 16 MiB + 16 MiB, chunked (no Content-Length)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.post(
            "/api/work",
            content=stream(header((m, k)), m * k, header((k, n)), k * n),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["shape"] == {"m": m, "k": k, "n": n}
    # read the units' operand blobs back from the pool's data dir and rebuild A and B
    from pool.useful.blobstore import BlobStore

    data = tmp_path / "data"
    blobs = BlobStore(data / "useful" / "blobs")
    import sqlite3

    db = sqlite3.connect(data / "useful.sqlite")
    rows = db.execute("SELECT row0, rows, col0, cols, a_blob, b_blob FROM units").fetchall()
    db.close()
    expect = np.frombuffer(BLOCK * (m * k // MIB), np.int8).reshape(m, k)
    a = np.zeros((m, k), np.int8)
    bt = np.zeros((n, k), np.int8)
    for row0, nrows, col0, ncols, a_blob, b_blob in rows:
        a[row0 : row0 + nrows] = blobs.matrix(a_blob)[:nrows, :k]
        bt[col0 : col0 + ncols] = blobs.matrix(b_blob)[:ncols, :k]
    np.testing.assert_array_equal(a, expect)
    np.testing.assert_array_equal(bt.T, expect)


# --- malformed .npy headers: always a 4xx, never a 5xx ---------------------------------

CFG = UsefulConfig(max_upload_bytes=1 << 20)

dims = st.one_of(
    st.integers(-3, 3),
    st.integers(2**31 - 2, 2**31 + 2),
    st.integers(2**62, 2**64),
    st.integers(1, 4096),
)
shapes = st.one_of(st.tuples(dims, dims), st.tuples(dims), st.tuples(dims, dims, dims), st.just(()))
descrs = st.sampled_from(
    ["|i1", "<i2", "|O", "<f8", "|b1", "|V1", "[('a', '|i1')]", "|i1x", "<U3", "|S2"]
)


def judge(body: bytes) -> int:
    """The status a body gets from the streaming parser (201 when it parses)."""
    from pool.useful.queue import WorkError

    parser = NpyPairBody(CFG, len(body))
    try:
        for i in range(0, len(body), 977):
            parser.feed(body[i : i + 977])
        parser.finish()
    except WorkError as exc:
        assert "\n" not in str(exc)
        return exc.http_status
    return 201


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    descr=descrs,
    fortran=st.booleans(),
    tail=st.binary(max_size=64),
    cut=st.integers(0, 200),
)
def test_malformed_npy_headers_are_4xx(shape, descr, fortran, tail, cut):
    try:
        head = header(shape, descr if not descr.startswith("[") else [("a", "|i1")], fortran)
    except Exception:
        return
    body = head + tail
    status = judge(body[: max(0, len(body) - cut)])
    assert 400 <= status < 500 or status == 201


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes_and_mangled_headers_are_4xx(raw):
    good = header((4, 4))
    for body in (raw, good[:8] + raw, good[:10] + raw, b"\x93NUMPY\x01\x00\xff\xff" + raw):
        status = judge(body)
        assert 400 <= status < 500, status


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (header((2**62, 2**62)), 413, "over the limit"),
        (header((-4, 4)), 400, "negative"),
        (header((0, 4)), 400, "empty"),
        (header((4, 4), "|O"), 400, "object array"),
        (header((4, 4), "<i2"), 400, "must be int8"),
        (b"\x93NUMPY\x01\x00" + (60000).to_bytes(2, "little"), 400, "over the limit of 10000"),
        (b"\x93NUMPY\x03\x00", 400, "unsupported format version"),
        (b"PK\x03\x04", 400, "magic"),
    ],
)
def test_named_bad_headers(body, status, message):
    parser = NpyPairBody(CFG, None)
    from pool.useful.queue import WorkError

    with pytest.raises(WorkError, match=message) as info:
        parser.feed(body + bytes(64))
    assert info.value.http_status == status


# --- exposure ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "pool.example.org"])
def test_no_tokens_on_a_public_address_refuses_to_start(host, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"http.host .* \[useful.tokens\]"):
        apply_overrides(PoolConfig(), {"http.host": host})
    code = pool_main(["serve", "--http-host", host, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "http.host" in err and len(err.strip().splitlines()) == 1
    for ok in ({"useful.enabled": False}, {"http.enabled": False}, {"http.host": "127.0.0.1"}):
        config = PoolConfig()
        apply_overrides(config, {"http.host": host, **ok})
        validate(config)
    config = PoolConfig()
    config.useful.tokens = {"a-long-token": "alice"}
    apply_overrides(config, {"http.host": host})
    validate(config)


def test_upload_budget_refuses_with_503_beyond_its_capacity():
    from pool.useful.upload import UploadBudget, WorkBusyError

    budget = UploadBudget(100)
    with budget.reserve(60), budget.reserve(40):
        with pytest.raises(WorkBusyError) as info, budget.reserve(1):
            pass
        assert info.value.http_status == 503 and info.value.retry_after > 0
    assert budget.used == 0
    with budget.reserve(10**9):  # alone, an upload always fits
        assert budget.used == 100
