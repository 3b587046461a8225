"""Failover between pools over real loopback sockets: dead primary → live secondary → back
to the primary once it listens; jittered exponential backoff."""

from __future__ import annotations

import logging
import random

import pytest
import trio

from tests.support.running import (
    fast_connection,
    free_port,
    running_pool,
    running_worker,
    wait_until,
)
from worker.backends import open_backends
from worker.client import PoolClient
from worker.config import PoolEndpoint
from worker.failover import Backoff, Failover


def test_backoff_doubles_with_jitter_and_caps():
    backoff = Backoff(1.0, 8.0, 0.25, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.75 <= delay <= base * 1.25
    assert len(set(delays)) == len(delays)  # jittered: no two alike
    backoff.reset()
    assert backoff.next_delay() <= 1.25


def test_backoff_without_jitter_is_exact():
    backoff = Backoff(0.5, 3.0, 0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_priorities_order_the_pools():
    eps = [
        PoolEndpoint("a", 1, priority=2),
        PoolEndpoint("b", 2, priority=0),
        PoolEndpoint("c", 3, priority=2),
    ]
    failover = Failover(eps, lambda ep, resume: None, fast_connection())  # type: ignore[arg-type,return-value]
    assert [p.endpoint.host for p in failover.pools] == ["b", "a", "c"]
    with pytest.raises(ValueError):
        Failover([], lambda ep, resume: None, fast_connection())  # type: ignore[arg-type,return-value]


@pytest.mark.slow
async def test_dead_pools_are_retried_with_growing_backoff():
    tries: list[float] = []
    dead = [PoolEndpoint("127.0.0.1", free_port()), PoolEndpoint("127.0.0.1", free_port())]
    settings = fast_connection(backoff_initial=0.05, backoff_max=0.4, backoff_jitter=0.0)

    def factory(ep: PoolEndpoint, resume: bytes | None) -> PoolClient:
        tries.append(trio.current_time())
        return PoolClient(
            ep, login="x.y", password="", agent="t", settings=settings, on_job=lambda job: None
        )

    failover = Failover(dead, factory, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(failover.run)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    # without backoff this would be thousands of tries; with it: 0.05, 0.1, 0.2, 0.4, 0.4 ...
    assert 6 <= len(tries) <= 20, len(tries)
    assert all(p.backoff.failures >= 3 for p in failover.pools)
    assert failover.active is None


async def test_failover_from_a_dead_primary_and_back(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    primary = PoolEndpoint("127.0.0.1", free_port())
    blas = open_backends("blas", None, threads=1)[0]
    async with (
        running_pool(tmp_path / "secondary") as secondary,
        running_worker([primary, secondary.endpoint], [blas]) as worker,
    ):
        await wait_until(lambda: worker.failover.active is not None, 10)
        assert worker.failover.active.endpoint == secondary.endpoint
        await wait_until(lambda: worker.stats.device(blas.name).scans >= 3, 10)
        assert worker.stats.pool == secondary.endpoint.label
        assert secondary.sessions() == 1

        # the primary comes up on its port: the worker goes back to it
        async with running_pool(tmp_path / "primary", port=primary.port) as first:
            await wait_until(
                lambda: (
                    worker.failover.active is not None
                    and worker.failover.active.endpoint == primary
                ),
                10,
            )
            assert worker.failover.switches_to_better == 1
            await wait_until(lambda: first.sessions() == 1, 5)
            await wait_until(lambda: secondary.sessions() == 0, 5)
            scans = worker.stats.device(blas.name).scans
            await wait_until(lambda: worker.stats.device(blas.name).scans > scans + 2, 10)
            assert worker.feed.job is not None
            assert worker.feed.job.client.endpoint == primary

        # the primary goes away again: back to the secondary
        await wait_until(
            lambda: (
                worker.failover.active is not None
                and worker.failover.active.endpoint == secondary.endpoint
            ),
            10,
        )
    assert f"pool {primary.label} is back; leaving {secondary.endpoint.label}" in caplog.text
    assert f"pool {primary.label}: cannot connect" in caplog.text
