"""Shared fixtures: a running pool on an ephemeral 127.0.0.1 port with a tmp data dir.

Tiny work (64×64×256, r=64: 16 tickets per header) and tiny difficulties keep the tests
fast: at share difficulty 1e-4 about 15% of tickets are shares; at the default network
difficulty 1.0 a block is a 1-in-65536 ticket, so session tests find none. Block tests
lower the network difficulty through ``[chain.node]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pool.app import PoolHandle, run_pool
from tests.support.pools import StartPool, make_config


@pytest.fixture
def start_pool(nursery: trio.Nursery, tmp_path: Path) -> StartPool:
    """``await start_pool(settings=..., node=...)`` runs a pool until the test ends."""

    async def start(
        settings: dict[str, Any] | None = None,
        node: dict[str, Any] | None = None,
        data_dir: Path | None = None,
    ) -> PoolHandle:
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
