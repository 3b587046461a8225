"""The CPU re-check of candidates: real BLAS winners pass, corrupted ones are hardware errors.

The end-to-end half runs a real pool and a real worker whose backend is wrapped to corrupt
every winner: the worker must count hardware errors and send nothing.
"""

from __future__ import annotations

import pytest
import trio

from protocol.header import Header
from protocol.target import target_from_difficulty
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from tests.support.running import CorruptingBackend, running_pool, running_worker, wait_until
from worker.backends import open_backends
from worker.checker import Checker, check_candidate
from worker.stats import WorkerStats

SHAPE = Shape(64, 64, 256, 64)
EASY = target_from_difficulty(1e-9)  # every ticket of a tiny shape meets it


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.synthetic(bytes(range(32)), SHAPE)


def header_for(workload: Workload, nonce: int) -> bytes:
    return Header(
        1, 7, bytes(32), nonce.to_bytes(32, "little"), workload.work_root, 1_700_000_000, 0x1F00FFFF
    ).encode()


@pytest.fixture(scope="module")
def blas_winners(workload):
    backend = open_backends("blas", None, threads=1)[0]
    backend.prepare(workload)
    header = header_for(workload, 1)
    result = backend.scan(header, EASY, lambda: False)
    assert result.complete and len(result.winners) == SHAPE.tiles
    return header, result.winners


def test_real_winners_pass(workload, blas_winners):
    header, winners = blas_winners
    reference = mine_header(header, workload)
    for ti, tj, digest in winners[:5]:
        assert digest == reference.digest(ti, tj)
        result = check_candidate(workload, header, (ti, tj), digest, EASY)
        assert result.ok, result.reason
        assert result.digest == digest
        assert result.difficulty > 0


def test_flipped_digest_is_a_mismatch(workload, blas_winners):
    header, winners = blas_winners
    ti, tj, digest = winners[3]
    bad = bytes([digest[0] ^ 1]) + digest[1:]
    result = check_candidate(workload, header, (ti, tj), bad, EASY)
    assert not result.ok
    assert result.reason == "digest mismatch"
    assert result.digest == digest


def test_wrong_tile_is_a_mismatch(workload, blas_winners):
    header, winners = blas_winners
    ti, tj, digest = winners[0]
    other = (ti, (tj + 1) % SHAPE.tiles_n)
    assert not check_candidate(workload, header, other, digest, EASY).ok
    outside = check_candidate(workload, header, (SHAPE.tiles_m, 0), digest, EASY)
    assert not outside.ok and "outside" in outside.reason


def test_digest_from_another_header_is_a_mismatch(workload, blas_winners):
    _, winners = blas_winners
    ti, tj, digest = winners[0]
    assert not check_candidate(workload, header_for(workload, 2), (ti, tj), digest, EASY).ok


def test_true_digest_that_misses_the_target_is_rejected(workload, blas_winners):
    header, winners = blas_winners
    ti, tj, digest = winners[0]
    hard = target_from_difficulty(1e30)
    result = check_candidate(workload, header, (ti, tj), digest, hard)
    assert not result.ok and "share target" in result.reason


async def test_checker_books_hardware_errors_per_device(workload, blas_winners):
    header, winners = blas_winners
    stats = WorkerStats()
    checker = Checker(stats)
    ti, tj, digest = winners[0]
    assert (await checker.check("gpu0", workload, header, (ti, tj), digest, EASY)).ok
    bad = digest[:-1] + bytes([digest[-1] ^ 0x80])
    assert not (await checker.check("gpu1", workload, header, (ti, tj), bad, EASY)).ok
    assert stats.device("gpu0").hw_errors == 0 and stats.device("gpu0").candidates == 1
    assert stats.device("gpu1").hw_errors == 1
    assert stats.best.device == "gpu0" and stats.best.difficulty > 0


@pytest.mark.parametrize("mode", ["digest", "tile"])
async def test_corrupted_backend_gives_hw_errors_and_no_submit(tmp_path, mode):
    blas = open_backends("blas", None, threads=1)[0]
    corrupt = CorruptingBackend(blas, mode)
    async with running_pool(tmp_path) as pool, running_worker([pool.endpoint], [corrupt]) as w:
        await wait_until(lambda: w.stats.hw_errors >= 3, 20)
        await trio.sleep(0.2)
        assert corrupt.corrupted >= 3
        assert w.stats.device(corrupt.name).hw_errors == w.stats.device(corrupt.name).candidates
        assert sum(w.stats.shares.values()) == 0
        assert await pool.shares_received() == 0
        assert w.stats.pool_connected


def test_stats_hashrate_windows_and_counters():
    now = [1000.0]
    stats = WorkerStats(clock=lambda: now[0])
    for _ in range(20):  # 20 s of 1 MMAC/s on one device
        now[0] += 1.0
        stats.add_scan("gpu0", 1_000_000, True)
    assert stats.hashrate(10, "gpu0") == pytest.approx(1e6, rel=0.11)
    assert stats.hashrate(60) == pytest.approx(1e6, rel=0.06)  # over the 20 s since start
    now[0] += 30.0  # idle: the 10 s window empties, the 60 s one thins out
    assert stats.hashrate(10, "gpu0") == 0.0
    assert 0 < stats.hashrate(60) < 1e6
    stats.add_share("accepted", 0.5, block=True)
    stats.add_share("stale", code=21)
    stats.add_share("rejected", code=23)
    stats.add_candidate("gpu0", False)
    summary = stats.summary()
    assert summary["shares"] == {"accepted": 1, "rejected": 1, "stale": 1, "lost": 0}
    assert summary["rejects_by_code"] == {"21": 1, "23": 1}
    assert summary["blocks"] == 1 and summary["hw_errors"] == 1
    assert summary["devices"][0]["macs"] == 20_000_000
    with pytest.raises(ValueError):
        stats.add_share("weird")


def test_status_line_and_live_view_render():
    import io

    from rich.console import Console

    from worker.console import format_rate, status_line, status_table

    stats = WorkerStats()
    stats.add_scan("opencl:0:0", 3_000_000_000, True)
    stats.pool, stats.pool_connected = "127.0.0.1:3333", True
    line = status_line(stats)
    assert line.startswith("127.0.0.1:3333 | ") and "accepted 0" in line
    assert format_rate(2.5e9) == "2.50 GMAC/s" and format_rate(12) == "12 MAC/s"
    out = io.StringIO()
    Console(file=out, width=140, force_terminal=True).print(status_table(stats))
    assert "opencl:0:0" in out.getvalue() and "total" in out.getvalue()


def test_console_shows_per_device_shares_peak_ping_and_uptime():
    import io

    from rich.console import Console

    from worker.console import format_duration, status_line, status_table

    now = [1000.0]
    stats = WorkerStats(clock=lambda: now[0])
    for _ in range(12):  # 2 MMAC/s on gpu0 for 12 s, then 1 MMAC/s
        now[0] += 1.0
        stats.add_scan("gpu0", 2_000_000, True)
    for _ in range(12):
        now[0] += 1.0
        stats.add_scan("gpu0", 1_000_000, True)
    stats.add_scan("gpu1", 0, True)
    assert stats.devices["gpu0"].peak == pytest.approx(2e6, rel=0.11)
    assert stats.hashrate(10, "gpu0") < stats.devices["gpu0"].peak
    assert stats.peak >= stats.devices["gpu0"].peak
    for latency in (0.030, 0.050, 0.040):
        stats.add_share("accepted", 0.5, device="gpu0", latency=latency)
    stats.add_share("rejected", code=23, device="gpu1", latency=0.045)
    stats.add_share("lost", device="gpu1", latency=30.0)  # no answer: no ping sample
    assert stats.devices["gpu0"].shares["accepted"] == 3
    assert stats.devices["gpu1"].shares == {"accepted": 0, "rejected": 1, "stale": 0, "lost": 1}
    assert stats.ping == pytest.approx(0.045)
    summary = stats.summary()
    assert summary["ping_ms"] == 45.0 and summary["uptime_s"] == 24.0
    assert summary["devices"][0]["shares"]["accepted"] == 3
    assert summary["devices"][0]["peak_hashrate_macs"] == pytest.approx(2e6, rel=0.11)
    line = status_line(stats)
    assert "| ping 45 ms |" in line and "up 00:00:24" in line and "peak 2." in line
    assert format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3d 04:05:06"
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(status_table(stats))
    table = out.getvalue()
    gpu0 = next(row for row in table.splitlines() if "gpu0" in row)
    gpu1 = next(row for row in table.splitlines() if "gpu1" in row)
    assert "3/0/0" in gpu0 and "0/1/0" in gpu1 and "peak" in table
