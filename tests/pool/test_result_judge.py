"""Judging a result while it streams in (pool/useful/judge.py, protocol.denoise.FreivaldsRows)
on a real queue, blob store and spool files in a temporary directory."""

from __future__ import annotations

import resource
import signal
import tracemalloc

import numpy as np
import pytest
from blake3 import blake3

from pool.useful import UsefulConfig
from pool.useful.blobstore import BlobStore
from pool.useful.judge import MISMATCH, SPOOL_PREFIX, ResultStream, sweep_spools
from pool.useful.queue import WorkQueue
from pool.useful.results import FLUSH_BYTES, Passed, ResultDesk
from protocol.denoise import BLOCK_ENTRIES, FreivaldsRows, exact_product, freivalds
from protocol.errors import ErrorCode, ProtocolError
from tests.support.useful_queue_data import operands, upload


@pytest.fixture
def desk(tmp_path):
    config = UsefulConfig(unit_m=4096, unit_n=80, r=32, chunk_max=4096)
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "useful.sqlite", blobs, config)
    yield ResultDesk(queue, blobs, config)
    queue.close()


def product_of(desk: ResultDesk, lease) -> bytes:
    """The lease's padded C, computed from its operand blobs."""
    a = desk.blobs.matrix(lease.unit.a_blob).astype(np.int64)
    bt = desk.blobs.matrix(lease.unit.b_blob).astype(np.int64)
    return (a @ bt.T).astype("<i4").tobytes()


def leased(desk: ResultDesk, m: int = 48, k: int = 96, n: int = 80, seed: int = 1):
    a, b = operands(seed, m, k, n)
    desk.queue.submit("alice", a, b)
    lease = desk.queue.lease("s")
    assert lease is not None
    return lease, product_of(desk, lease)


def stream_in(desk: ResultDesk, lease, raw: bytes, sizes: list[int]) -> ResultStream:
    """Write ``raw`` through a new stream in pieces of the given sizes (cycled)."""
    stream = desk.open_stream(lease)
    offset, i = 0, 0
    while offset < len(raw):
        size = sizes[i % len(sizes)]
        stream.write([raw[offset : offset + size]])
        offset, i = offset + size, i + 1
    return stream


def judged(desk: ResultDesk, lease, stream: ResultStream):
    checked = desk.check(lease.id, stream)
    return desk.complete(checked) if isinstance(checked, Passed) else checked


@pytest.mark.parametrize("sizes", [[7], [320], [321, 5, 1000], [1 << 20]])
def test_a_correct_result_passes_whatever_its_chunk_boundaries(desk, sizes):
    lease, raw = leased(desk)
    stream = stream_in(desk, lease, raw, sizes)
    assert stream.failure is None and stream.judged_rows == lease.unit.shape.m
    assert stream.carried == 0
    verdict = judged(desk, lease, stream)
    assert verdict.passed
    unit = desk.queue.units(lease.unit.item)[0]
    assert desk.blobs.read(unit.result_blob) == raw  # the spool itself, stored
    assert not list(desk.blobs.upload_dir.glob(SPOOL_PREFIX + "*"))


@pytest.mark.parametrize("where", [0, 1, 319, 320, 5000, -4, -1])
def test_one_tampered_byte_anywhere_is_caught_and_nothing_is_stored(desk, where):
    lease, raw = leased(desk)
    desk.queue.hold_share(lease.id, {"share": 1, "digest": "d1"})
    bad = bytearray(raw)
    bad[where] ^= 0x10
    stream = stream_in(desk, lease, bytes(bad), [333])
    assert stream.failure == MISMATCH  # known as the bytes came in, before any verdict
    verdict = judged(desk, lease, stream)
    assert verdict.outcome == "fail" and verdict.reason == MISMATCH
    assert verdict.end.shares == [{"share": 1, "digest": "d1"}]  # void: the caller voids them
    assert desk.queue.get_lease(lease.id).state == "rejected"
    assert blake3(bytes(bad)).digest() not in desk.blobs
    assert not list(desk.blobs.upload_dir.glob(SPOOL_PREFIX + "*"))


def test_entries_beyond_any_product_fail_even_if_they_would_balance(desk):
    """Two entries +2³⁰ and −2³⁰ in one row (an attacker's try at float64 rounding) fail:
    no row of a product of entries in [-64, 64] has an entry beyond 64²·k."""
    lease, raw = leased(desk)
    c = np.frombuffer(raw, dtype="<i4").reshape(lease.unit.shape.m, lease.unit.shape.n).copy()
    c[3, 0] += 1 << 30
    c[3, 1] -= 1 << 30
    stream = stream_in(desk, lease, c.tobytes(), [4096])
    assert judged(desk, lease, stream).outcome == "fail"


def test_a_short_result_is_malformed_and_a_whole_bytes_result_is_judged_the_same(desk):
    lease, raw = leased(desk)
    stream = stream_in(desk, lease, raw[:-4], [1000])
    verdict = judged(desk, lease, stream)
    assert verdict.outcome == "malformed" and "incomplete" in verdict.reason
    lease = desk.queue.lease("t")
    assert judged(desk, lease, product_of(desk, lease)).passed  # bytes: through a stream too


def test_a_stream_refuses_bytes_past_the_end_and_after_it_was_dropped(desk):
    lease, raw = leased(desk)
    stream = desk.open_stream(lease)
    stream.write([raw[:100]])
    with pytest.raises(ValueError, match="runs past"):
        stream.write([raw[100:], b"\0"])
    assert stream.received == 100  # nothing of the refused write taken
    stream.close()
    with pytest.raises(ValueError, match="dropped"):
        stream.write([raw[100:]])
    assert not stream.path.exists()


def test_the_judge_has_taken_exactly_the_spooled_bytes_so_a_resume_continues_it(desk):
    """After any write the spool holds ``received`` bytes and the judge has checked the
    whole rows among them and carries the rest: resuming at ``received`` judges right."""
    lease, raw = leased(desk)
    row = 4 * lease.unit.shape.n
    stream = desk.open_stream(lease)
    for cut in (1, row - 1, row + 3, 5 * row, len(raw) - 2):
        stream.write([raw[stream.received : cut]])
        assert stream.path.stat().st_size == stream.received == cut
        assert stream.judged_rows * row + stream.carried == cut
        assert stream.judged_rows == cut // row
    stream.write([raw[stream.received :]])
    assert judged(desk, lease, stream).passed


def test_stratum_chunks_go_through_one_stream_and_are_queued_at_most_a_flush(desk):
    lease, raw = leased(desk, m=48, k=64, n=80)
    assert upload(desk, lease, "s", raw, chunk=1000).passed
    desk.queue.submit("alice", *operands(2, 4096, 64, 80))  # 1280 KiB of C: over a flush
    lease = desk.queue.lease("s2")
    assert lease is not None
    unit = lease.unit.unit_id
    raw = product_of(desk, lease)
    flushes = 0
    received = 0
    for offset in range(0, len(raw), 1000):
        data = raw[offset : offset + 1000]
        final = offset + len(data) == len(raw)
        receipt = desk.receive(lease, "s2", unit, offset, data, final)
        assert receipt.received == offset + len(data)
        assert receipt.flush == (final or receipt.received - received >= FLUSH_BYTES)
        if receipt.flush:
            desk.pending(lease.id)()
            received, flushes = receipt.received, flushes + 1
    assert flushes == 2  # one past FLUSH_BYTES, one at the final chunk
    stream = desk.take_upload(lease.id)
    assert stream.received == len(raw) and stream.failure is None
    assert judged(desk, lease, stream).passed


def test_x_is_drawn_per_upload_and_never_the_same():
    a, b = operands(3, 16, 64, 16)
    bt = np.ascontiguousarray(b.T)
    draws = {FreivaldsRows(a, bt, 3, np.random.default_rng(s))._x.tobytes() for s in range(8)}
    assert len(draws) == 8


@pytest.mark.parametrize("term_bound", [1, 1 << 40, 1 << 50, 1 << 52])
def test_exact_product_is_exact_in_blocks_whatever_the_bound(term_bound):
    rng = np.random.default_rng(7)
    left = rng.integers(-(1 << 24), 1 << 24, (70, 300), dtype=np.int64)
    right = rng.integers(0, 1 << 16, (300, 3), dtype=np.int64)
    want = left @ right  # numpy int64: exact (|sum| < 300·2⁴⁰)
    assert np.array_equal(exact_product(left.astype(np.int32), right, term_bound), want)


@pytest.mark.slow
def test_a_large_k_and_n_uses_blocks_and_stays_exact():
    """k·n ≥ 2²⁵ (float64 alone would not be exact for extreme C): blocks of the inner
    dimension keep every partial sum below 2⁵³; one entry off still fails."""
    rng = np.random.default_rng(5)
    m, k, n = 4, 8192, 4096
    a = rng.integers(-64, 65, (m, k), dtype=np.int8)
    bt = rng.integers(-64, 65, (n, k), dtype=np.int8)
    c = (a.astype(np.int64) @ bt.T.astype(np.int64)).astype(np.int32)
    assert freivalds(a, bt, c, 3, np.random.default_rng(1))
    c[2, 4000] -= 1
    assert not freivalds(a, bt, c, 3, np.random.default_rng(1))


def test_judging_memory_is_rows_in_flight_not_the_product(tmp_path):
    """A 1024×1024 unit (4 MiB of C, 1 MiB operands) streamed in 64 KiB writes: numpy and
    Python allocations peak far below one copy of C (the old judge held C, its float64
    copy and A's and Bᵀ's: 20+ MiB)."""
    size = 1024
    config = UsefulConfig(unit_m=size, unit_n=size, r=64)
    blobs = BlobStore(tmp_path / "blobs")
    queue = WorkQueue(tmp_path / "q.sqlite", blobs, config)
    try:
        desk = ResultDesk(queue, blobs, config)
        lease, raw = leased(desk, size, size, size)
        piece = 1 << 16
        tracemalloc.start()
        try:
            stream = desk.open_stream(lease)
            for offset in range(0, len(raw), piece):
                stream.write([memoryview(raw)[offset : offset + piece]])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # one write's rows as float64 (8 B per int32 entry of a 64 KiB piece, and a carried
        # row), one block of an operand converted to float64, and the vectors
        bound = 4 * piece + 8 * BLOCK_ENTRIES + 64 * size * 8
        assert peak < bound < len(raw), (peak, bound)
        assert judged(desk, lease, stream).passed
    finally:
        queue.close()


def test_spools_left_by_a_crash_are_swept(desk):
    lease, raw = leased(desk)
    stream = desk.open_stream(lease)
    stream.write([raw[:10]])
    stream.file.close()  # the process "died": its spool stays behind
    assert sweep_spools(desk.blobs) == 1
    assert not stream.path.exists()


def test_a_spool_that_cannot_take_the_bytes_drops_the_upload(desk):
    """A real write fault (the file size limit, EFBIG): the stream is dropped whole, never
    left holding bytes its judge and ``received`` do not know of."""
    lease, raw = leased(desk)
    stream = desk.open_stream(lease)
    stream.write([raw[:500]])
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, old_limit[1]))
    try:
        with pytest.raises(OSError):
            stream.write([raw[500:1200], raw[1200:8000]])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert stream.received == 500 and not stream.path.exists()
    with pytest.raises(ValueError, match="dropped"):
        stream.write([raw[500:600]])


def test_a_work_result_upload_whose_spool_fails_starts_again_at_zero(desk):
    lease, raw = leased(desk)
    unit = lease.unit.unit_id
    desk.receive(lease, "s", unit, 0, raw[:3000], False)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, old_limit[1]))
    try:
        with pytest.raises(ProtocolError, match="offset 0") as caught:
            desk.pending(lease.id)()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert caught.value.code == ErrorCode.OTHER
    with pytest.raises(ProtocolError, match="expected offset 0"):
        desk.receive(lease, "s", unit, 3000, raw[3000:4000], False)
    assert upload(desk, lease, "s", raw, chunk=4000).passed
