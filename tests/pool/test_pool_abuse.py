"""Abuse over real sockets: garbage and oversized frames, floods, invalid-share escalation,
idle connections — each dealt with without harm to the other miners. Plus the bounded
sans-IO parts of ``pool.abuse``.
"""

from __future__ import annotations

import contextlib
import secrets
import struct

import trio

from pool.abuse import BanList, CheckBudget, Escalation, RateLimiter, ShareJudge
from protocol import messages
from protocol.address import new_address
from protocol.errors import ErrorCode
from protocol.framing import FrameDecoder, encode_frame
from tests.support.miner import MinerClosed, TestMiner, losing_tiles, misbehave


def shown(miner: TestMiner) -> list[str]:
    return [m.text for m in miner.messages if isinstance(m, messages.ShowMessage)]


async def read_until_closed(stream: trio.abc.Stream) -> list[dict]:
    """Every frame the pool sends until it closes the connection (bounded in time)."""
    decoder = FrameDecoder()
    frames: list[dict] = []
    with trio.fail_after(10):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return frames
            if not data:
                return frames
            frames += decoder.feed(data)


async def round_trip(port: int) -> None:
    """A well-behaved miner: log in and get one share accepted."""
    async with await TestMiner.connect(port) as miner:
        job = await miner.login(new_address() + ".good")
        (c, *_) = await miner.shares(1, job)
        r = await miner.submit(c)
        assert r.error is None


async def test_oversized_frame_closes_with_clear_error(start_pool):
    pool = await start_pool({"stratum.max_frame_size": 1024})
    async with await TestMiner.connect(pool.stratum_port) as bystander:
        await bystander.login(new_address())
        async with await TestMiner.connect(pool.stratum_port) as bad:
            await bad.send_raw(struct.pack(">I", 5000) + b"x" * 100)
            await bad.wait_closed()
            (text,) = shown(bad)
            assert "5000 bytes exceeds the maximum of 1024" in text
        r = await bystander.request(messages.Ping())  # the other miner is unharmed
        assert r.error is None
    await round_trip(pool.stratum_port)


async def test_garbage_frame_closes_with_clear_error(pool):
    async with await TestMiner.connect(pool.stratum_port) as bad:
        await bad.send_raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")  # 0xc1 is never msgpack
        await bad.wait_closed()
        (text,) = shown(bad)
        assert "invalid msgpack" in text
    async with await TestMiner.connect(pool.stratum_port) as bad:
        await bad.send_raw(encode_frame({"id": "nope", "method": 5}))
        await bad.wait_closed()
        assert shown(bad) and "protocol error" in shown(bad)[0]
    await round_trip(pool.stratum_port)


async def test_flood_is_cut_off_and_does_not_starve_others(start_pool):
    pool = await start_pool({"limits.messages_per_second": 20.0, "limits.message_burst": 50})
    ping = encode_frame({"id": 1, "method": "mining.ping", "params": {}})
    async with await TestMiner.connect(pool.stratum_port) as flooder:
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                try:
                    for _ in range(50):
                        await flooder.send_raw(ping * 200)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            frames: list[dict] = []

            async def read() -> None:
                frames.extend(await read_until_closed(flooder.stream))

            nursery.start_soon(flood)
            nursery.start_soon(read)
            with trio.fail_after(10):
                await round_trip(pool.stratum_port)  # served while the flood goes on
        codes = [f["error"]["code"] for f in frames if "error" in f]
        assert ErrorCode.RATE_LIMITED in codes
        assert any(
            f.get("method") == "client.show_message" and "flood" in f["params"]["text"]
            for f in frames
        )
        assert len(frames) < 50 * 200  # cut off long before the flood ended
    await round_trip(pool.stratum_port)


async def test_invalid_shares_escalate_to_a_ban(start_pool):
    pool = await start_pool(
        {
            "limits.invalid_window": 4,
            "limits.invalid_min_shares": 4,
            "limits.invalid_ratio": 0.5,
            "limits.ban_seconds": 60.0,
        }
    )
    address = new_address()

    async def send_losers(miner: TestMiner, count: int) -> None:
        await miner.request(messages.Ping())  # read any job the pool pushed meanwhile
        await trio.sleep(0.05)
        await miner.request(messages.Ping())
        losers = await trio.to_thread.run_sync(
            losing_tiles, miner.job, miner.extranonce1, secrets.token_bytes(8)
        )
        for c in losers[:count]:
            r = await miner.submit(c)
            assert r.error is not None and r.error.code == ErrorCode.LOW_DIFFICULTY

    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.login(address + ".bad")
        jobs = len(miner.jobs)
        await send_losers(miner, 4)
        # Step 1: fresh work (a clean job) and a message.
        job = await miner.next_job(jobs)
        assert job.clean and any("invalid" in t for t in shown(miner))
        await send_losers(miner, 4)
        # Step 2: client.reconnect.
        with trio.fail_after(5):
            while not any(isinstance(m, messages.Reconnect) for m in miner.messages):
                await miner.request(messages.Ping())
        await send_losers(miner, 3)
        # Step 3: dropped.
        with trio.fail_after(5):
            with contextlib.suppress(MinerClosed):
                await send_losers(miner, 1)
            await miner.wait_closed()
        assert any("dropped" in t for t in shown(miner))

    # Comes back and does it again: dropped again and the IP is banned.
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.login(address + ".bad")
        try:
            for _ in range(3):
                jobs = len(miner.jobs)
                await send_losers(miner, 4)
                await miner.request(messages.Ping())
        except MinerClosed:
            pass
        await miner.wait_closed()
        assert any("banned" in t for t in shown(miner))
    assert pool.registry.get_sample_value("matmine_pool_bans_total") == 1
    # New connections from the banned IP are closed at once.
    async with await TestMiner.connect(pool.stratum_port) as miner:
        await miner.wait_closed()
        assert miner.responses == {} and miner.jobs == []
        assert any("banned" in t for t in shown(miner))


async def proven(miner: TestMiner) -> None:
    """Log ``miner`` in and have one of its shares acknowledged."""
    job = await miner.login(new_address() + ".rig")
    (share, *_) = await miner.shares(1, job)
    assert (await miner.submit(share)).error is None


async def test_connection_limit_per_ip_evicts_the_unproven(start_pool):
    """With an IP's slots taken, a new connection from it closes the oldest one without an
    acknowledged share (unauthorized first); only when every slot holds a miner that proved
    work is the newcomer refused (before: refused at once, whoever held the slots)."""
    pool = await start_pool({"stratum.max_connections_per_ip": 2})
    async with (
        await TestMiner.connect(pool.stratum_port) as rig,
        await TestMiner.connect(pool.stratum_port) as idle,
    ):
        await proven(rig)
        await idle.subscribe()
        async with await TestMiner.connect(pool.stratum_port) as newcomer:
            await idle.wait_closed()
            assert any("make room" in t for t in shown(idle)), shown(idle)
            await proven(newcomer)  # admitted, and mines
            async with await TestMiner.connect(pool.stratum_port) as refused:
                await refused.wait_closed()
                assert any("limit" in t for t in shown(refused)), shown(refused)
            assert (await rig.request(messages.Ping())).error is None  # proven: kept
            assert (await newcomer.request(messages.Ping())).error is None
    assert pool.registry.get_sample_value("matmine_pool_connection_evictions_total") == 1
    await trio.sleep(0.1)  # all closed: room again
    await round_trip(pool.stratum_port)


async def test_full_pool_evicts_the_oldest_unproven_of_any_ip(start_pool):
    """``max_connections`` taken by a proven miner and two silent connections from other IPs
    (127.0.0.2 older than 127.0.0.3): a new miner closes the oldest silent one."""
    pool = await start_pool({"stratum.max_connections": 3})
    async with (
        await TestMiner.connect(pool.stratum_port) as rig,
        await TestMiner.connect(pool.stratum_port, local="127.0.0.2") as oldest,
        await TestMiner.connect(pool.stratum_port, local="127.0.0.3") as younger,
    ):
        await proven(rig)
        await oldest.request(messages.Ping())
        await younger.request(messages.Ping())
        async with await TestMiner.connect(pool.stratum_port, local="127.0.0.4") as newcomer:
            await oldest.wait_closed()
            assert any("make room" in t for t in shown(oldest)), shown(oldest)
            await proven(newcomer)
            assert (await younger.request(messages.Ping())).error is None


async def test_idle_and_silent_connections_are_closed(start_pool):
    pool = await start_pool({"stratum.idle_timeout": 0.4, "stratum.handshake_timeout": 0.4})
    async with await TestMiner.connect(pool.stratum_port) as silent:
        await silent.send_raw(b"\x00\x00")  # half a length prefix, then nothing
        with trio.fail_after(3):
            await silent.wait_closed()
        assert any("authorize in time" in t or "idle" in t for t in shown(silent))
    await round_trip(pool.stratum_port)


# --- sans-IO parts ----------------------------------------------------------------------


def test_rate_limiter_bucket():
    limiter = RateLimiter(rate=10.0, burst=3, now=0.0)
    assert [limiter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.refused == 1
    assert limiter.allow(0.1)  # one token back after 0.1 s
    assert not limiter.allow(0.1)
    assert limiter.allow(10.0) and limiter.refused == 0  # calm again: forgotten


def test_share_judge_ladder_and_reset():
    judge = ShareJudge(window=4, min_shares=4, ratio=0.5)
    steps = [judge.record(False) for _ in range(16)]
    assert [s for s in steps if s] == [
        Escalation.RESEND_WORK,
        Escalation.RECONNECT,
        Escalation.DROP,
        Escalation.BAN,
    ]
    judge = ShareJudge(window=4, min_shares=4, ratio=0.5)
    for _ in range(4):
        judge.record(False)
    assert judge.level == Escalation.RESEND_WORK
    for _ in range(4):
        assert judge.record(True) == Escalation.NONE
    assert judge.level == Escalation.NONE  # a good stretch resets the ladder


def test_ban_list_is_bounded_and_expires():
    bans = BanList(ban_seconds=10.0, max_entries=3)
    for i in range(10):
        bans.ban(f"10.0.0.{i}", now=0.0)
    assert len(bans) == 3
    assert bans.is_banned("10.0.0.9", 5.0) and not bans.is_banned("10.0.0.0", 5.0)
    assert not bans.is_banned("10.0.0.9", 11.0) and len(bans) == 2
    assert bans.connect("1.1.1.1", limit=2) and bans.connect("1.1.1.1", limit=2)
    assert not bans.connect("1.1.1.1", limit=2)
    for i in range(5):
        bans.connect(f"2.2.2.{i}", limit=5)
    assert not bans.connect("3.3.3.3", limit=5)  # the per-IP table is full
    bans.disconnect("1.1.1.1")
    bans.disconnect("1.1.1.1")
    assert bans.connect("3.3.3.3", limit=5)


async def test_a_ban_drops_the_other_connections_from_that_ip(start_pool):
    # every invalid share is one step of the ladder: resend, reconnect, drop (strike 1);
    # the same again from a second connection is strike 2: the IP is banned
    pool = await start_pool(
        {
            "limits.invalid_window": 1,
            "limits.invalid_min_shares": 1,
            "limits.invalid_ratio": 0.5,
            "limits.ban_seconds": 60.0,
        }
    )

    async with (
        await TestMiner.connect(pool.stratum_port) as bystander,
        await TestMiner.connect(pool.stratum_port) as other,
    ):
        await bystander.login(new_address() + ".rig")
        await other.subscribe()  # not even authorized yet
        async with await TestMiner.connect(pool.stratum_port) as bad:
            await misbehave(bad)
            assert any("dropped" in t for t in shown(bad))
        assert (await bystander.request(messages.Ping())).error is None  # a drop is no ban
        async with await TestMiner.connect(pool.stratum_port) as bad:
            await misbehave(bad)
            assert any("banned" in t for t in shown(bad))
        for miner in (bystander, other):  # told why, then closed
            await miner.wait_closed()
            assert any("banned" in t for t in shown(miner)), shown(miner)
    assert pool.registry.get_sample_value("matmine_pool_bans_total") == 1
    with trio.fail_after(5):
        while pool.context.sessions:  # every session from the banned IP is gone
            await trio.sleep(0.02)
    async with await TestMiner.connect(pool.stratum_port) as late:
        await late.wait_closed()
        assert late.jobs == [] and any("banned" in t for t in shown(late))


def test_check_budget_per_ip_with_earned_checks():
    budget = CheckBudget(rate=1.0, burst=2, max_entries=2)
    assert [budget.allow("a", b"s1", 0.0) for _ in range(3)] == [True, True, False]
    assert budget.allow("b", b"s2", 0.0)  # another IP: its own bucket
    for _ in range(CheckBudget.EARNED_MAX + 3):  # acks earn checks, at most EARNED_MAX
        budget.earn(b"s1")
    extra = [budget.allow("a", b"s1", 0.0) for _ in range(CheckBudget.EARNED_MAX + 1)]
    assert extra == [True] * CheckBudget.EARNED_MAX + [False]
    assert not budget.allow("a", b"s3", 0.0)  # earned by s1 only
    assert budget.allow("a", b"s3", 1.0)  # a second later: one back
    for ip in "cdef":  # bounded: the longest unused IPs are forgotten (and start full)
        budget.allow(ip, b"x", 1.0)
    assert len(budget._buckets) == 2 and budget.allow("a", b"s3", 1.0)
