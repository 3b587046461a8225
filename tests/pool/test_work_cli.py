"""``matmine-pool work submit`` against a real pool: checks before upload, progress, no worker.

The real pool (embedded devnet node, useful work on, HTTP API) runs on 127.0.0.1; the CLI
runs as a subprocess (``python -m pool.cli``, this checkout on its PYTHONPATH); the miner is
:class:`tests.support.miner.TestMiner` announcing ``useful-1``.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from pool.app import PoolHandle
from pool.useful.cli_check import Progress, check_operand_files, progress_line
from protocol import messages
from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pools import USEFUL_SETTINGS, StartPool

ROOT = Path(__file__).resolve().parents[2]
USEFUL = {**USEFUL_SETTINGS, "useful.max_dim": 64}


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pool.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def operands(m: int, k: int, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


async def items(handle: PoolHandle) -> int:
    assert handle.useful is not None
    counts = await trio.to_thread.run_sync(handle.useful.queue.unit_counts)
    return sum(counts.values())


@pytest.mark.slow
async def test_submit_refuses_bad_operands_before_uploading(
    start_pool: StartPool, tmp_path: Path
) -> None:
    handle = await start_pool(settings=USEFUL)
    url = f"http://127.0.0.1:{handle.http_port}"
    a, b = operands(32, 128, 32)
    files = {
        "a.npy": a,
        "b.npy": b,
        "float.npy": a.astype(np.float32),
        "cube.npy": np.zeros((2, 2, 2), dtype=np.int8),
        "short_b.npy": b[:100],
        "hot.npy": np.where(np.arange(a.size).reshape(a.shape) == 77, np.int8(100), a),
        "wide.npy": operands(80, 128, 32)[0],  # m = 80 > the pool's max_dim 64
    }
    for name, array in files.items():
        np.save(tmp_path / name, array)
    (tmp_path / "junk.npy").write_bytes(b"not an npy at all")
    cases = [
        ("float.npy", "b.npy", "float.npy: A must be int8, got float32"),
        ("cube.npy", "b.npy", "cube.npy: A must be 2-D (m×k), got shape (2, 2, 2)"),
        ("a.npy", "short_b.npy", "short_b.npy: B is 100×32 but A"),
        (
            "hot.npy",
            "b.npy",
            "hot.npy: A has entries outside [-64, 64] (first: 100 at row 0, column 77)",
        ),
        ("junk.npy", "b.npy", "junk.npy: A is not a readable .npy file"),
        ("a.npy", "missing.npy", "missing.npy: B is not a readable file"),
        ("wide.npy", "b.npy", "wide.npy: A's m = 80 is over the pool's limit of 64"),
    ]
    for a_name, b_name, expected in cases:
        r = await trio.to_thread.run_sync(
            lambda a=a_name, b=b_name: cli(
                "work", "submit", "--api", url, str(tmp_path / a), str(tmp_path / b)
            )
        )
        assert r.returncode == 2, (a_name, b_name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (expected, r.stderr)
        assert "nothing uploaded" in lines[0] and r.stdout == ""
    assert await items(handle) == 0


async def test_work_info_reports_limits_and_capable_sessions(start_pool: StartPool) -> None:
    handle = await start_pool(settings=USEFUL)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.http_port}") as client:
        info = (await client.get("/api/work")).json()
        assert info["capable_sessions"] == 0
        assert info["limits"]["max_dim"] == 64 and info["limits"]["dtype"] == "int8"
        assert (info["limits"]["entry_min"], info["limits"]["entry_max"]) == (-64, 64)
        async with (
            await TestMiner.connect(handle.stratum_port) as old,
            await TestMiner.connect(handle.stratum_port) as capable,
        ):
            await old.login(f"{new_address()}.old")
            await capable.login(f"{new_address()}.new", useful=True)
            assert (await client.get("/api/work")).json()["capable_sessions"] == 1
            buf = io.BytesIO()
            a, b = operands(32, 128, 32)
            np.save(buf, a)
            np.save(buf, b)
            r = await client.post(
                "/api/work", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"}
            )
            status = (await client.get(f"/api/work/{r.json()['id']}")).json()
            assert status["capable_sessions"] == 1
        with trio.fail_after(10):
            while (await client.get("/api/work")).json()["capable_sessions"] != 0:
                await trio.sleep(0.05)


@pytest.mark.slow
async def test_submit_wait_shows_progress_and_says_when_no_worker_can_help(
    start_pool: StartPool, tmp_path: Path
) -> None:
    handle = await start_pool(settings=USEFUL)
    url = f"http://127.0.0.1:{handle.http_port}"
    a, b = operands(32, 128, 64, seed=3)  # two units
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = tmp_path / "c.npy"
    result: list[subprocess.CompletedProcess[str]] = []

    async def run_cli() -> None:
        result.append(
            await trio.to_thread.run_sync(
                lambda: cli(
                    "work",
                    "submit",
                    "--api",
                    url,
                    "--wait",
                    "--poll",
                    "0.1",
                    "--progress-interval",
                    "0.3",
                    "-o",
                    str(out),
                    str(tmp_path / "a.npy"),
                    str(tmp_path / "b.npy"),
                    timeout=120,
                )
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_cli)
        with trio.fail_after(30):
            while await items(handle) == 0:
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # a few progress lines while no capable worker is connected
        async with await TestMiner.connect(handle.stratum_port) as miner:
            job = await miner.login(f"{new_address()}.rig1", useful=True)
            for _ in range(2):
                assert isinstance(job.work.source, messages.BlobSource)
                c, _ = await miner.product(job)
                seen = len(miner.jobs)
                r = await miner.send_result(job, c)
                assert r.result.verified is True
                job = await miner.next_job(seen)
    (done,) = result
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(out), a.astype(np.int64) @ b.astype(np.int64))
    err = done.stderr
    assert "warning: no worker able to do useful work is connected" in err
    assert "0/2 units done" in err and "2/2 units done" in err
    assert "MAC/s" in err and "ETA" in err and "elapsed" in err
    assert "\r" not in err  # not a terminal: plain lines
    last = [line for line in err.splitlines() if "units done" in line][-1]
    assert "done, 2/2 units done" in last and "no worker able" not in last


@pytest.mark.slow
async def test_on_a_terminal_the_progress_line_is_redrawn_in_place(
    start_pool: StartPool, tmp_path: Path
) -> None:
    handle = await start_pool(settings=USEFUL)
    url = f"http://127.0.0.1:{handle.http_port}"
    a, b = operands(32, 128, 32, seed=4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "pool.cli",
        "work",
        "submit",
        "--api",
        url,
        "--wait",
        "--poll",
        "0.2",
        "--timeout",
        "1.5",
        str(tmp_path / "a.npy"),
        str(tmp_path / "b.npy"),
    ]

    def run() -> tuple[int, str, bytes]:
        with subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=slave, env=env, text=True
        ) as proc:
            os.close(slave)
            err = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                err += chunk
            out = proc.stdout.read() if proc.stdout else ""
            return proc.wait(timeout=30), out, err

    try:
        code, out, err = await trio.to_thread.run_sync(run)
    finally:
        os.close(master)
    text = err.decode()
    assert code == 1, text
    work_id = out.strip()
    assert text.count(f"\r{work_id}: queued, 0/1 units done") >= 3, text  # redrawn in place
    assert "no worker able to do useful work is connected" in text
    assert "gave up after 1.5 s" in text.splitlines()[-1]
    r = await trio.to_thread.run_sync(lambda: cli("work", "status", "--api", url, work_id))
    assert r.returncode == 0 and '"capable_sessions": 0' in r.stdout
    assert "warning: no worker able" in r.stderr


def test_check_operand_files_returns_the_product_shape(tmp_path: Path) -> None:
    a, b = operands(16, 48, 8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.asfortranarray(b))
    assert check_operand_files(tmp_path / "a.npy", tmp_path / "b.npy") == (16, 48, 8)


def test_progress_redraws_one_line_on_a_terminal() -> None:
    clock = iter([0.0, 10.0, 20.0, 30.0])
    stream = io.StringIO()
    progress = Progress(stream, tty=True, clock=lambda: next(clock))
    status = {
        "id": "w1",
        "state": "running",
        "units": 4,
        "capable_sessions": 1,
        "shape": {"m": 1000, "k": 1000, "n": 1000},
        "unit_states": {"done": 1, "running": 1, "queued": 2},
    }
    progress.show(status)
    progress.show({**status, "unit_states": {"done": 2, "running": 2}})
    progress.show({**status, "state": "done", "unit_states": {"done": 4}}, final=True)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 3
    assert "1/4 units done" in text and "10s elapsed" in text and "25 MMAC/s" in text
    assert "ETA 30s" in text and "4/4 units done" in text


def test_progress_line_without_capable_workers() -> None:
    status = {
        "id": "w1",
        "state": "queued",
        "units": 2,
        "capable_sessions": 0,
        "shape": {"m": 32, "k": 128, "n": 64},
        "unit_states": {"queued": 2},
    }
    line = progress_line(status, 3.0)
    assert "0/2 units done" in line and "ETA ?" in line and "no worker able" in line
