"""A job's cached rows are the job's own, and the share check reads them (a wrong row
fails the share); the caches stay within their byte bounds."""

import dataclasses

import numpy as np

from pool.jobs import Job, Template, job_coinbase2
from pool.share_rules import check_ticket
from pool.workloads import PreparedWork, SyntheticSource, row_band
from protocol.chain import BlockTemplate
from protocol.header import coinbase_parts
from protocol.target import digest_value, meets_target, ticket_difficulty
from protocol.ticket import verify_ticket
from protocol.workload import Shape, synthetic_rows
from toolkit.array_cache import ArrayCache

SHAPE = Shape(64, 48, 256, 64)
BLOCK = BlockTemplate(
    height=5, prev_hash=bytes(range(32)), bits=0x1D010000, time=1_700_000_000, reward=50 * 10**8
)


def job_on(work: PreparedWork, difficulty: float = 1e-9) -> Job:
    coinbase1, _ = coinbase_parts(BLOCK.height, BLOCK.reward, "mmd1" + "0" * 48, "t", 8)
    template = Template(1, 1, BLOCK, work, coinbase1, "t", True, 0.0)
    return Job("1.1.x", template, bytes(8), difficulty, True, 0.0, job_coinbase2("t", "1.1.x"))


def reference_digest(work: PreparedWork, job: Job, header: bytes, tile: tuple[int, int]) -> bytes:
    """The ticket from rows derived afresh from the job's workload seed (SPEC §4, §10)."""
    a = synthetic_rows(work.seed, "A", 16 * tile[0], 16, SHAPE.k)
    bt = synthetic_rows(work.seed, "B", 16 * tile[1], 16, SHAPE.k)
    return verify_ticket(header, SHAPE, tile, a, bt)


def test_cached_rows_are_the_jobs_own_rows() -> None:
    """Two templates in one shared cache: every tile's rows are its own seed's rows, and the
    check's digest is the reference digest of the job's rows."""
    source = SyntheticSource(SHAPE)
    works = [source.prepare(BLOCK), source.prepare(BLOCK)]
    assert len(source.rows) == 2 * (SHAPE.tiles_m + SHAPE.tiles_n)  # prefilled, both kept
    for work in works:
        job = job_on(work)
        for ti in range(SHAPE.tiles_m):
            for tj in range(SHAPE.tiles_n):
                a, bt = work.tile_rows((ti, tj))
                assert (a == synthetic_rows(work.seed, "A", 16 * ti, 16, SHAPE.k)).all()
                assert (bt == synthetic_rows(work.seed, "B", 16 * tj, 16, SHAPE.k)).all()
        for en2 in range(3):
            coinbase, header = job.header(en2.to_bytes(8, "little"), BLOCK.time)
            for tile in ((0, 0), (3, 2), (1, 2)):
                checked = check_ticket(job, coinbase, header, tile)
                assert checked.digest == reference_digest(work, job, header, tile)
    assert len(source.noise) == 2 * 3  # one entry per header, reused across its tiles


def test_a_wrong_cached_row_fails_the_share() -> None:
    """A band with one wrong entry: a share that meets its difficulty with the job's rows
    is judged on the cached rows and fails (the check does read the cache)."""
    good = SyntheticSource(SHAPE).prepare(BLOCK)
    tile = (2, 1)
    band = np.array(good.band("A", tile[0]))
    band[7, 3] = 1 - band[7, 3]  # one entry of row 16·2 + 3 of A changed
    bad = dataclasses.replace(good, rows=ArrayCache(1 << 20))
    bad.rows.put((bad.seed, "A", tile[0]), row_band(band.T))
    for en2 in range(64):  # a header whose true ticket is below the tampered one
        coinbase, header = job_on(good).header(en2.to_bytes(8, "little"), BLOCK.time)
        want = reference_digest(good, job_on(good), header, tile)
        wrong = check_ticket(job_on(bad), coinbase, header, tile).digest
        assert wrong != want
        if digest_value(wrong) > 1.01 * digest_value(want):
            break
    else:
        raise AssertionError("no header with the tampered ticket above the true one")
    difficulty = ticket_difficulty(want, SHAPE.k) * (1 - 1e-9)  # the true ticket just meets
    assert meets_target(want, job_on(good, difficulty).share_target, SHAPE.k)
    assert check_ticket(job_on(good, difficulty), coinbase, header, tile).meets_share
    assert not check_ticket(job_on(bad, difficulty), coinbase, header, tile).meets_share


def test_caches_keep_to_their_bounds() -> None:
    """Bands of many templates in a small row cache: the oldest fall out, the bytes kept
    never pass the bound, and a band that fell out is derived again, the same."""
    band_bytes = 16 * SHAPE.k
    source = SyntheticSource(SHAPE, row_cache_bytes=5 * band_bytes, noise_cache_bytes=1)
    works = [source.prepare(BLOCK) for _ in range(3)]  # too big to prefill: derived on use
    assert len(source.rows) == 0
    for work in works:
        for ti in range(SHAPE.tiles_m):
            a, _ = work.tile_rows((ti, 0))
            assert source.rows.nbytes <= 5 * band_bytes
            assert (a == synthetic_rows(work.seed, "A", 16 * ti, 16, SHAPE.k)).all()
    assert len(source.rows) == 5
    job = job_on(works[0])
    coinbase, header = job.header(bytes(8), BLOCK.time)
    checked = check_ticket(job, coinbase, header, (0, 0))
    assert checked.digest == reference_digest(works[0], job, header, (0, 0))
    assert len(source.noise) == 0  # an entry over the bound is made, not kept
