"""``matmine-worker`` as a user runs it: --help texts, exit codes of bench/devices/mine, the
config file, and a real ``mine`` process against a real pool stopped by SIGINT."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from protocol.address import new_address
from protocol.workload import Shape, Workload
from tests.support import REPO
from tests.support.running import CorruptingBackend, running_pool, wait_until
from worker.backends import open_backends
from worker.bench import bench_backend
from worker.cli import build_parser, parse_shape, report_bench
from worker.config import ConfigError, PoolEndpoint, load_config, with_overrides

WORKER = [sys.executable, "-m", "worker.cli"]
ADDRESS = new_address()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["mine", "devices", "bench", "proof of work", "re-checked on the CPU"]),
        (
            ("mine",),
            [
                "--pool",
                "--login",
                "--password",
                "--backend",
                "--devices",
                "--metrics-port",
                "--config",
                "--log-level",
                "failover",
                "9110",
            ],
        ),
        (("devices",), ["PLATFORM:DEVICE"]),
        (("bench",), ["--backend", "--shape", "MxNxK:R", "mismatch"]),
    ],
)
def test_help_texts(args, expected):
    done = run_cli(*args, "--help")
    assert done.returncode == 0, done.stderr
    for word in expected:
        assert word in done.stdout, (word, done.stdout)


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("matmine-worker")
    assert script.exists()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "matmine-worker" in done.stdout


def test_bench_blas_passes_and_exits_zero():
    done = run_cli("bench", "--backend", "blas", "--shape", "64x64x256:64", "--seconds", "0.2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "blas" in done.stdout and "GMAC/s" in done.stdout and "OK" in done.stdout


@pytest.mark.slow
def test_bench_exit_codes_for_bad_input():
    bad_shape = run_cli("bench", "--shape", "60x64x256:64")
    assert bad_shape.returncode == 2 and "multiples of 16" in bad_shape.stderr
    garbled = run_cli("bench", "--shape", "big")
    assert garbled.returncode == 2 and "expected MxNxK:R" in garbled.stderr
    no_device = run_cli("bench", "--backend", "opencl", "--devices", "99:0", "--seconds", "0.1")
    assert no_device.returncode == 1
    assert "cannot run" in no_device.stderr


@pytest.mark.slow
def test_bench_report_fails_on_a_mismatching_device():
    """A real broken device (BLAS with its winners corrupted) measured by the real bench."""
    workload = Workload.synthetic(bytes(32), Shape(64, 64, 256, 64))
    good = bench_backend(open_backends("blas", None, threads=1)[0], workload, seconds=0.1)
    bad = bench_backend(
        CorruptingBackend(open_backends("blas", None, threads=1)[0]), workload, seconds=0.1
    )
    assert good["mismatches"] == 0 and bad["mismatches"] > 0
    out = io.StringIO()
    assert report_bench([good], out) == 0
    assert report_bench([good, bad], out) == 1
    assert "MISMATCH" in out.getvalue()
    assert report_bench([], io.StringIO()) == 1


def test_devices_lists_pocl():
    done = run_cli("devices")
    assert done.returncode in (0, 1)
    if done.returncode == 0:
        assert ":" in done.stdout.splitlines()[1]
    else:
        assert "no OpenCL" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--login", "x.y"], "no pool given"),
        (["--pool", "127.0.0.1"], "expected HOST:PORT"),
        (["--pool", "127.0.0.1:99999", "--login", "a.b"], "out of range"),
        (["--pool", "ftp://h:1", "--login", "a.b"], "unknown scheme"),
        (["--pool", "127.0.0.1:3333"], "login must be"),
    ],
)
def test_mine_rejects_bad_flags(args, message):
    done = run_cli("mine", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_mine_rejects_a_bad_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('login = "a.b"\n[mining]\nroll_time = "yes"\n')
    done = run_cli("mine", "--config", str(bad), "--pool", "127.0.0.1:1")
    assert done.returncode == 2 and "mining.roll_time must be true or false" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("login = \n")
    done = run_cli("mine", "--config", str(broken))
    assert done.returncode == 2 and "not valid TOML" in done.stderr


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text(
        f'login = "{ADDRESS}.rig"\nbackend = "opencl"\ndevices = ["0:0"]\n'
        '[[pool]]\nurl = "tls://pool.example:4444"\n'
        '[[pool]]\nurl = "10.0.0.2:3333"\npriority = 5\n'
        "[connection]\nbackoff_max = 30\nprimary_retry = 12.5\n"
        "[metrics]\nport = 9999\n[watchdog]\nstall_timeout = 0\n"
    )
    config = load_config(path).validate()
    assert config.pools == (
        PoolEndpoint("pool.example", 4444, True, 0),
        PoolEndpoint("10.0.0.2", 3333, False, 5),
    )
    assert config.connection.backoff_max == 30.0 and config.connection.primary_retry == 12.5
    assert config.connection.job_timeout == 300.0  # default kept
    assert config.metrics.port == 9999 and config.watchdog.stall_timeout == 0
    merged = with_overrides(
        config, pools=["127.0.0.1:1"], metrics_port=0, backend="blas", devices=None, login=None
    )
    assert merged.pools == (PoolEndpoint("127.0.0.1", 1),)
    assert merged.metrics.port == 0 and merged.backend == "blas"
    assert merged.login == f"{ADDRESS}.rig" and merged.devices == ("0:0",)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[connection]\nbackof = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key connection\.backof"):
        load_config(unknown)


def test_every_flag_has_a_config_key():
    mine = build_parser()._subparsers._group_actions[0].choices["mine"]  # type: ignore[union-attr]
    for action in mine._actions:
        if action.dest in ("help", "config"):
            continue
        assert "config:" in action.help, action.dest


def test_parse_shape():
    assert parse_shape("64x32x256:64") == Shape(64, 32, 256, 64)


@pytest.mark.slow
async def test_mine_process_against_a_real_pool_and_sigint(tmp_path):
    # A real-sized share difficulty (≈ 2·10⁹ MACs a share): with vardiff off, the tiny
    # default would let a fast box flood the pool past its message-rate limit.
    async with running_pool(tmp_path / "pool", share_difficulty=0.5) as pool:
        address = new_address()
        config = tmp_path / "worker.toml"
        config.write_text(
            '[console]\nstatus_interval = 0.5\nlive = "off"\n[connection]\nbackoff_initial = 0.1\n'
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        proc = await trio.lowlevel.open_process(
            [
                *WORKER,
                "mine",
                "--pool",
                pool.endpoint.label,
                "--login",
                f"{address}.cli",
                "--backend",
                "blas",
                "--metrics-port",
                "-1",
                "--config",
                str(config),
            ],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        log = bytearray()

        async def drain() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.receive_some(65536):
                log.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            try:
                await wait_until(lambda: b"share accepted" in log, 30)
                assert pool.sessions() == 1
                await wait_until(lambda: b"(10s/60s/15m)" in log, 10)
                proc.send_signal(signal.SIGINT)
                with trio.fail_after(15):
                    code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    text = log.decode(errors="replace")
    assert code == 0, text
    assert "SIGINT received; shutting down" in text
    assert "stopped: accepted" in text
    status = next(line for line in text.splitlines() if "(10s/60s/15m)" in line)
    assert pool.endpoint.label in status and "MAC/s" in status and "hw errors 0" in status


def test_mine_refuses_a_login_that_is_not_an_address():
    done = run_cli("mine", "--pool", "127.0.0.1:1", "--login", "notanaddress.rig")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "login 'notanaddress.rig'" in lines[0], done.stderr


async def test_a_pool_that_refuses_the_login_is_not_retried(tmp_path):
    from tests.support.running import fast_connection
    from worker.client import PoolClient
    from worker.failover import Failover, WorkerStopped

    tries = []
    settings = fast_connection()
    async with running_pool(tmp_path / "pool") as pool:

        def factory(ep, resume):
            tries.append(ep)
            return PoolClient(
                ep, login="x.y", password="", agent="t", settings=settings, on_job=lambda job: None
            )

        failover = Failover([pool.endpoint], factory, settings)
        with trio.fail_after(20), pytest.raises(WorkerStopped, match="refused"):
            await failover.run()
    assert len(tries) == 1


def test_a_busy_metrics_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(
            "mine",
            "--pool",
            "127.0.0.1:1",
            "--login",
            f"{ADDRESS}.rig",
            "--backend",
            "blas",
            "--metrics-port",
            str(port),
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"metrics port {port}" in done.stderr
