"""Configuration: the default file round-trips, bad keys are named, flags override;
the HTTP API and the TLS port of a running pool."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib

import httpx
import pytest
import trio

from pool.cli import build_parser, overrides_from_args
from pool.config import (
    HELP,
    ConfigError,
    PoolConfig,
    config_from_dict,
    default_config_text,
    load_config,
)
from pool.ledger.base import CREDITED, ORPHANED
from protocol.address import new_address
from protocol.workload import Shape
from tests.support import REPO
from tests.support.miner import TestMiner


def test_default_config_text_parses_back_to_the_defaults():
    text = default_config_text()
    assert config_from_dict(tomllib.loads(text)) == PoolConfig()
    for section, keys in HELP.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"# {keys[key]}" in text


def test_init_config_command_prints_it():
    out = subprocess.run(
        [sys.executable, "-m", "pool.cli", "init-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == default_config_text()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stratum": {"prot": 1}}, "unknown key 'prot' in [stratum]"),
        ({"strata": {}}, "unknown section [strata]"),
        ({"stratum": {"port": "3333"}}, "[stratum] port must be an integer"),
        ({"stratum": {"port": 70000}}, "stratum.port must be in 0..65535"),
        ({"work": {"profile": "tpu"}}, "work.profile must be one of"),
        ({"work": {"k": 100}}, "[work] shape"),
        ({"pool": {"fee_bps": 20000}}, "pool.fee_bps"),
        ({"pool": {"payout_address": "mmd1nope"}}, "pool.payout_address"),
        ({"stratum": {"tls": True}}, "needs stratum.tls_cert"),
        ({"vardiff": {"min_difficulty": 5.0, "max_difficulty": 1.0}}, "[vardiff]"),
        ({"chain": {"kind": "bitcoin"}}, "chain.kind"),
        ({"chain": {"node": {"maturty": 3}}}, "unknown key(s) in [chain.node]: maturty"),
        ({"chain": {"node": {"maturity": -1}}}, "[chain.node] maturity"),
        ({"pool": {"start_difficulty": 1e-9}}, "pool.start_difficulty"),
        ({"ledger": {"kind": "postgres"}}, "ledger.url"),
        ({"pool": {"unknown_block_grace": 0.0}}, "pool.unknown_block_grace must be positive"),
    ],
)
def test_bad_config_is_named(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert message in str(info.value)


def test_file_then_flags(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text('[stratum]\nport = 4000\n[http]\nport = 9000\n[work]\nprofile = "gpu"\n')
    args = build_parser().parse_args(
        [
            "serve",
            "--config",
            str(path),
            "--http-port",
            "9100",
            "--data-dir",
            str(tmp_path / "d"),
            "--chain",
            "rpc://127.0.0.1:18555",
        ]
    )
    config = load_config(args.config, overrides_from_args(args))
    assert config.stratum.port == 4000  # from the file
    assert config.http.port == 9100  # the flag wins
    assert config.pool.data_dir == str(tmp_path / "d")
    assert (config.chain.kind, config.chain.rpc_host, config.chain.rpc_port) == (
        "rpc",
        "127.0.0.1",
        18555,
    )
    assert config.work_shape().m == 4096
    assert load_config().work_shape() == Shape(2048, 2048, 2048, 128)  # the CPU profile
    with pytest.raises(ConfigError):
        overrides_from_args(build_parser().parse_args(["serve", "--chain", "http://x"]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_config_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[stratum]\nbogus = 1\n")
    run = subprocess.run(
        [sys.executable, "-m", "pool.cli", "serve", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "unknown key 'bogus' in [stratum]" in run.stderr


async def test_http_api_serves_metrics_and_pool_stats(start_pool, tmp_path):
    pool = await start_pool({"http.enabled": True})
    address = new_address()
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(address + ".rig")
        (c, *_) = await miner.shares(1, job)
        assert (await miner.submit(c)).error is None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.http_port}") as http:
            metrics = (await http.get("/metrics")).text
            assert 'matmine_pool_shares_total{result="accepted"} 1.0' in metrics
            assert "matmine_pool_connections 1.0" in metrics
            stats = (await http.get("/api/pool")).json()
            assert stats["connections"] == 1 and stats["workers"] == 1
            assert stats["height"] == job.height
    # The pool keeps its wallet address across restarts.
    assert (tmp_path / "pool" / "pool_address").read_text().strip() == pool.payout_address


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_port(start_pool, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pool = await start_pool(
        {
            "stratum.tls": True,
            "stratum.tls_port": 0,
            "stratum.tls_cert": str(cert),
            "stratum.tls_key": str(key),
        }
    )
    assert pool.tls_port and pool.tls_port != pool.stratum_port
    async with await TestMiner.connect_tls(pool.tls_port, str(cert)) as miner:
        job = await miner.login(new_address() + ".tls")
        (c, *_) = await miner.shares(1, job)
        r = await miner.submit(c)
        assert r.error is None


async def test_unknown_block_grace_reaches_the_unlocker(start_pool, ledger_call):
    assert PoolConfig().pool.unknown_block_grace == 3600.0
    pool = await start_pool({"pool.unknown_block_grace": 50.0})
    ledger, now, address = pool.ledger, time.time(), new_address()
    # two blocks the node never saw: one past the grace, one within it
    old = await ledger_call(
        pool, ledger.record_block, 5, b"\x01" * 32, 1000, now - 100, address, "rig", 1.0
    )
    young = await ledger_call(
        pool, ledger.record_block, 6, b"\x02" * 32, 1000, now - 10, address, "rig", 1.0
    )

    async def states() -> tuple[str, str]:
        return (
            (await ledger_call(pool, ledger.block, old)).status,
            (await ledger_call(pool, ledger.block, young)).status,
        )

    with trio.fail_after(5):  # unlock rounds every 0.2 s
        while await states() != (ORPHANED, CREDITED):  # the young one: credited, pending
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # more rounds change nothing
    assert await states() == (ORPHANED, CREDITED)
