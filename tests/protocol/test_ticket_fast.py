"""The fast ticket check equals the reference ``verify_ticket`` bit for bit (SPEC §7–§10)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ticket_check
from protocol.errors import ProtocolError
from protocol.noise import index_pairs, noise_factors, pair_indices, pow_seed, tile_tables
from protocol.ticket import (
    HeaderNoise,
    PassArrays,
    TileCheck,
    tile_digest,
    tile_digests,
    verify_ticket,
    verify_ticket_fast,
)
from protocol.workload import ALLOWED_R, Shape, synthetic_rows


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    """Valid shapes, small enough to check many; slab counts on both sides of 64."""
    r = draw(st.sampled_from(ALLOWED_R[:4]))
    slabs = draw(st.sampled_from([4, 5, 16, 17, 33, 64, 65, 80]))
    m, n = draw(st.integers(1, 4)) * 16, draw(st.integers(1, 4)) * 16
    return Shape(m, n, min(slabs * r, 8192), r)


def blob_rows(rng: np.random.Generator, k: int, wide: bool) -> np.ndarray:
    """16 rows as a blob workload holds them: in [-64, 64], or any int8 when ``wide``."""
    low, high = (-128, 128) if wide else (-64, 65)
    return rng.integers(low, high, size=(16, k), dtype=np.int8)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes(),
    header=st.binary(min_size=128, max_size=128),
    seed=st.binary(min_size=32, max_size=32),
    where=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    source=st.sampled_from(["synthetic", "blob", "blob-any-int8"]),
    layout=st.sampled_from(["rows", "bands"]),
    cached=st.booleans(),
)
def test_fast_check_equals_reference(
    shape: Shape,
    header: bytes,
    seed: bytes,
    where: tuple[int, int],
    source: str,
    layout: str,
    cached: bool,
) -> None:
    tile = (where[0] % shape.tiles_m, where[1] % shape.tiles_n)
    k = shape.k
    if source == "synthetic":
        a = synthetic_rows(seed, "A", 16 * tile[0], 16, k)
        bt = synthetic_rows(seed, "B", 16 * tile[1], 16, k)
    else:
        rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
        wide = source == "blob-any-int8"
        a, bt = blob_rows(rng, k, wide), blob_rows(rng, k, wide)
    want = verify_ticket(header, shape, tile, a, bt)
    if layout == "bands":  # how the pool's row cache holds them: k × 16, viewed as 16 × k
        a, bt = np.ascontiguousarray(a.T).T, np.ascontiguousarray(bt.T).T
    noise = HeaderNoise.of(header, k, shape.r) if cached else None
    assert verify_ticket_fast(header, shape, tile, a, bt, noise) == want


@settings(max_examples=20, deadline=None)
@given(
    header=st.binary(min_size=128, max_size=128),
    r=st.sampled_from(ALLOWED_R),
    ti=st.integers(0, 40),
    tj=st.integers(0, 40),
)
def test_fast_noise_layout_is_the_reference_noise(header: bytes, r: int, ti: int, tj: int) -> None:
    """The gather and tables hold exactly §7's (f, g), (f', g'), EAL and EBR."""
    seed, k = pow_seed(header), 4 * r
    noise = HeaderNoise.of(header, k, r)
    for side in (0, 1):
        f, g = index_pairs(seed, "AB"[side], k, r)
        assert (noise.gather[0, side] - side * r == f).all()
        assert (noise.gather[1, side] - side * r == g).all()
    tables = tile_tables(seed, ti, tj, r)
    assert (noise_factors(seed, "A", 16 * ti, 16, r) == tables[:r].T).all()
    assert (noise_factors(seed, "B", 16 * tj, 16, r) == tables[r:].T).all()


def test_fast_check_refuses_what_the_reference_refuses() -> None:
    shape = Shape(32, 16, 128, 32)
    rows = np.zeros((16, 128), dtype=np.int8)
    header = bytes(128)
    with pytest.raises(ProtocolError, match="outside"):
        verify_ticket_fast(header, shape, (2, 0), rows, rows)
    with pytest.raises(ProtocolError, match="16 rows"):
        verify_ticket_fast(header, shape, (0, 0), rows[:15], rows)
    with pytest.raises(ValueError, match="not this header's"):
        verify_ticket_fast(header, shape, (0, 0), rows, rows, HeaderNoise.of(b"x" * 128, 128, 32))
    with pytest.raises(ValueError, match="not this header's"):
        verify_ticket_fast(header, shape, (0, 0), rows, rows, HeaderNoise.of(header, 256, 32))


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes(),
    headers=st.lists(st.binary(min_size=128, max_size=128), min_size=1, max_size=6),
    seed=st.binary(min_size=32, max_size=32),
    blob=st.booleans(),
)
def test_a_batch_of_checks_equals_the_reference(
    shape: Shape, headers: list[bytes], seed: bytes, blob: bool
) -> None:
    """Several tickets (headers, tiles, rows of their own) in one pass, each the reference."""
    rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
    checks, want = [], []
    for i, header in enumerate(headers):
        tile = (i % shape.tiles_m, (3 * i) % shape.tiles_n)
        if blob:
            a, bt = blob_rows(rng, shape.k, True), blob_rows(rng, shape.k, True)
        else:
            a = synthetic_rows(seed, "A", 16 * tile[0], 16, shape.k)
            bt = np.ascontiguousarray(synthetic_rows(seed, "B", 16 * tile[1], 16, shape.k).T).T
        want.append(verify_ticket(header, shape, tile, a, bt))
        checks.append(TileCheck(HeaderNoise.of(header, shape.k, shape.r), tile, a, bt))
    assert tile_digests(checks) == want


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes(),
    headers=st.lists(st.binary(min_size=128, max_size=128), min_size=2, max_size=4, unique=True),
    picks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 15)), min_size=2, max_size=12),
    wrong=st.integers(0, 11),
    seed=st.binary(min_size=32, max_size=32),
    chunk=st.sampled_from([1, 3 * 224, 1 << 22]),
)
def test_a_mixed_batch_equals_the_reference_one_by_one(
    shape: Shape,
    headers: list[bytes],
    picks: list[tuple[int, int]],
    wrong: int,
    seed: bytes,
    chunk: int,
) -> None:
    """Tickets of several headers and tiles, interleaved, one of them with a row changed (a
    miner's wrong rows), in passes of 1, 3 or all tickets (``CHUNK_BYTES``), its working
    arrays reused by a second batch: each digest is the reference's for its own rows, and
    the changed ticket's is not the digest of the right rows."""
    rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
    noises = [HeaderNoise.of(h, shape.k, shape.r) for h in headers]
    wrong %= len(picks)
    checks, want, right = [], [], b""
    for i, (h, t) in enumerate(picks):
        header = headers[h % len(headers)]
        tile = (t % shape.tiles_m, (t // 4) % shape.tiles_n)
        a, bt = blob_rows(rng, shape.k, True), blob_rows(rng, shape.k, True)
        if i == wrong:
            right = verify_ticket(header, shape, tile, a, bt)
            a = a.copy()
            a[3, 5] ^= 1
        want.append(verify_ticket(header, shape, tile, a, bt))
        checks.append(TileCheck(noises[h % len(headers)], tile, a, bt))
    arrays = PassArrays()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ticket_check, "CHUNK_BYTES", chunk * shape.k)
        assert tile_digests(checks, arrays) == want
        assert tile_digests(checks[::-1], arrays) == want[::-1]
    assert want[wrong] != right
    one = checks[wrong]
    assert tile_digest(one.noise, one.tile, one.a_rows, one.bt_rows, arrays) == want[wrong]


def test_a_batch_of_several_shapes_equals_the_reference() -> None:
    """One call with tickets of two ``(k, r)`` (a check process's batch of two jobs)."""
    rng = np.random.default_rng(7)
    checks, want = [], []
    for i, shape in enumerate([Shape(32, 32, 256, 32), Shape(32, 48, 512, 64)] * 3):
        header = bytes([i % 2]) * 128
        tile = (i % shape.tiles_m, i % shape.tiles_n)
        a, bt = blob_rows(rng, shape.k, False), blob_rows(rng, shape.k, False)
        want.append(verify_ticket(header, shape, tile, a, bt))
        checks.append(TileCheck(HeaderNoise.of(header, shape.k, shape.r), tile, a, bt))
    assert tile_digests(checks) == want


@pytest.mark.parametrize("r", ALLOWED_R)
def test_pair_indices_are_the_spec_formula_for_every_high_half(r: int) -> None:
    """§7's (f, g) without a remainder, for every value of ``u >> 16`` (every quotient and
    remainder by r − 1, both ends included) under several low halves, every allowed r."""
    high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    rng = np.random.default_rng(r)
    for low in (np.zeros(1 << 16), np.full(1 << 16, 0xFFFF), rng.integers(0, 1 << 16, 1 << 16)):
        u = high | low.astype(np.uint32)
        got = np.empty((2, 1, u.size), dtype=np.uint32)
        pair_indices(u.reshape(1, -1), r, got)
        wide = u.astype(np.int64)
        f = wide & (r - 1)
        assert (got[0, 0] == f).all()
        assert (got[1, 0] == (f + 1 + ((wide >> 16) % (r - 1))) % r).all()


@pytest.mark.parametrize("r", ALLOWED_R)
@pytest.mark.parametrize("slabs", [4, 16, 17])
def test_one_ticket_equals_the_reference_at_every_r(r: int, slabs: int) -> None:
    """``tile_digest`` on a new header each time, with this thread's arrays and with one
    ``PassArrays`` kept across shapes, any int8 rows (wrapping noise): the reference's."""
    shape = Shape(32, 48, slabs * r, r)
    rng = np.random.default_rng(slabs * r)
    kept = PassArrays()
    for i in range(3):
        header = rng.bytes(128)
        tile = (i % shape.tiles_m, (2 * i + 1) % shape.tiles_n)
        a, bt = blob_rows(rng, shape.k, True), blob_rows(rng, shape.k, True)
        want = verify_ticket(header, shape, tile, a, bt)
        noise = HeaderNoise.of(header, shape.k, r)
        bands = np.ascontiguousarray(a.T).T, np.ascontiguousarray(bt.T).T
        assert tile_digest(noise, tile, a, bt) == want
        assert tile_digest(noise, tile, *bands, kept) == want


def test_kept_arrays_serve_many_shapes_in_turn() -> None:
    """One ``PassArrays`` for more shapes than it keeps, shapes interleaved, and threads
    with their own: every digest the reference's."""
    shapes = [Shape(16, 16, s * r, r) for r in (32, 64) for s in (4, 5, 16)]
    rng = np.random.default_rng(3)
    cases = []
    for i in range(24):
        shape = shapes[(5 * i) % len(shapes)]
        header = rng.bytes(128)
        a, bt = blob_rows(rng, shape.k, True), blob_rows(rng, shape.k, True)
        want = verify_ticket(header, shape, (0, 0), a, bt)
        cases.append((HeaderNoise.of(header, shape.k, shape.r), a, bt, want))
    kept = PassArrays()
    assert [tile_digest(n, (0, 0), a, bt, kept) for n, a, bt, _ in cases] == [c[3] for c in cases]

    def check(case: tuple[HeaderNoise, np.ndarray, np.ndarray, bytes]) -> bool:
        noise, a, bt, want = case
        return tile_digest(noise, (0, 0), a, bt) == want

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, cases * 4))


def test_kept_one_ticket_arrays_stay_within_their_bounds() -> None:
    """A ``PassArrays`` keeps at most ``KEPT_SHAPES`` one-ticket sets and
    ``KEPT_TILE_BYTES`` of them; a set over the bound alone is used, not kept."""
    kept = PassArrays()
    for k in (128, 256, 512, 1024, 2048, 4096):
        kept.tile(k, 32)
        assert kept.nbytes <= ticket_check.KEPT_TILE_BYTES
    assert kept.tile(4096, 32) is kept.tile(4096, 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ticket_check, "KEPT_TILE_BYTES", 200 * 1024)
        big = kept.tile(2048, 64)  # ~0.4 MiB: over the bound alone
        assert kept.tile(2048, 64) is not big
        small = kept.tile(512, 32).nbytes  # kept: the older sets beyond the bound go
        assert small <= kept.nbytes <= 200 * 1024
