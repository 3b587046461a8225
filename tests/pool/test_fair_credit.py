"""Credit = proven work under difficulty shopping (issue 9, defect 1; SPEC §12.8).

The attack: hold a ladder of live jobs on one template at rising difficulties (each
``mining.suggest_difficulty`` step is a new job with ``clean = false``; the older jobs stay
valid), mine headers of the easiest job and submit every winning ticket to the hardest
job whose difficulty it meets. When a ticket does not depend on the job it names, that
pays ~5–6× the work. With each job's coinbase naming the job, a header belongs to one job
and the pool credits at most what the work on each header proves.

The fair bound checked, exactly (``Fraction`` of the stored floats): for every header the
ledger credited shares of, its credit is at most ``D · #tiles of that header meeting D``,
``D`` being the lowest difficulty among the session's jobs that produce that header — what
mining it at the job's assigned difficulty earns. The client is written from the spec
(``tests/miner.py``, built on ``protocol/`` only).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections import defaultdict
from fractions import Fraction

import pytest
import trio

from pool.jobs import JobManager, Template
from pool.workloads import SyntheticSource
from protocol import messages
from protocol.address import new_address
from protocol.chain import BlockTemplate
from protocol.errors import ErrorCode
from protocol.header import Header, assemble_coinbase, coinbase_hash
from protocol.target import meets_target, target_from_difficulty
from protocol.workload import Shape
from tests.support.miner import TestMiner, mine_job_header

# 64×64×256 (the test shape): a ticket meets difficulty D with probability 1/(65536·D),
# so the ladder's foot takes a quarter of the tickets and its top one in 2048
# (the 0.001 … 0.512, scaled to this work size).
D_LOW = 2.0**-14
LADDER = [D_LOW * 2**i for i in range(10)]
HEADERS = 48

SETTINGS = {
    "pool.start_difficulty": D_LOW,
    "work.job_refresh_seconds": 3600.0,  # one template for the whole attack
    "work.job_expiry_seconds": 3600.0,  # every job of the ladder stays live
    "limits.max_jobs_per_session": 16,
    "limits.invalid_window": 100_000,  # the attacker's rejects must not end the ladder
    "limits.invalid_min_shares": 100_000,
    "limits.messages_per_second": 10_000.0,
    "limits.message_burst": 10_000,
}
NODE = {"start_difficulty": 1e9}  # no block can end the template


def header_of(job: messages.Notify, extranonce1: bytes, extranonce2: bytes, ntime: int) -> bytes:
    """The header a submit on ``job`` names (SPEC §10)."""
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    return Header(
        job.version,
        job.height,
        job.prev_hash,
        coinbase_hash(coinbase),
        job.work.work_root,
        ntime,
        job.bits,
    ).encode()


async def build_ladder(miner: TestMiner) -> list[messages.Notify]:
    """Log in and raise the difficulty step by step: one live job per rung."""
    jobs = [await miner.login(new_address() + ".shopper")]
    for difficulty in LADDER[1:]:
        r = await miner.request(messages.SuggestDifficulty(difficulty=difficulty))
        assert r.error is None, r.error
        jobs.append(await miner.next_job())
    assert [j.difficulty for j in jobs] == LADDER
    assert not any(j.clean for j in jobs[1:])
    assert len({(j.height, j.prev_hash, j.work.work_root, j.time) for j in jobs}) == 1
    return jobs


def ledger_rows(path: str) -> list[tuple[bytes, float, str]]:
    with sqlite3.connect(path) as db:
        return [
            (bytes(d), float(x), j)
            for d, x, j in db.execute("SELECT digest, difficulty, job_id FROM shares")
        ]


@pytest.mark.parametrize("check_processes", [0, 1])
async def test_difficulty_ladder_is_credited_no_more_than_the_work(start_pool, check_processes):
    pool = await start_pool(
        settings={**SETTINGS, "pool.check_processes": check_processes}, node=NODE
    )
    k = 256
    async with await TestMiner.connect(pool.stratum_port, timeout=30.0) as miner:
        jobs = await build_ladder(miner)
        foot = jobs[0]
        en1 = miner.extranonce1
        mined = 0  # tickets of the mined headers that meet the ladder's foot
        submits: list[tuple[messages.Notify, bytes, int, tuple[int, int]]] = []
        for _ in range(HEADERS):
            en2 = secrets.token_bytes(8)
            _, winners = await trio.to_thread.run_sync(mine_job_header, foot, en1, en2)
            mined += len(winners)
            for c in winners:  # the hardest rung this ticket's digest meets
                rung = max(
                    (
                        j
                        for j in jobs
                        if meets_target(c.digest, target_from_difficulty(j.difficulty), k)
                    ),
                    key=lambda j: j.difficulty,
                )
                submits.append((rung, c.extranonce2, c.time, c.tile))
        acked: list[tuple[messages.Notify, bytes, int, tuple[int, int]]] = []
        codes: dict[int | None, int] = defaultdict(int)
        for rung, en2, ntime, tile in submits:
            r = await miner.request(
                messages.Submit(job_id=rung.job_id, extranonce2=en2, time=ntime, tile=tile)
            )
            code = None if r.error is None else r.error.code
            codes[code] += 1
            if code is None:
                assert r.result.difficulty == rung.difficulty
                acked.append((rung, en2, ntime, tile))
            else:
                assert code == ErrorCode.LOW_DIFFICULTY, r.error

    await trio.sleep(0)
    rows = await trio.to_thread.run_sync(ledger_rows, str(pool.ledger.path))
    assert len(rows) == len(acked), "every ack is one stored share, and only acks are"
    credited = sum((Fraction(d) for _, d, _ in rows), Fraction(0))

    # The fair bound, header by header.
    by_header: dict[bytes, tuple[messages.Notify, bytes, int]] = {}
    for rung, en2, ntime, _ in acked:
        header = header_of(rung, en1, en2, ntime)
        if header not in by_header:  # the easiest of the session's jobs with this header
            owners = [j for j in jobs if header_of(j, en1, en2, ntime) == header]
            by_header[header] = (min(owners, key=lambda j: j.difficulty), en2, ntime)
    fair = Fraction(0)
    for easiest, en2, ntime in by_header.values():
        _, wins = await trio.to_thread.run_sync(mine_job_header, easiest, en1, en2, ntime)
        fair += Fraction(easiest.difficulty) * len(wins)
    naive_fair = Fraction(D_LOW) * mined
    ratio = float(credited / naive_fair)
    print(
        f"\nladder of {len(jobs)} jobs, {HEADERS} headers, {mined} tickets met the foot: "
        f"credited {float(credited):.6g} vs fair {float(naive_fair):.6g} "
        f"(ratio {ratio:.3f}); answers {dict(codes)}"
    )
    assert credited <= fair, (
        f"credited {float(credited)} > fair {float(fair)} (ratio to the foot's credit {ratio:.2f})"
    )


def test_every_job_of_a_session_has_its_own_headers():
    """Jobs on one template — a difficulty ladder up and down (vardiff, suggest), the same
    difficulty twice, clean or not, on the template's or a per-session (useful) workload —
    never share a header for any (extranonce2, time)."""
    shape = Shape(64, 64, 256, 64)
    source = SyntheticSource(shape)
    block = BlockTemplate(
        height=5, prev_hash=bytes(range(32)), bits=0x1D010000, time=1_700_000_000, reward=50 * 10**8
    )
    manager = JobManager(None, source, payout_address=new_address(), tag="matmine", instance_id=0)  # type: ignore[arg-type]
    work = source.prepare(block)
    other = source.prepare(block)  # e.g. a leased unit: another workload on the same block
    template = Template(1, 1, block, work, b"MMCB-c1", "matmine", True, 0.0)
    en1 = manager.new_extranonce1()
    difficulties = [1.0, 2.0, 8.0, 4.0, 0.5, 1.0, 1.0]
    jobs = [
        manager.make_job(template, en1, d, i == 0, float(i)) for i, d in enumerate(difficulties)
    ]
    jobs += [
        manager.make_job(template, en1, 1.0, False, 9.0, workload=other, lease_id=7),
        manager.make_job(template, en1, 1.0, False, 9.5, workload=other, lease_id=7),
    ]
    assert len({j.job_id for j in jobs}) == len(jobs)
    for en2, ntime in ((bytes(8), block.time), (b"\xff" * 8, block.time + 600)):
        headers = {j.header(en2, ntime)[1] for j in jobs}
        assert len(headers) == len(jobs)
    for job in jobs:  # the job named in its coinbase, and the notify carries that coinbase
        assert job.coinbase2.endswith(f"/{job.job_id}".encode())
        assert job.notify().coinbase2 == job.coinbase2
