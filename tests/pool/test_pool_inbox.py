"""A session's inbox and the abuse policy: bounded, never blocking, strikes in one place."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pool.abuse import AbusePolicy, BanList, Escalation, ShareJudge
from pool.inbox import Inbox, Kick, Notice, OfferWork, Replies, WorkLost

IP = "1.2.3.4"


async def test_inbox_keeps_order_coalesces_offers_and_refuses_when_full_or_closed() -> None:
    inbox = Inbox(size=4)
    assert inbox.post(Notice("a")) and inbox.post(OfferWork()) and inbox.post(OfferWork())
    assert inbox.post(WorkLost()) and inbox.post(Kick("bye"))
    assert not inbox.post(Notice("b"))  # full: refused, never blocks
    got = [await inbox.receive() for _ in range(4)]
    assert got == [Notice("a"), OfferWork(), WorkLost(), Kick("bye")]
    assert inbox.post(OfferWork())  # taken out: may be offered again
    assert await inbox.receive() == OfferWork()
    inbox.close()
    assert not inbox.post(Kick("late"))


async def test_the_writer_sends_replies_in_order_each_follow_up_after_its_frame() -> None:
    """The submit answers: what came together goes out in one send, up to each follow-up;
    a post wakes the parked writer; once closed the writer ends and posts are dropped."""
    replies = Replies()
    log: list[str] = []

    async def send(data: bytes) -> None:
        log.append(data.decode())

    async def follow_up() -> None:
        log.append("follow-up")

    for frame in (b"a", b"b"):
        replies.post(frame)
    replies.post(b"c", follow_up)
    replies.post(b"d")

    async def writer() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await replies.write(send)
        log.append("ended")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["abc", "follow-up", "d"]
        replies.post(b"e")  # wakes the parked writer
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "e"
        replies.close()  # the writer ends
    replies.post(b"late")
    assert log == ["abc", "follow-up", "d", "e", "ended"]


def ladder(policy: AbusePolicy, honest: int, now: float) -> list[Escalation]:
    """One connection's invalid shares until its drop (each verdict judged at once)."""
    judge = ShareJudge(window=1, min_shares=1, ratio=0.5)
    return [
        policy.record(judge, False, ip=IP, login="x", honest=lambda: honest, now=now)
        for _ in range(3)
    ]


def test_policy_climbs_the_ladder_and_bans_only_when_strikes_outweigh_honest_sessions() -> None:
    bans = BanList(ban_seconds=60, max_entries=8)
    policy = AbusePolicy(bans, window=60, max_ips=2)
    assert ladder(policy, 0, 0.0) == [Escalation.RESEND_WORK, Escalation.RECONNECT, Escalation.DROP]
    assert len(policy.strikes[IP]) == 1 and not bans.is_banned(IP, 0.0)
    assert ladder(policy, 1, 1.0)[-1] == Escalation.DROP  # 2 strikes ≤ 4 × 1 honest: spared
    assert not bans.is_banned(IP, 1.0)
    assert ladder(policy, 0, 2.0)[-1] == Escalation.BAN  # 3 strikes, nobody honest
    assert bans.is_banned(IP, 2.0)
    good = ShareJudge(window=1, min_shares=1, ratio=0.5)
    assert policy.record(good, True, ip=IP, login="x", honest=lambda: 0, now=3.0) == Escalation.NONE
    # strikes expire after the window, and at most max_ips IPs keep them
    assert policy.strike(IP, 100.0) == 1
    policy.strike("5.6.7.8", 100.0)
    policy.strike("9.9.9.9", 100.0)
    assert list(policy.strikes) == ["5.6.7.8", "9.9.9.9"]
