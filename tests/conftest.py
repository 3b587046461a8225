"""Shared fixtures: a running pool on an ephemeral 127.0.0.1 port with a tmp data dir.

Tiny work (64×64×256, r=64: 16 tickets per header) and tiny difficulties keep the tests
fast: at share difficulty 1e-4 about 15% of tickets are shares; at the default network
difficulty 1.0 a block is a 1-in-65536 ticket, so session tests find none. Block tests
lower the network difficulty through ``[chain.node]``.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pool.app import PoolHandle, run_pool
from pool.config import PoolConfig, apply_overrides

TEST_SETTINGS: dict[str, Any] = {
    "stratum.port": 0,
    "stratum.idle_timeout": 30.0,
    "http.enabled": False,
    "http.port": 0,
    "pool.start_difficulty": 1e-4,
    "pool.payout_interval": 0.2,
    "pool.unlock_interval": 0.2,
    "pool.min_payout": 1,
    "pool.fee_bps": 100,
    "vardiff.enabled": False,
    "vardiff.min_difficulty": 1e-7,
    "work.m": 64,
    "work.n": 64,
    "work.k": 256,
    "work.r": 64,
    "chain.poll_interval": 0.05,
    "ledger.batch_interval_ms": 2.0,
}

TEST_NODE: dict[str, Any] = {
    "start_difficulty": 1.0,
    "min_difficulty": 1e-6,
    "maturity": 2,
    "block_time": 1,
}


def make_config(data_dir: Path, settings: dict[str, Any] | None = None,
                node: dict[str, Any] | None = None) -> PoolConfig:
    """A test config: :data:`TEST_SETTINGS`, then ``settings``; node = TEST_NODE + ``node``."""
    config = PoolConfig()
    merged = {**TEST_SETTINGS, "pool.data_dir": str(data_dir), **(settings or {})}
    apply_overrides(config, merged)
    config.chain.node = {**copy.deepcopy(TEST_NODE), **(node or {})}
    return config


StartPool = Callable[..., Awaitable[PoolHandle]]


@pytest.fixture
def start_pool(nursery: trio.Nursery, tmp_path: Path) -> StartPool:
    """``await start_pool(settings=..., node=...)`` runs a pool until the test ends."""

    async def start(settings: dict[str, Any] | None = None, node: dict[str, Any] | None = None,
                    data_dir: Path | None = None) -> PoolHandle:
        config = make_config(data_dir or tmp_path / "pool", settings, node)
        return await nursery.start(run_pool, config)

    return start


@pytest.fixture
async def pool(start_pool: StartPool) -> PoolHandle:
    """A pool with the test defaults."""
    return await start_pool()


@pytest.fixture
def ledger_call() -> Callable[..., Awaitable[Any]]:
    """Run a ledger method of a pool in its ledger thread."""

    async def call(handle: PoolHandle, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=handle.ledger_limiter)

    return call
