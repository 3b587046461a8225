"""Share checks in batches: every submit gets its own answer, in any mix of jobs, errors
and cancellations, and the queue never stalls."""

from collections.abc import AsyncIterator

import pytest
import trio

from pool.check_batch import CheckBatcher
from pool.check_procs import open_check_processes
from pool.jobs import Job, Template, job_coinbase2
from pool.share_rules import CheckedTicket
from pool.workloads import PreparedWork, SyntheticSource
from protocol.chain import BlockTemplate
from protocol.errors import ProtocolError
from protocol.header import coinbase_parts
from protocol.ticket import verify_ticket
from protocol.workload import Shape, synthetic_rows

BLOCK = BlockTemplate(
    height=5, prev_hash=bytes(range(32)), bits=0x1D010000, time=1_700_000_000, reward=50 * 10**8
)


def job_on(work: PreparedWork, job_id: str) -> Job:
    coinbase1, _ = coinbase_parts(BLOCK.height, BLOCK.reward, "mmd1" + "0" * 48, "t", 8)
    template = Template(1, 1, BLOCK, work, coinbase1, "t", True, 0.0)
    return Job(job_id, template, bytes(8), 1e-9, True, 0.0, job_coinbase2("t", job_id))


def reference(job: Job, header: bytes, tile: tuple[int, int]) -> bytes:
    work = job.template.work
    shape = work.shape
    a = synthetic_rows(work.seed, "A", 16 * tile[0], 16, shape.k)
    bt = synthetic_rows(work.seed, "B", 16 * tile[1], 16, shape.k)
    return verify_ticket(header, shape, tile, a, bt)


@pytest.fixture(params=["threads", "processes"])
async def batcher(request: pytest.FixtureRequest) -> AsyncIterator[CheckBatcher]:
    """A batcher of 5-share batches on 2 check threads, or on 2 check processes."""
    count = 2 if request.param == "processes" else 0
    async with open_check_processes(count, trio.CapacityLimiter(2)) as processes:
        limiter = trio.CapacityLimiter(2) if processes is None else processes.limiter
        yield CheckBatcher(limiter, max_batch=5, processes=processes)


async def test_batched_checks_answer_each_submit_its_own(batcher: CheckBatcher) -> None:
    """60 concurrent submits on jobs of two shapes, a few with a tile off the grid and a few
    cancelled while queued: each of the rest gets its own reference digest, the bad ones
    their own error, and a submit after all that is still answered (in threads and in
    check processes alike)."""
    jobs = [
        job_on(SyntheticSource(Shape(64, 48, 256, 64)).prepare(BLOCK), "1.1.x"),
        job_on(SyntheticSource(Shape(32, 32, 512, 128)).prepare(BLOCK), "1.2.x"),
    ]
    answers: dict[int, CheckedTicket | Exception] = {}
    led: dict[int, CheckedTicket | Exception] = {}  # cancelled, but answered while it led
    wanted: dict[int, bytes] = {}

    async def submit(i: int) -> None:
        job = jobs[i % 2]
        coinbase, header = job.header(i.to_bytes(8, "little"), BLOCK.time)
        tile = (9, 0) if i % 13 == 5 else (i % 2, (i // 2) % 2)
        if tile != (9, 0):
            wanted[i] = reference(job, header, tile)
        try:
            if i % 11 == 7:
                with trio.move_on_after(0):
                    try:
                        led[i] = await batcher.check(job, coinbase, header, tile)
                    except ProtocolError as exc:
                        led[i] = exc
                return
            answers[i] = await batcher.check(job, coinbase, header, tile)
        except ProtocolError as exc:
            answers[i] = exc

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(submit, i)
        for i in range(60):
            if i % 11 == 7:
                # a submit that found a free lane led its own batch in a shielded scope,
                # answered before its cancel could land: then with its own answer
                assert i not in answers
                if i in led and i % 13 == 5:
                    assert isinstance(led[i], ProtocolError) and "outside" in str(led[i])
                elif i in led:
                    assert isinstance(led[i], CheckedTicket) and led[i].digest == wanted[i]
            elif i % 13 == 5:
                answer = answers[i]
                assert isinstance(answer, ProtocolError) and "outside" in str(answer)
            else:
                answer = answers[i]
                assert isinstance(answer, CheckedTicket) and answer.digest == wanted[i]
        job = jobs[0]
        coinbase, header = job.header(b"\xee" * 8, BLOCK.time)
        last = await batcher.check(job, coinbase, header, (1, 1))
        assert last.digest == reference(job, header, (1, 1))
