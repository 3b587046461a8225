"""The worker on the real pool's TLS port: ``tls://127.0.0.1:PORT`` with ``[connection]
tls_ca`` set to the test CA mines accepted shares; a worker trusting another CA is refused
at the handshake, says so clearly in its log, and never sends a share.

The certificates are made like the pool's own TLS test does (the ``openssl`` command): a
self-signed certificate for ``localhost`` / ``127.0.0.1`` that is its own CA.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from pool.app import run_pool
from pool.config import validate
from tests.support.running import (
    RunningPool,
    fast_connection,
    pool_config,
    running_worker,
    wait_until,
)
from worker.backends import open_backends
from worker.config import PoolEndpoint

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for localhost and 127.0.0.1, and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
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
            f"/CN={name}",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    return {name: self_signed(directory, name) for name in ("pool-ca", "other-ca")}


@asynccontextmanager
async def running_tls_pool(data_dir: Path, cert: Path, key: Path) -> AsyncIterator[RunningPool]:
    """The real pool with its TLS stratum port on 127.0.0.1 (plain port too)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = pool_config(data_dir)
    config.stratum.tls = True
    config.stratum.tls_port = 0
    config.stratum.tls_cert = str(cert)
    config.stratum.tls_key = str(key)
    validate(config)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        assert handle.tls_port and handle.tls_port != handle.stratum_port
        yield RunningPool(handle, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


def blas():
    return open_backends("blas", None, threads=1)[0]


async def test_worker_mines_over_tls_with_the_pool_ca(tmp_path, certificates):
    cert, key = certificates["pool-ca"]
    async with running_tls_pool(tmp_path / "pool", cert, key) as pool:
        endpoint = PoolEndpoint.parse(f"tls://127.0.0.1:{pool.handle.tls_port}")
        assert endpoint.tls
        async with running_worker(
            [endpoint], [blas()], connection=fast_connection(tls_ca=str(cert))
        ) as worker:
            await wait_until(lambda: worker.stats.shares["accepted"] >= 3, 30)
            assert worker.stats.shares["rejected"] == 0
            assert pool.sessions() == 1
        assert await pool.shares_received() >= 3


async def test_worker_trusting_another_ca_is_refused_with_a_clear_log_line(
    tmp_path, certificates, caplog
):
    caplog.set_level(logging.WARNING, logger="worker")
    cert, key = certificates["pool-ca"]
    other, _ = certificates["other-ca"]
    async with running_tls_pool(tmp_path / "pool", cert, key) as pool:
        endpoint = PoolEndpoint.parse(f"tls://127.0.0.1:{pool.handle.tls_port}")
        async with running_worker(
            [endpoint], [blas()], connection=fast_connection(tls_ca=str(other))
        ) as worker:

            def refusals() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if "certificate verify failed" in r.getMessage()
                ]

            await wait_until(lambda: len(refusals()) >= 2, 10)  # it keeps retrying, backing off
            line = refusals()[0]
            assert f"127.0.0.1:{pool.handle.tls_port}" in line
            assert "TLS" in line
            assert sum(worker.stats.shares.values()) == 0
            assert pool.sessions() == 0
        assert await pool.shares_received() == 0


async def test_a_missing_ca_file_is_named_in_the_log(tmp_path, certificates, caplog):
    caplog.set_level(logging.WARNING, logger="worker")
    cert, key = certificates["pool-ca"]
    missing = tmp_path / "no-such-ca.pem"
    async with running_tls_pool(tmp_path / "pool", cert, key) as pool:
        endpoint = PoolEndpoint.parse(f"tls://127.0.0.1:{pool.handle.tls_port}")
        async with running_worker(
            [endpoint], [blas()], connection=fast_connection(tls_ca=str(missing))
        ) as worker:
            await wait_until(
                lambda: any(str(missing) in r.getMessage() for r in caplog.records), 10
            )
            assert sum(worker.stats.shares.values()) == 0 and pool.sessions() == 0
