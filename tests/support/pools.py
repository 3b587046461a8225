"""A pool's test config, and the type of the conftest's start_pool fixture."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pool.app import PoolHandle
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


def make_config(
    data_dir: Path, settings: dict[str, Any] | None = None, node: dict[str, Any] | None = None
) -> PoolConfig:
    """A test config: :data:`TEST_SETTINGS`, then ``settings``; node = TEST_NODE + ``node``."""
    config = PoolConfig()
    merged = {**TEST_SETTINGS, "pool.data_dir": str(data_dir), **(settings or {})}
    apply_overrides(config, merged)
    config.chain.node = {**copy.deepcopy(TEST_NODE), **(node or {})}
    return config


StartPool = Callable[..., Awaitable[PoolHandle]]


USEFUL_SETTINGS: dict[str, Any] = {
    "http.enabled": True,
    "pool.start_difficulty": 1e-5,
    "useful.unit_m": 32,
    "useful.unit_n": 32,
    "useful.r": 32,
    "useful.unit_b_max_bytes": 0,
    "limits.invalid_min_shares": 1000,
}
"""A pool with useful work in small units (32 × 32, r 32, cut along m and n) and a lenient
invalid-share judge."""
