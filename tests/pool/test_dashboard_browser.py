"""The dashboard in a real headless Chromium against a running pool with a mining miner.

Chromium is driven over the DevTools protocol (websocket-client). Without chromium the test
skips, except under CI (env ``CI`` set) where it fails. The screenshot is saved under
``$MATMINE_SCREENSHOT_DIR`` (else pytest's tmp dir) and its path printed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from protocol import messages
from protocol.address import new_address
from tests.support.miner import TestMiner
from tests.support.pools import StartPool

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is required under CI for the dashboard test")
    pytest.skip("chromium not installed", allow_module_level=True)

import websocket  # noqa: E402


class Cdp:
    """A tiny DevTools-protocol client for one page: commands, and console/exception events."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0
        self.errors: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(json.dumps(params["args"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"].get("text", "")[:500])

    def evaluate(self, expression: str) -> Any:
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


def _devtools_page(port: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("chromium's DevTools endpoint did not come up")


def browse(url: str, address: str, user_dir: Path, shot: Path) -> dict[str, Any]:
    """Load ``url`` in headless Chromium; what the page shows, and any console errors."""
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={user_dir}",
            "--remote-debugging-port=0",
            "--window-size=1100,1400",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = user_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        cdp = Cdp(_devtools_page(port))
        for domain in ("Runtime", "Log", "Page"):
            cdp.call(f"{domain}.enable")
        cdp.call("Page.navigate", url=url)
        points = cdp.wait_for(
            "(() => { const c = charts && charts['chart']; "
            "return c && c.data[0].length >= 2 && !!document.querySelector('#chart canvas') "
            "? c.data[0].length : 0; })()"
        )
        max_rate = cdp.evaluate("Math.max(...charts['chart'].data[1])")
        miners = cdp.wait_for("document.querySelector('#miners tbody').textContent")
        stats = cdp.evaluate("document.querySelector('#stats tbody').innerText")
        blocks = cdp.evaluate("document.querySelector('#blocks').innerText")
        useful = cdp.evaluate(
            "(() => { const s = document.getElementById('useful'); "
            "return s.hidden ? null : s.innerText; })()"
        )
        cdp.call("Page.navigate", url=f"{url}#/miner/{address}")
        workers = cdp.wait_for("document.querySelector('#workers tbody').textContent")
        worker_rows = cdp.evaluate("document.querySelector('#workers').innerText")
        miner_stats = cdp.evaluate("document.querySelector('#miner-stats tbody').innerText")
        time.sleep(0.5)
        png = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        shot.write_bytes(base64.b64decode(png))
        cdp.evaluate("1")  # drain pending events
        return {
            "points": points,
            "max_rate": max_rate,
            "miners": miners,
            "workers": workers,
            "worker_rows": worker_rows,
            "miner_stats": miner_stats,
            "stats": stats,
            "blocks": blocks,
            "useful": useful,
            "errors": cdp.errors,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pct(x: float) -> str:
    """A fraction as the dashboard's ``pct`` writes it."""
    return f"{100 * x:.{2 if x < 0.1 else 1}f}%"


@pytest.mark.slow
async def test_dashboard_in_chromium(start_pool: StartPool, tmp_path: Path) -> None:
    # Share difficulty 1e-5, network 1e-4: about 15% of tickets are blocks (one is found).
    pool = await start_pool(
        settings={
            "http.enabled": True,
            "http.history_interval": 0.5,
            "pool.start_difficulty": 1e-5,
        },
        node={"start_difficulty": 1e-4},
    )
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(address + ".rig1")
        accepted = 0
        for c in await miner.shares(3, job):
            r = await miner.submit(c)
            accepted += r.error is None
        assert accepted >= 1
        with trio.fail_after(20):
            while not (found := [c for c in await miner.find(miner.job) if c.is_block]):
                pass
        assert (await miner.submit(found[0])).result.block is not None
        await trio.sleep(1.5)  # a few history samples after the shares
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.http_port}") as client:
            block = (await client.get("/api/blocks")).json()[0]
            p = (await client.get("/api/pool")).json()
        shot_dir = Path(os.environ.get("MATMINE_SCREENSHOT_DIR", tmp_path))
        shot_dir.mkdir(parents=True, exist_ok=True)
        shot = shot_dir / "dashboard.png"
        url = f"http://127.0.0.1:{pool.http_port}/"
        seen = await trio.to_thread.run_sync(browse, url, address, tmp_path / "chromium", shot)
    print(f"dashboard screenshot: {shot}")
    assert seen["errors"] == []
    assert seen["points"] >= 2 and seen["max_rate"] > 0
    assert address in seen["miners"] and "rig1" in seen["miners"]
    assert "rig1" in seen["workers"]
    assert shot.stat().st_size > 1000
    assert "current round effort" in seen["stats"]
    # The block's effort (luck) in its column, and the pool's mean over its blocks.
    assert block["effort"] > 0
    header, *rows = seen["blocks"].splitlines()
    assert header.split("\t")[4] == "effort"
    assert any(r.startswith(str(block["height"])) and pct(block["effort"]) in r for r in rows)
    n = p["average_effort_blocks"]
    assert n >= 1 and p["average_effort"] > 0
    label = f"average effort (last {n} block{'' if n == 1 else 's'})"
    assert f"{label}\t{pct(p['average_effort'])}" in seen["stats"]


def npy_pair(a: np.ndarray, b: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, a)
    np.save(out, b)
    return out.getvalue()


@pytest.mark.slow
async def test_dashboard_shows_useful_work_of_a_running_pool(
    start_pool: StartPool, tmp_path: Path
) -> None:
    pool = await start_pool(
        settings={
            "http.enabled": True,
            "http.history_interval": 0.5,
            "pool.start_difficulty": 1e-5,
            "useful.unit_m": 32,
            "useful.unit_n": 32,
            "useful.r": 32,
            "useful.unit_b_max_bytes": 0,  # the 2-D split: B's two column blocks, two units
            "limits.invalid_min_shares": 1000,
        }
    )
    rng = np.random.default_rng(5)
    a = rng.integers(-64, 65, (32, 128), dtype=np.int8)
    b = rng.integers(-64, 65, (128, 64), dtype=np.int8)  # two units: one done, one queued
    base = f"http://127.0.0.1:{pool.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        r = await client.post(
            "/api/work", content=npy_pair(a, b), headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 201, r.text
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(address + ".rig1", useful=True)
        assert isinstance(job.work.source, messages.BlobSource)
        c, found = await miner.product(job)
        assert found, "no share in the unit's header"
        for candidate in found:
            await miner.submit(candidate)
        seen_jobs = len(miner.jobs)
        verdict = await miner.send_result(job, c)
        assert verdict.result.verified is True
        await miner.next_job(seen_jobs)  # the second unit's: it stays running
        await trio.sleep(1.5)
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            p = (await client.get("/api/pool")).json()
        u = p["useful"]
        assert u["units"]["done"] == 1 and u["units"]["queued"] + u["units"]["running"] == 1
        assert u["items"]["running"] == 1
        assert u["useful_macs"] == 32 * 32 * 128
        assert 0 < u["useful_fraction"] == pytest.approx(u["useful_macs"] / p["accepted_work_macs"])
        shot_dir = Path(os.environ.get("MATMINE_SCREENSHOT_DIR", tmp_path))
        shot_dir.mkdir(parents=True, exist_ok=True)
        shot = shot_dir / "dashboard-useful.png"
        seen = await trio.to_thread.run_sync(
            browse, base + "/", address, tmp_path / "chromium", shot
        )
    print(f"dashboard screenshot: {shot}")
    assert seen["errors"] == []
    assert address in seen["miners"] and "rig1" in seen["workers"]
    panel = seen["useful"]
    assert panel is not None and "Useful work" in panel
    lines = {line.split("\t")[0]: line for line in panel.splitlines()}
    assert "1 running, 1 done" in lines["units"]
    assert "1 running, 0 done" in lines["items"]
    assert "131.07 kMAC" in lines["verified useful work"]  # 32·32·128 verified useful MACs
    fraction = f"{100 * u['useful_fraction']:.2f}%"
    assert fraction in panel or f"{100 * u['useful_fraction']:.1f}%" in panel, (fraction, panel)
    assert "current round effort" in seen["stats"]


@pytest.mark.slow
async def test_dashboard_shows_a_workers_useful_fraction(
    start_pool: StartPool, tmp_path: Path
) -> None:
    """A worker's own accounting (what its accepted shares prove, what of it was useful
    and verified) in /api/miners/ADDRESS and on its dashboard page."""
    pool = await start_pool(
        settings={
            "http.enabled": True,
            "http.history_interval": 0.5,
            "pool.start_difficulty": 1e-5,
            "useful.unit_m": 32,
            "useful.unit_n": 32,
            "useful.r": 32,
            "limits.invalid_min_shares": 1000,
        }
    )
    rng = np.random.default_rng(6)
    a = rng.integers(-64, 65, (32, 128), dtype=np.int8)
    b = rng.integers(-64, 65, (128, 32), dtype=np.int8)  # one unit
    base = f"http://127.0.0.1:{pool.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        r = await client.post(
            "/api/work", content=npy_pair(a, b), headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 201, r.text
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(address + ".rig1", useful=True)
        assert isinstance(job.work.source, messages.BlobSource)
        c, found = await miner.product(job)
        for _ in range(20):
            if found:
                break
            found += await miner.find(job)
        accepted = 0
        for candidate in found:
            accepted += (await miner.submit(candidate)).error is None
        assert accepted >= 1
        verdict = await miner.send_result(job, c)
        assert verdict.result.verified is True
        await trio.sleep(1.0)
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            m = (await client.get(f"/api/miners/{address}")).json()
            p = (await client.get("/api/pool")).json()
        useful = 32 * 32 * 128  # the unit is the whole product
        mined = accepted * job.difficulty * 2**32  # all its accepted shares: on the unit
        (w,) = m["workers"]
        assert w["work"] == pytest.approx(
            {
                "accepted_work_macs": mined,
                "useful_mined_macs": mined,
                "useful_macs": useful,
                "useful_fraction": useful / mined,
            }
        )
        assert m["work"] == pytest.approx(w["work"])
        assert mined == pytest.approx(p["accepted_work_macs"])  # the pool's only miner
        shot = tmp_path / "dashboard-worker.png"
        seen = await trio.to_thread.run_sync(
            browse, base + "/", address, tmp_path / "chromium", shot
        )
    assert seen["errors"] == []
    header, *rows = seen["worker_rows"].splitlines()
    assert header.split("\t")[-1] == "useful"
    (rig,) = [r for r in rows if r.startswith("rig1")]
    fraction = pct(w["work"]["useful_fraction"])
    assert rig.split("\t")[-1] == fraction, rig
    line = "verified useful work (useful fraction)\t131.07 kMAC (" + fraction + ")"
    assert line in seen["miner_stats"], seen["miner_stats"]
