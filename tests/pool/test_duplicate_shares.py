"""One ticket, one ack, one credit (issue 9, defect 2; SPEC §12.8).

A ticket is ``(header, tile)``. The pool checks that key across all of a session's jobs
before the ack, and the ledger says whether it took a share as new: a share whose digest is
already stored for another share is answered 22, not acknowledged, and counts nowhere
(accepted counter, hashrate, vardiff). Runs a real pool and real ledgers (SQLite, and
PostgreSQL where ``tests/pg.py`` can start one).
"""

from __future__ import annotations

import secrets

import pytest
import trio

from pool.jobs import Job, JobManager, SessionJobs, Template
from pool.ledger import ShareRecord, open_ledger
from pool.share_check import ShareRejected, precheck
from pool.workloads import SyntheticSource
from protocol import messages
from protocol.address import new_address
from protocol.chain import BlockTemplate
from protocol.errors import ErrorCode
from protocol.header import Header, assemble_coinbase, coinbase_hash
from protocol.target import meets_target, target_from_difficulty
from protocol.workload import Shape
from tests.support import pg
from tests.support.miner import Candidate, TestMiner, mine_job

D_A = 1e-4
D_B = 2e-4
SETTINGS = {
    "pool.start_difficulty": D_A,
    "vardiff.enabled": True,  # counts every ack, but never retargets during the test
    "vardiff.retarget_shares": 64,
    "vardiff.window_shares": 64,
    "vardiff.retarget_seconds": 3600.0,
    "vardiff.idle_seconds": 3600.0,
    "work.job_refresh_seconds": 3600.0,
    "work.job_expiry_seconds": 3600.0,
}
NODE = {"start_difficulty": 1e9}  # no block, no new template


def header_of(job: messages.Notify, extranonce1: bytes, extranonce2: bytes) -> bytes:
    """The header of a submit on ``job`` at the job's time (SPEC §10)."""
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    return Header(
        job.version,
        job.height,
        job.prev_hash,
        coinbase_hash(coinbase),
        job.work.work_root,
        job.time,
        job.bits,
    ).encode()


def only_session(pool):
    (session,) = pool.context.sessions
    return session


def accepted_metric(pool) -> float:
    return (
        pool.registry.get_sample_value("matmine_pool_shares_total", {"result": "accepted"}) or 0.0
    )


def code(r) -> int | None:
    return None if r.error is None else r.error.code


def counters(pool) -> tuple[int, float, int, float]:
    """What an ack moves: the session's accepted count, hashrate, vardiff, the metric."""
    s = only_session(pool)
    return (s.accepted, s.hashrate.total_difficulty, len(s.vardiff._shares), accepted_metric(pool))


async def settled(pool, vardiff_shares: int) -> tuple[int, float, int, float]:
    """The counters once vardiff has seen ``vardiff_shares`` shares (an ack is sent before
    vardiff counts it)."""
    with trio.fail_after(10):
        while counters(pool)[2] < vardiff_shares:
            await trio.sleep(0.01)
    return counters(pool)


async def test_same_ticket_on_two_jobs_of_one_template_is_acknowledged_once(
    start_pool, ledger_call
):
    pool = await start_pool(settings=SETTINGS, node=NODE)
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job_a = await miner.login(new_address() + ".twice")
        r = await miner.request(messages.SuggestDifficulty(difficulty=D_B))
        assert r.error is None
        job_b = await miner.next_job()
        assert job_b.difficulty == D_B and not job_b.clean
        assert (job_b.height, job_b.work.work_root) == (job_a.height, job_a.work.work_root)
        # A ticket of job A that meets both difficulties, then the same (extranonce2,
        # time, tile) on job B. If B's header were A's (a header that does not name its
        # job), that is the same ticket: a duplicate. With B's own header it is another
        # ticket: pick one that is no share there (it must then be refused as too low).
        chosen: Candidate | None = None
        same_header = False
        with trio.fail_after(30):
            while chosen is None:
                en2 = secrets.token_bytes(8)
                same_header = header_of(job_a, miner.extranonce1, en2) == header_of(
                    job_b, miner.extranonce1, en2
                )
                on_b = {
                    c.tile
                    for c in await trio.to_thread.run_sync(mine_job, job_b, miner.extranonce1, en2)
                }
                for c in await miner.find(job_a, extranonce2=en2):
                    if meets_target(c.digest, target_from_difficulty(D_B), 256) and (
                        same_header or c.tile not in on_b
                    ):
                        chosen = c
                        break
        warm_up, tail = (await miner.shares(2, job_a))[:2]
        assert chosen not in (warm_up, tail)
        assert code(await miner.submit(warm_up)) is None
        assert code(await miner.submit(chosen)) is None
        before = await settled(pool, 2)  # vardiff counts every ack
        again = Candidate(
            job_b.job_id, chosen.extranonce2, chosen.time, chosen.tile, chosen.digest, False
        )
        r = await miner.submit(again)
        assert code(r) == (ErrorCode.DUPLICATE if same_header else ErrorCode.LOW_DIFFICULTY), r
        assert not same_header, "each job's coinbase names the job: headers are its own"
        assert code(await miner.submit(chosen)) == ErrorCode.DUPLICATE
        # One more good share: the counters moved by exactly that one since ``before``.
        assert code(await miner.submit(tail)) is None
        after = await settled(pool, 3)
        assert after[0] == before[0] + 1 and after[3] == before[3] + 1
        assert after[1] == pytest.approx(before[1] + D_A) and after[2] == before[2] + 1 == 3
    assert await ledger_call(pool, pool.ledger.share_count) == 3


async def test_a_ticket_the_ledger_already_holds_is_a_duplicate_not_an_ack(start_pool, ledger_call):
    pool = await start_pool(settings=SETTINGS, node=NODE)
    async with await TestMiner.connect(pool.stratum_port) as miner:
        job = await miner.login(new_address() + ".late")
        first, taken, replayed = (await miner.shares(3, job))[:3]
        assert code(await miner.submit(first)) is None
        # Another share already holds ``taken``'s digest (another session and job).
        other = ShareRecord(
            taken.digest,
            1.0,
            new_address(),
            "other",
            "other-job",
            job.height,
            D_A,
            1.0,
            b"another!",
        )
        assert await ledger_call(pool, pool.ledger.insert_shares, [other]) == 1
        # ``replayed`` was stored by this very share before (a commit whose outcome the
        # pool lost, e.g. a PostgreSQL connection dropped at COMMIT): that is this share.
        mine = ShareRecord(
            replayed.digest,
            1.0,
            new_address(),
            "rig",
            replayed.job_id,
            job.height,
            D_A,
            1.0,
            miner.session_id,
        )
        assert await ledger_call(pool, pool.ledger.insert_shares, [mine]) == 1
        before = await settled(pool, 1)  # vardiff counts every ack
        r = await miner.submit(taken)
        assert code(r) == ErrorCode.DUPLICATE and "already credited" in r.error.message
        assert code(await miner.submit(replayed)) is None
        after = await settled(pool, 2)
        assert (after[0], after[3]) == (before[0] + 1, before[3] + 1)
        assert after[1] == pytest.approx(before[1] + D_A) and after[2] == before[2] + 1 == 2
    assert await ledger_call(pool, pool.ledger.share_count) == 3


def test_the_duplicate_key_spans_all_of_a_sessions_jobs():
    """Should two jobs of a session ever produce one header, the second submit of a ticket
    is a duplicate whichever job it names (SPEC §12.8: the key is (H(header), tile))."""
    shape = Shape(64, 64, 256, 64)
    source = SyntheticSource(shape)
    block = BlockTemplate(
        height=5, prev_hash=bytes(32), bits=0x1D010000, time=1_700_000_000, reward=50 * 10**8
    )
    manager = JobManager(None, source, payout_address=new_address(), tag="matmine", instance_id=0)  # type: ignore[arg-type]
    template = Template(1, 1, block, source.prepare(block), b"MMCB-c1", "matmine", True, 0.0)
    en1 = manager.new_extranonce1()
    job_a = manager.make_job(template, en1, 1.0, True, 0.0)
    job_b = Job("twin", template, en1, 4.0, False, 1.0, job_a.coinbase2)  # same coinbase
    book = SessionJobs(16, 600.0)
    book.add(job_a, 0.0)
    book.add(job_b, 1.0)
    submit = messages.Submit(job_id="x", extranonce2=bytes(8), time=block.time, tile=(1, 2))
    precheck(book, job_a, submit, 100)
    with pytest.raises(ShareRejected) as caught:
        precheck(book, job_b, submit, 100)
    assert caught.value.code == ErrorCode.DUPLICATE
    precheck(
        book,
        job_b,
        messages.Submit(job_id="x", extranonce2=bytes(8), time=block.time, tile=(2, 1)),
        100,
    )


@pytest.fixture(params=pg.BACKENDS)
def ledger(request, tmp_path):
    with open_ledger(pg.ledger_target(request.param, request.config, tmp_path)) as led:
        yield led


def record(n: int, session: bytes = b"session1", job: str = "j1") -> ShareRecord:
    return ShareRecord(
        n.to_bytes(32, "little"), 1000.0 + n, "mmd1" + "a" * 48, "rig", job, 7, 1.0, 10.0, session
    )


def test_store_shares_says_which_shares_it_holds(ledger):
    assert ledger.store_shares([]) == []
    assert ledger.store_shares([record(1), record(2)]) == [True, True]
    # Within one batch the second of one digest is a duplicate; one stored for another
    # session or job is too; the same share again (same session and job) is held.
    batch = [record(3), record(3), record(1, session=b"session2"), record(2, job="j2"), record(4)]
    assert ledger.store_shares(batch) == [True, False, False, False, True]
    assert ledger.store_shares([record(1), record(5), record(1)]) == [True, True, False]
    assert ledger.share_count() == 5
    assert ledger.insert_shares([record(5), record(6)]) == 1  # unchanged: counts new rows
