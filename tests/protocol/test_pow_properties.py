"""Property tests of the mmpow-1 reference, including against a literal reading of the spec."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.denoise import denoise, freivalds
from protocol.hashing import HK, X
from protocol.noise import pow_seed
from protocol.ticket import mine_header, verify_ticket
from protocol.workload import Shape, Workload

SHAPES = st.sampled_from(
    [
        Shape(16, 16, 128, 32),
        Shape(32, 16, 160, 32),
        Shape(16, 48, 256, 64),
        Shape(32, 32, 512, 128),
    ]
)
SEEDS = st.binary(min_size=32, max_size=32)
HEADERS = st.binary(min_size=128, max_size=128)


def literal_digest(header: bytes, a: np.ndarray, bt: np.ndarray, r: int, ti: int, tj: int) -> bytes:
    """One ticket exactly as SPEC §7–8 word it: scalar noise, int64 slabs, u32 wrap."""
    seed = pow_seed(header)
    k = a.shape[1]

    def pairs(label):
        stream = X(seed, label, 4 * k)
        out = []
        for ll in range(k):
            u = int.from_bytes(stream[4 * ll : 4 * ll + 4], "little")
            f = u & (r - 1)
            out.append((f, (f + 1 + ((u >> 16) % (r - 1))) % r))
        return out

    def noisy(rows, first, label, idx):
        res = np.empty(rows.shape, dtype=np.int64)
        for i in range(rows.shape[0]):
            e = [(b & 63) - 32 for b in X(seed, label, r, (first + i) * r)]
            for ll, (f, g) in enumerate(idx):
                res[i, ll] = int(rows[i, ll]) + e[f] - e[g]
        return res

    ap = noisy(a[16 * ti : 16 * ti + 16], 16 * ti, b"mmpow1/EAL", pairs(b"mmpow1/SA"))
    bp = noisy(bt[16 * tj : 16 * tj + 16], 16 * tj, b"mmpow1/EBR", pairs(b"mmpow1/SB"))
    acc = np.zeros((16, 16), dtype=np.int64)
    j = [0] * 16
    j[0], j[1] = ti, tj
    for s in range(k // r):
        acc += ap[:, s * r : (s + 1) * r] @ bp[:, s * r : (s + 1) * r].T
        x = 0
        for v in acc.flat:
            x ^= int(v) & 0xFFFFFFFF
        w = j[s % 16]
        j[s % 16] = (((w << 13) | (w >> 19)) & 0xFFFFFFFF) ^ x
    return HK(seed, b"".join(v.to_bytes(4, "little") for v in j))


@settings(max_examples=8, deadline=None)
@given(SHAPES, SEEDS, HEADERS, st.data())
def test_reference_matches_literal_spec(shape, wseed, header, data):
    w = Workload.synthetic(wseed, shape)
    ti = data.draw(st.integers(0, shape.tiles_m - 1))
    tj = data.draw(st.integers(0, shape.tiles_n - 1))
    assert mine_header(header, w).digest(ti, tj) == literal_digest(
        header, w.a, w.bt, shape.r, ti, tj
    )


@settings(max_examples=20, deadline=None)
@given(SHAPES, SEEDS, HEADERS, st.data())
def test_verify_ticket_equals_full_transcript(shape, wseed, header, data):
    w = Workload.synthetic(wseed, shape)
    work = mine_header(header, w)
    ti = data.draw(st.integers(0, shape.tiles_m - 1))
    tj = data.draw(st.integers(0, shape.tiles_n - 1))
    a_rows, b_rows = w.a[16 * ti : 16 * ti + 16], w.bt[16 * tj : 16 * tj + 16]
    assert verify_ticket(header, shape, (ti, tj), a_rows, b_rows) == work.digest(ti, tj)


@settings(max_examples=20, deadline=None)
@given(SHAPES, HEADERS, st.integers(0, 2**32 - 1))
def test_denoise_is_exact(shape, header, rng_seed):
    rng = np.random.default_rng(rng_seed)
    a = rng.integers(-64, 65, size=(shape.m, shape.k), dtype=np.int8)
    bt = rng.integers(-64, 65, size=(shape.n, shape.k), dtype=np.int8)
    work = mine_header(header, Workload(shape, a, bt))
    ab = denoise(work.noisy_product, a, bt, pow_seed(header), shape.r)
    assert np.array_equal(ab, a.astype(np.int64) @ bt.astype(np.int64).T)
    assert freivalds(a, bt, ab, 3, rng)


@settings(max_examples=25, deadline=None)
@given(SHAPES, SEEDS, HEADERS, st.data())
def test_one_changed_byte_changes_the_digest(shape, wseed, header, data):
    w = Workload.synthetic(wseed, shape)
    ti = data.draw(st.integers(0, shape.tiles_m - 1))
    tj = data.draw(st.integers(0, shape.tiles_n - 1))
    a_rows = w.a[16 * ti : 16 * ti + 16].copy()
    b_rows = w.bt[16 * tj : 16 * tj + 16].copy()
    base = verify_ticket(header, shape, (ti, tj), a_rows, b_rows)
    what = data.draw(st.sampled_from(["a", "b", "header", "tile"]))
    if what in ("a", "b"):
        rows = a_rows if what == "a" else b_rows
        i = data.draw(st.integers(0, 15))
        col = data.draw(st.integers(0, shape.k - 1))
        rows[i, col] = rows[i, col] + 1 if rows[i, col] < 64 else 63
    elif what == "header":
        pos = data.draw(st.integers(0, 127))
        header = header[:pos] + bytes([header[pos] ^ 1]) + header[pos + 1 :]
    else:
        tile_count = shape.tiles_m * shape.tiles_n
        if tile_count == 1:
            return
        other = data.draw(
            st.integers(0, tile_count - 1).filter(lambda t: t != ti * shape.tiles_n + tj)
        )
        ti, tj = divmod(other, shape.tiles_n)
    assert verify_ticket(header, shape, (ti, tj), a_rows, b_rows) != base


@settings(max_examples=30, deadline=None)
@given(SHAPES, st.integers(0, 2**32 - 1), st.integers(-3, 3).filter(bool))
def test_wrong_product_fails_freivalds(shape, rng_seed, delta):
    rng = np.random.default_rng(rng_seed)
    a = rng.integers(-64, 65, size=(shape.m, shape.k), dtype=np.int8)
    bt = rng.integers(-64, 65, size=(shape.n, shape.k), dtype=np.int8)
    c = (a.astype(np.int64) @ bt.astype(np.int64).T).astype(np.int32)
    assert freivalds(a, bt, c, 3, rng)
    i, j = rng.integers(0, shape.m), rng.integers(0, shape.n)
    c[i, j] += delta
    assert not freivalds(a, bt, c, 3, rng)
    assert not freivalds(a, bt, c[:, :-1], 3, rng)
