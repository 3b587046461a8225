"""The pool client over real loopback sockets: against the real pool, and against raw test
servers that misbehave (garbage, oversized frames, silence, redirects)."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import pytest
import trio

from protocol.connection import Connection, RequestReceived
from protocol.framing import encode_frame
from protocol.messages import (
    AuthorizeResult,
    Notify,
    PingResult,
    Reconnect,
    ShowMessage,
    Subscribe,
    SubscribeResult,
)
from protocol.target import target_from_difficulty
from protocol.workload import Workload
from tests.support.running import fast_connection, running_pool, running_worker, wait_until
from worker.backends import open_backends
from worker.client import Job, PoolClient, probe
from worker.config import PoolEndpoint

LOGIN = "mmd1" + "ab" * 20


def make_client(endpoint: PoolEndpoint, jobs: list[Job], **settings: float) -> PoolClient:
    from protocol.address import new_address

    return PoolClient(
        endpoint,
        login=f"{new_address()}.t",
        password="x",
        agent="test/1",
        settings=fast_connection(**settings),
        on_job=jobs.append,
    )


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def start_raw_server(nursery: trio.Nursery, handler: Handler) -> PoolEndpoint:
    """A plain trio TCP server on 127.0.0.1 running ``handler`` per connection."""
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port = listeners[0].socket.getsockname()[1]
    return PoolEndpoint("127.0.0.1", port)


async def handshake(stream: trio.SocketStream, conn: Connection) -> list[RequestReceived]:
    """Answer subscribe and authorize like a pool would; returns what was asked."""
    asked: list[RequestReceived] = []
    while len(asked) < 2:
        data = await stream.receive_some(65536)
        if not data:
            return asked
        for event in conn.receive_data(data):
            assert isinstance(event, RequestReceived)
            asked.append(event)
            if isinstance(event.message, Subscribe):
                result = SubscribeResult(
                    session_id=b"s1", extranonce1=b"\x01\x02\x03\x04", extranonce2_size=8
                )
                await stream.send_all(conn.send_result(event.id, result))
            else:
                await stream.send_all(conn.send_result(event.id, AuthorizeResult(True)))
    return asked


# --- against the real pool ---------------------------------------------------------------


async def test_subscribe_authorize_job_and_share_outcomes(tmp_path):
    async with running_pool(tmp_path) as pool:
        jobs: list[Job] = []
        client = make_client(pool.endpoint, jobs)
        ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run, lambda c: ready.set())
            with trio.fail_after(10):
                await ready.wait()
                await wait_until(lambda: bool(jobs), 10)
            job = jobs[0]
            assert job.extranonce1 == client.subscription.extranonce1
            notify: Notify = job.notify
            assert notify.clean and notify.work.shape.m == 64

            # find a real share of this job with the BLAS backend and the miner's header code
            from worker.jobfeed import MinableJob

            workload = Workload.synthetic(notify.work.source.seed, notify.work.shape)
            minable = MinableJob(job, workload, target_from_difficulty(notify.difficulty), 0)
            backend = open_backends("blas", None, threads=1)[0]
            backend.prepare(workload)
            winners, en2 = [], b""
            for counter in range(64):
                en2 = counter.to_bytes(8, "big")
                header = minable.header(en2, notify.time)
                winners = backend.scan(header, minable.share_target, lambda: False).winners
                if winners:
                    break
            assert winners, "no share in 64 headers at this difficulty"
            ti, tj, _ = winners[0]

            accepted = await client.submit(job.job_id, en2, notify.time, (ti, tj))
            assert accepted.result == "accepted", accepted
            assert accepted.difficulty == pytest.approx(notify.difficulty)
            duplicate = await client.submit(job.job_id, en2, notify.time, (ti, tj))
            assert duplicate.result == "rejected" and duplicate.code == 22, duplicate
            unknown = await client.submit("no-such-job", en2, notify.time, (ti, tj))
            assert unknown.result == "stale" and unknown.code == 21, unknown
            assert await pool.shares_received() == 1
            client.close()
        assert client.closed
        after = await client.submit(job.job_id, en2, notify.time, (ti, tj))
        assert after.result == "lost"


async def test_probe_tells_a_live_pool_from_a_dead_port(tmp_path):
    from tests.support.running import free_port

    async with running_pool(tmp_path) as pool:
        assert await probe(pool.endpoint, fast_connection(), "test/1") is None
        dead = PoolEndpoint("127.0.0.1", free_port())
        reason = await probe(dead, fast_connection(), "test/1")
        assert reason is not None and "cannot connect" in reason


async def test_refused_connection_is_reported(tmp_path):
    from tests.support.running import free_port

    client = make_client(PoolEndpoint("127.0.0.1", free_port()), [])
    outcome = await client.run()
    assert "cannot connect" in outcome.reason
    assert not outcome.got_job


# --- against misbehaving raw servers -----------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "oversized", "not-a-map", "unasked-response"])
async def test_garbage_from_the_pool_drops_the_connection(kind, caplog):
    async def garbage(stream: trio.SocketStream) -> None:
        if kind == "random":
            payload = os.urandom(64) + b"\xff\xff\xff\xff"  # a length far over the maximum
            payload = b"\x00\x00\x00\x10" + os.urandom(16) + payload
        elif kind == "oversized":
            payload = (50 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 1024
        elif kind == "not-a-map":
            payload = b"\x00\x00\x00\x01\x05"
        else:
            payload = encode_frame({"id": 777, "result": True})
        try:
            await stream.send_all(payload)
            await trio.sleep(5)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        endpoint = await start_raw_server(nursery, garbage)
        client = make_client(endpoint, [], max_frame_size=64 * 1024)
        with trio.fail_after(5):
            outcome = await client.run()
        nursery.cancel_scope.cancel()
    assert "malformed data from the pool" in outcome.reason, outcome.reason
    assert not outcome.got_job


async def test_worker_leaves_a_garbage_pool_for_the_next_one(tmp_path, caplog):
    caplog.set_level(logging.WARNING)

    async def garbage(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(b"\x00\x00\x00\x08" + os.urandom(8) + os.urandom(256))
            await trio.sleep(5)
        except trio.BrokenResourceError:
            pass

    blas = open_backends("blas", None, threads=1)[0]
    async with running_pool(tmp_path) as pool, trio.open_nursery() as nursery:
        bad = await start_raw_server(nursery, garbage)
        async with running_worker([bad, pool.endpoint], [blas]) as worker:
            await wait_until(lambda: worker.stats.shares["accepted"] >= 1, 20)
            assert worker.failover.active_pool.endpoint == pool.endpoint
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert f"pool {bad.label}: malformed data from the pool" in text
    assert f"trying {pool.endpoint.label}" in text


async def test_silent_pool_is_dropped_after_the_job_timeout():
    async def silent(stream: trio.SocketStream) -> None:
        conn = Connection("server")
        with trio.move_on_after(5):
            await handshake(stream, conn)
            await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        endpoint = await start_raw_server(nursery, silent)
        client = make_client(endpoint, [], job_timeout=0.3, ping_interval=60)
        start = trio.current_time()
        with trio.fail_after(5):
            outcome = await client.run()
        nursery.cancel_scope.cancel()
    assert outcome.reason.startswith("no new job for 0.3s")
    assert trio.current_time() - start >= 0.3


async def test_keepalive_ping_and_unanswered_ping_drops():
    pings = 0

    async def answers_two_pings(stream: trio.SocketStream) -> None:
        nonlocal pings
        conn = Connection("server")
        await handshake(stream, conn)
        with trio.move_on_after(5):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    assert event.message.method == "mining.ping"
                    pings += 1
                    if pings <= 2:
                        await stream.send_all(conn.send_result(event.id, PingResult()))

    async with trio.open_nursery() as nursery:
        endpoint = await start_raw_server(nursery, answers_two_pings)
        client = make_client(endpoint, [], ping_interval=0.1, response_timeout=0.3, job_timeout=30)
        with trio.fail_after(5):
            outcome = await client.run()
        nursery.cancel_scope.cancel()
    assert pings == 3
    assert outcome.reason == "no answer to mining.ping in 0.3s"


async def test_show_message_is_logged_and_reconnect_is_followed(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_pool(tmp_path) as pool, trio.open_nursery() as nursery:

        async def redirector(stream: trio.SocketStream) -> None:
            conn = Connection("server")
            await handshake(stream, conn)
            note = ShowMessage(text="maintenance at noon")
            await stream.send_all(conn.send_notification(note))
            move = Reconnect(host="127.0.0.1", port=pool.endpoint.port, wait=0.2)
            await stream.send_all(conn.send_notification(move))
            with trio.move_on_after(5):
                while await stream.receive_some(65536):
                    pass

        endpoint = await start_raw_server(nursery, redirector)
        blas = open_backends("blas", None, threads=1)[0]
        async with running_worker([endpoint], [blas]) as worker:
            await wait_until(lambda: worker.stats.shares["accepted"] >= 1, 20)
            active = worker.failover.active
            assert active is not None and active.endpoint.port == pool.endpoint.port
            assert worker.failover.pools[0].redirect == pool.endpoint
        nursery.cancel_scope.cancel()
    assert "message from pool" in caplog.text and "maintenance at noon" in caplog.text
    assert f"redirects to {pool.endpoint.label} in 0.2s" in caplog.text


async def test_redirect_to_a_foreign_host_is_refused(caplog):
    caplog.set_level(logging.INFO)
    connections = 0

    async def foreign(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        conn = Connection("server")
        await handshake(stream, conn)
        move = Reconnect(host="evil.example", port=1, wait=0)
        await stream.send_all(conn.send_notification(move))
        with trio.move_on_after(5):
            while await stream.receive_some(65536):
                pass

    from worker.failover import Failover

    async with trio.open_nursery() as nursery:
        endpoint = await start_raw_server(nursery, foreign)
        settings = fast_connection()

        def factory(ep: PoolEndpoint, resume: bytes | None) -> PoolClient:
            assert ep.host == "127.0.0.1"  # never the foreign host
            return make_client(ep, [])

        failover = Failover([endpoint], factory, settings)
        nursery.start_soon(failover.run)
        await wait_until(lambda: connections >= 2, 5)
        nursery.cancel_scope.cancel()
    assert "refused" in caplog.text and "evil.example" in caplog.text
