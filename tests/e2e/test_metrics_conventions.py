"""The conventions every program keeps on /metrics and in its logs.

A real pool (HTTP on 127.0.0.1), a real worker mining on it (its metrics port), and a real
``matmine-node serve --metrics-port 0`` subprocess: none exports a ``_created`` series, each
has its build info and ``process_*``; the node's log lines are in the one log style.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from protocol.version import package_version
from tests.support.pools import StartPool
from tests.support.running import running_worker, wait_until
from toolkit.logs import LOG_FORMAT, setup_logging
from toolkit.metrics import add_program_metrics, exposition
from worker.backends import open_backends
from worker.config import PoolEndpoint

ROOT = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)"
    r" +[a-z][\w.]*: "
)


def check_conventions(text: str, program: str) -> None:
    created = [line for line in text.splitlines() if "_created" in line]
    assert created == [], f"{program}: {created[:3]}"
    version = package_version()
    assert f'matmine_{program}_build_info{{version="{version}"}} 1.0' in text, program
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
    check_names(text, program)


def check_names(text: str, program: str) -> None:
    """Prometheus naming: counters end in ``_total`` and nothing else does; a rate is a
    gauge named ``..._per_second``; and ``promtool check metrics`` (when installed) finds
    nothing to say."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    assert types, program
    for name, kind in types.items():
        assert name.endswith("_total") == (kind == "counter"), (program, name, kind)
        if re.search(r"per second|/s\b", helps[name]):
            assert kind == "gauge" and name.endswith("_per_second"), (program, name)
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stdout + done.stderr == "", (program, done.stdout)
    elif os.environ.get("CI"):
        pytest.fail("promtool not found (apt-get install -y prometheus)")


async def node_metrics(tmp_path: Path) -> tuple[str, list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    args = [
        sys.executable,
        "-m",
        "node.cli",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--data-dir",
        str(tmp_path / "node"),
    ]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(trio.run_process, args, stderr=subprocess.PIPE, check=False, env=env)
        )
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(60):
            while b"listening on" not in seen:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, f"matmine-node exited early: {seen.decode()}"
                seen += chunk
        found = re.search(rb"metrics on (http://127\.0\.0\.1:\d+)/metrics", seen)
        assert found is not None, seen.decode()
        async with httpx.AsyncClient(base_url=found.group(1).decode(), timeout=10) as http:
            text = (await http.get("/metrics")).text
        proc.terminate()
    return text, seen.decode().splitlines()


async def test_no_created_series_and_build_info_on_every_program(
    start_pool: StartPool, tmp_path: Path
) -> None:
    handle = await start_pool(settings={"http.enabled": True})
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{handle.http_port}", timeout=10
    ) as http:
        check_conventions((await http.get("/metrics")).text, "pool")
    endpoint = PoolEndpoint("127.0.0.1", handle.stratum_port)
    device = open_backends("blas", None, threads=1)[0]
    async with running_worker([endpoint], [device], metrics_port=0) as worker:
        await wait_until(lambda: bool(worker.metrics_urls), 20)
        async with httpx.AsyncClient(base_url=worker.metrics_urls[0], timeout=10) as http:
            check_conventions((await http.get("/metrics")).text, "worker")
    text, lines = await node_metrics(tmp_path)
    check_conventions(text, "node")
    assert "matmine_node_height 0.0" in text
    assert lines and all(LOG_LINE.match(line) for line in lines), lines


def test_several_registries_export_no_created_series() -> None:
    texts = []
    for n in range(3):
        registry = CollectorRegistry()
        add_program_metrics(registry, f"p{n}", "1.2.3")
        Counter("things", "Things.", ["kind"], registry=registry).labels("a").inc()
        Histogram("seconds", "Seconds.", registry=registry).observe(0.1)
        texts.append(exposition(registry).decode())
    for n, text in enumerate(texts):
        assert "_created" not in text
        assert 'things_total{kind="a"} 1.0' in text and "seconds_count 1.0" in text
        assert f'matmine_p{n}_build_info{{version="1.2.3"}} 1.0' in text


def test_one_log_style() -> None:
    import io

    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        first = setup_logging("info", stream=stream)
        second = setup_logging("debug", stream=stream)  # reconfigures: one handler of ours
        assert first not in root.handlers and second in root.handlers
        logging.getLogger("pool.jobs").info("new block template: reward %s coins", "50.0")
        logging.getLogger("node").debug("hello")
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(LOG_LINE.match(line) for line in lines), lines
    assert lines[0].endswith(" INFO    pool.jobs: new block template: reward 50.0 coins")
    assert LOG_FORMAT == "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
