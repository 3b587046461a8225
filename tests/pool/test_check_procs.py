"""Share checks in check processes (``[pool] check_processes``): the same answers as in a
thread, what crosses the process boundary stays small, and a check process that dies loses
no share and credits none wrongly."""

from __future__ import annotations

import json
import os
import pickle
import signal
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

from pool.check_batch import CheckBatcher
from pool.check_procs import CheckProcesses, open_check_processes
from pool.check_worker import CheckCaches, ProcAnswer, ProcRequest, RowsRef, check_batches
from pool.share_rules import CheckedTicket, ShareRejected, check_tickets
from pool.workloads import SyntheticSource
from protocol.address import new_address
from protocol.errors import ErrorCode, ProtocolError
from protocol.target import bits_from_target, target_from_difficulty
from protocol.workload import Shape, Workload
from tests.pool.test_check_batch import BLOCK, job_on, reference
from tests.support.miner import TestMiner, losing_tiles


@pytest.fixture
async def processes() -> AsyncIterator[CheckProcesses]:
    async with open_check_processes(1, trio.CapacityLimiter(1)) as procs:
        assert procs is not None
        yield procs


async def test_process_answers_equal_thread_answers(processes: CheckProcesses) -> None:
    """A batch of good and bad tiles on two shapes: the process gives each request the
    digest (and the error) the thread path gives."""
    jobs = [
        job_on(SyntheticSource(Shape(64, 48, 256, 64)).prepare(BLOCK), "1.1.x"),
        job_on(SyntheticSource(Shape(32, 32, 512, 128)).prepare(BLOCK), "1.2.x"),
    ]
    requests = []
    for i in range(12):
        job = jobs[i % 2]
        coinbase, header = job.header(i.to_bytes(8, "little"), BLOCK.time)
        tile = (7, 0) if i == 5 else (i % 2, (i // 2) % 3 % 2)
        requests.append((job, coinbase, header, tile))
    threaded = check_tickets(requests)
    [in_process] = await processes.check([requests])
    for t, p in zip(threaded, in_process, strict=True):
        if isinstance(t, CheckedTicket):
            assert p == t
        else:
            assert isinstance(p, ProtocolError) and str(p) == str(t) and p.code == t.code
    assert isinstance(in_process[5], ProtocolError) and "outside" in str(in_process[5])


def test_what_crosses_is_small() -> None:
    """A share sent to a check process is its row source, shape, tile and header: a few
    hundred bytes, never the 32 rows (8 KiB at k = 256, 64 KiB at k = 2048)."""
    work = SyntheticSource(Shape(64, 64, 2048, 128)).prepare(BLOCK)
    job = job_on(work, "1.1.x")
    procs = CheckProcesses.__new__(CheckProcesses)
    procs.blob_path = None
    ref = procs.rows_ref(job)
    assert ref == ("seed", work.seed)
    _, header = job.header(bytes(8), BLOCK.time)
    request: ProcRequest = (ref, (64, 64, 2048, 128), (1, 2), header, 1e-9, BLOCK.bits)
    assert len(pickle.dumps([[request] * 8])) < 8 * 400


def die_once(
    marker: str, batches: Sequence[Sequence[ProcRequest]]
) -> tuple[list[ProcAnswer], float]:
    """A check process's batch function that kills its own process while ``marker`` exists
    (removing it first, so the next process checks for real)."""
    if os.path.exists(marker):
        os.unlink(marker)
        os.kill(os.getpid(), signal.SIGKILL)
    return check_batches(batches)


def always_die(batches: Sequence[Sequence[ProcRequest]]) -> tuple[list[ProcAnswer], float]:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@pytest.mark.slow
async def test_a_killed_check_process_is_replaced(
    processes: CheckProcesses, tmp_path: Path
) -> None:
    """The process dies mid-batch: the batch is checked again on a fresh process and every
    submit gets its own right answer; if the fresh one dies too, every submit is answered 20
    as a pool fault, and the next batch is checked again."""
    job = job_on(SyntheticSource(Shape(64, 64, 256, 64)).prepare(BLOCK), "1.1.x")
    batcher = CheckBatcher(processes.limiter, max_batch=4, processes=processes)
    marker = tmp_path / "die"
    marker.touch()
    processes.batch_fn = partial(die_once, str(marker))
    first = await processes.next_pid()
    answers: dict[int, CheckedTicket | Exception] = {}

    async def submit(i: int) -> None:
        coinbase, header = job.header(i.to_bytes(8, "little"), BLOCK.time)
        try:
            answers[i] = await batcher.check(job, coinbase, header, (i % 4, i // 4 % 4))
        except ProtocolError as exc:
            answers[i] = exc

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(submit, i)
    assert not marker.exists() and processes.broken == 1
    assert await processes.next_pid() != first
    for i in range(10):
        _, header = job.header(i.to_bytes(8, "little"), BLOCK.time)
        answer = answers[i]
        assert isinstance(answer, CheckedTicket)
        assert answer.digest == reference(job, header, (i % 4, i // 4 % 4))

    processes.batch_fn = always_die
    coinbase, header = job.header(b"\xaa" * 8, BLOCK.time)
    with trio.fail_after(60):
        with pytest.raises(ShareRejected) as caught:
            await batcher.check(job, coinbase, header, (2, 3))
    assert caught.value.code == ErrorCode.OTHER and caught.value.pool_fault
    assert "check process" in str(caught.value) and processes.broken == 3
    processes.batch_fn = check_batches
    with trio.fail_after(60):
        again = await batcher.check(job, coinbase, header, (2, 3))
    assert again.digest == reference(job, header, (2, 3))


@pytest.mark.slow
async def test_killed_check_process_under_a_real_pool(start_pool, ledger_call, tmp_path) -> None:
    """A pool with one check process: the process is killed while idle and then in the
    middle of a batch; every good share is still answered and credited once, a share whose
    checks all died is answered 20 and accepted when sent again (not a duplicate), and a
    ticket under the difficulty is still refused (23)."""
    pool = await start_pool(settings={"pool.check_processes": 1})
    processes = pool.context.checker.batcher.processes
    assert isinstance(processes, CheckProcesses)
    async with await TestMiner.connect(pool.stratum_port, timeout=30.0) as miner:
        job = await miner.login(new_address() + ".rig")
        good = await miner.shares(6, job)
        losers = await trio.to_thread.run_sync(
            losing_tiles, job, miner.extranonce1, good[0].extranonce2
        )
        assert losers
        assert (await miner.submit(good[0])).error is None

        os.kill(await processes.next_pid(), signal.SIGKILL)  # idle: the next call finds it dead
        assert (await miner.submit(good[1])).error is None

        marker = tmp_path / "die"
        marker.touch()
        processes.batch_fn = partial(die_once, str(marker))  # dies in the middle of a batch
        assert (await miner.submit(good[2])).error is None
        assert not marker.exists()
        r = await miner.submit(losers[0])
        assert r.error is not None and r.error.code == ErrorCode.LOW_DIFFICULTY

        processes.batch_fn = always_die
        r = await miner.submit(good[3])
        assert r.error is not None and r.error.code == ErrorCode.OTHER
        assert "check process" in r.error.message
        processes.batch_fn = check_batches
        assert (await miner.submit(good[3])).error is None  # not lost, not a duplicate
        assert (await miner.submit(good[3])).error.code == ErrorCode.DUPLICATE
        r = await miner.submit(losers[0])  # its key stays taken: refused again
        assert r.error is not None and r.error.code in (
            ErrorCode.LOW_DIFFICULTY,
            ErrorCode.DUPLICATE,
        )
    assert await ledger_call(pool, pool.ledger.share_count) == 4
    assert processes.broken >= 3


FAR_BITS = bits_from_target(target_from_difficulty(1e12))  # a network no ticket here meets
VECTORS = json.loads((Path(__file__).parents[2] / "protocol/vectors/mmpow1.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_check_process_code_gives_the_vectors_digests(case: dict, tmp_path: Path) -> None:
    """What a check process runs (:class:`CheckCaches`) gives every ticket of the test
    vectors its digest, with rows from the workload seed and from blob files alike (the
    blob store's layout: the matrix's int8 rows, row after row)."""
    shape = Shape(case["m"], case["n"], case["k"], case["r"])
    seed, header = bytes.fromhex(case["workload_seed"]), bytes.fromhex(case["header"])
    workload = Workload.synthetic(seed, shape)
    (tmp_path / "a.blob").write_bytes(workload.a.tobytes())
    (tmp_path / "b.blob").write_bytes(workload.bt.tobytes())
    refs: list[RowsRef] = [
        ("seed", seed),
        ("blob", str(tmp_path / "a.blob"), str(tmp_path / "b.blob")),
    ]
    for ref in refs:
        caches = CheckCaches()
        tickets = case["tickets"]
        dims = (shape.m, shape.n, shape.k, shape.r)
        requests: list[ProcRequest] = [
            (ref, dims, tuple(t["tile"]), header, 1e-9, FAR_BITS) for t in tickets
        ]
        wanted = [(bytes.fromhex(t["digest"]), True, False) for t in tickets]
        assert caches.check(requests) == wanted  # every ticket meets 1e-9, none 1e12
        outside = (ref, dims, (shape.tiles_m, 0), header, 1e-9, FAR_BITS)
        message, code = caches.check([outside])[0]
        assert code == ErrorCode.OTHER and "outside" in message
