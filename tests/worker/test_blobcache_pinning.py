"""The blob cache keeps operands across units (worker/blobcache.py): LRU by use, bounded in
bytes, the current unit's blobs pinned; a prefetched blob is adopted on its content hash
and its rows are verified by the first load that names them."""

from __future__ import annotations

import numpy as np

from protocol.merkle import rows_root
from protocol.useful import blob_id
from worker.blobcache import BlobCache, BlobRejected, BlobSpec, verify_blob

ROWS, K = 32, 128
SIZE = ROWS * K


def blob(seed: int):
    m = np.random.default_rng(seed).integers(-64, 65, (ROWS, K), dtype=np.int8)
    raw = m.tobytes()
    return verify_blob(raw, BlobSpec(blob_id(raw), ROWS, K, rows_root(m)))


def test_a_units_bt_stays_while_its_a_blocks_change(tmp_path):
    cache = BlobCache(tmp_path, 2 * SIZE)  # room for one A block and the Bᵀ
    bt = blob(0)
    for seed in range(1, 5):  # four units: A blocks 1..4, one Bᵀ
        a = blob(seed)
        cache.pin(a.spec.blob_id, bt.spec.blob_id)
        assert cache.load(bt.spec) is not None or cache.store(bt)
        assert cache.store(a)
        assert bt.spec.blob_id in cache and a.spec.blob_id in cache
        assert cache.total_bytes <= 2 * SIZE


def test_pinned_blobs_are_never_evicted(tmp_path):
    cache = BlobCache(tmp_path, 2 * SIZE)
    a, bt, other = blob(1), blob(2), blob(3)
    assert cache.store(a) and cache.store(bt)
    cache.pin(a.spec.blob_id, bt.spec.blob_id)
    # a prefetch of another blob finds no room beside the pinned ones: refused, nothing lost
    assert not cache.store(other)
    assert a.spec.blob_id in cache and bt.spec.blob_id in cache
    assert other.spec.blob_id not in cache
    cache.pin(a.spec.blob_id)  # the next unit keeps only A: Bᵀ may go now
    assert cache.store(other)
    assert a.spec.blob_id in cache and bt.spec.blob_id not in cache


def test_lru_is_by_use_not_by_arrival(tmp_path):
    cache = BlobCache(tmp_path, 2 * SIZE)
    old, new, third = blob(1), blob(2), blob(3)
    assert cache.store(old) and cache.store(new)
    assert cache.load(old.spec) is not None  # used again: now the most recent
    assert cache.store(third)
    assert old.spec.blob_id in cache and new.spec.blob_id not in cache


def test_an_adopted_blob_is_verified_against_the_job_that_names_it(tmp_path):
    cache = BlobCache(tmp_path / "cache", 4 * SIZE)
    good = blob(1)
    raw = good.matrix.tobytes()
    part = tmp_path / "part"
    part.write_bytes(raw)
    assert cache.adopt(good.spec.blob_id, part, SIZE)
    assert not part.exists() and (cache.dir / f"{good.spec.blob_id.hex()}.blob").read_bytes() == raw
    # a job whose row root does not match the blob's bytes is inconsistent: rejected
    lying = BlobSpec(good.spec.blob_id, ROWS, K, bytes(32))
    try:
        cache.load(lying)
    except BlobRejected:
        pass
    else:
        raise AssertionError("rows not checked on load")
    # a job with another shape: not this blob (deleted, fetched anew)
    assert cache.load(BlobSpec(good.spec.blob_id, ROWS // 2, K, good.spec.rows_root)) is None
    assert good.spec.blob_id not in cache
    # adopted again, the right spec loads it
    part.write_bytes(raw)
    assert cache.adopt(good.spec.blob_id, part, SIZE)
    loaded = cache.load(good.spec)
    assert loaded is not None and np.array_equal(loaded.matrix, good.matrix)


def test_adopt_refuses_what_cannot_fit_and_leaves_no_part_file(tmp_path):
    cache = BlobCache(tmp_path / "cache", SIZE)
    pinned = blob(1)
    assert cache.store(pinned)
    cache.pin(pinned.spec.blob_id)
    raw = blob(2).matrix.tobytes()
    part = tmp_path / "part"
    part.write_bytes(raw)
    assert not cache.adopt(blob_id(raw), part, SIZE)
    assert not part.exists() and blob_id(raw) not in cache and pinned.spec.blob_id in cache
