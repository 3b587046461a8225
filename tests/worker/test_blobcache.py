"""worker/blobcache.py against the pool's BlobStore: chunked, verified, cached, bounded.

The pool side is the real ``pool.useful.blobstore.BlobStore``; one test carries the chunks
over a real TCP connection on 127.0.0.1 framed by ``protocol.connection.Connection``.
"""

import os
from functools import partial

import numpy as np
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter

from pool.useful.blobstore import BlobStore
from protocol.connection import Connection, RequestReceived, ResponseReceived
from protocol.errors import ProtocolError
from protocol.merkle import rows_root
from protocol.useful import blob_id
from protocol.work_messages import GetBlob, GetBlobResult
from worker.blobcache import (
    BlobCache,
    BlobDownload,
    BlobRejected,
    BlobSpec,
    VerifiedBlob,
    fetch_blob,
    verify_blob,
)

CHUNK = 1000


def matrix(seed, rows=32, k=128):
    return np.random.default_rng(seed).integers(-64, 65, (rows, k), dtype=np.int8)


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "pool-blobs")


def spec_of(store, m):
    info = store.put_matrix(m)
    return BlobSpec(info.blob_id, info.rows, info.k, info.rows_root)


def pool_chunks(store, tamper_at=None):
    """``get_chunk`` answering from the pool's store; optionally flips one byte."""

    async def get_chunk(bid, offset, length):
        await trio.lowlevel.checkpoint()
        data, total = store.read_chunk(bid, offset, length, max_length=CHUNK)
        if tamper_at is not None and offset <= tamper_at < offset + len(data):
            data = bytearray(data)
            data[tamper_at - offset] ^= 0x01
            data = bytes(data)
        return data, total

    return get_chunk


async def test_fetch_verifies_and_counts_bytes(store):
    m = matrix(1)
    spec = spec_of(store, m)
    registry = CollectorRegistry()
    blob_bytes = Counter("matmine_worker_blob_bytes", "blob bytes fetched", registry=registry)
    blob = await fetch_blob(spec, pool_chunks(store), CHUNK, on_bytes=blob_bytes.inc)
    assert isinstance(blob, VerifiedBlob)
    np.testing.assert_array_equal(blob.matrix, m)
    assert registry.get_sample_value("matmine_worker_blob_bytes_total") == m.nbytes


async def test_tampered_chunk_is_rejected_and_never_cached(store, tmp_path):
    m = matrix(2)
    spec = spec_of(store, m)
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
    with pytest.raises(BlobRejected, match="content does not match its hash"):
        await cache.ensure(spec, pool_chunks(store, tamper_at=1500), CHUNK)
    assert spec.blob_id not in cache and cache.total_bytes == 0
    blob = await cache.ensure(spec, pool_chunks(store), CHUNK)  # an honest pool next time
    np.testing.assert_array_equal(blob.matrix, m)
    assert spec.blob_id in cache


def test_rows_must_match_the_jobs_root_and_range(store):
    m = matrix(3)
    spec = spec_of(store, m)
    raw = m.tobytes()
    lying = BlobSpec(spec.blob_id, spec.rows, spec.k, rows_root(matrix(4)))
    with pytest.raises(BlobRejected, match="rows do not match the job's row root"):
        verify_blob(raw, lying)
    wrong_shape = BlobSpec(spec.blob_id, 16, 128, spec.rows_root)
    with pytest.raises(BlobRejected, match="is 4096 bytes, expected 2048"):
        verify_blob(raw, wrong_shape)
    bad = m.copy()
    bad[3, 3] = 100  # outside [-64, 64]: hash and root "match", the entries do not
    bad_spec = BlobSpec(blob_id(bad.tobytes()), 32, 128, rows_root(bad))
    with pytest.raises(BlobRejected, match=r"outside \[-64, 64\]"):
        verify_blob(bad.tobytes(), bad_spec)
    assert verify_blob(raw, spec).spec == spec


def test_download_refuses_chunks_it_did_not_ask_for(store):
    m = matrix(5)
    spec = spec_of(store, m)
    raw = m.tobytes()
    d = BlobDownload(spec, CHUNK)
    with pytest.raises(BlobRejected, match="was not asked for"):
        d.feed(0, raw[:CHUNK], len(raw))
    assert d.next_request() == (0, CHUNK)
    with pytest.raises(BlobRejected, match="pool says the blob is 99 bytes"):
        d.feed(0, raw[:CHUNK], 99)
    d.next_request()
    with pytest.raises(BlobRejected, match="is 10 bytes, asked for 1000"):
        d.feed(0, raw[:10], len(raw))
    d.next_request()
    with pytest.raises(BlobRejected, match="was not asked for"):
        d.feed(CHUNK, raw[CHUNK : 2 * CHUNK], len(raw))
    while (req := d.next_request()) is not None:
        offset, length = req
        d.feed(offset, raw[offset : offset + length], len(raw))
    assert d.done and d.received == len(raw)
    np.testing.assert_array_equal(d.result().matrix, m)


def test_cache_is_bounded_lru_and_reverifies_on_load(store, tmp_path):
    cache = BlobCache(tmp_path / "cache", max_bytes=3 * 4096)
    blobs = [
        verify_blob(matrix(10 + i).tobytes(), spec_of(store, matrix(10 + i))) for i in range(4)
    ]
    for i, blob in enumerate(blobs[:3]):
        assert cache.store(blob)
        os.utime(cache._path(blob.spec.blob_id), ns=(i * 10**9, i * 10**9))
    assert cache.load(blobs[0].spec) is not None  # touch: blob 0 is now the newest
    assert cache.store(blobs[3])  # evicts the least recently used: blob 1
    assert [b.spec.blob_id in cache for b in blobs] == [True, False, True, True]
    assert cache.total_bytes == 3 * 4096
    huge = verify_blob(matrix(20, rows=128).tobytes(), spec_of(store, matrix(20, rows=128)))
    assert not cache.store(huge) and huge.spec.blob_id not in cache
    with pytest.raises(TypeError):
        cache.store(matrix(1))
    # a new cache over the same directory finds the blobs (restart)
    again = BlobCache(tmp_path / "cache", max_bytes=3 * 4096)
    np.testing.assert_array_equal(again.load(blobs[3].spec).matrix, blobs[3].matrix)
    # bytes spoiled on disk: detected, dropped, not returned
    path = again._path(blobs[2].spec.blob_id)
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x40
    path.write_bytes(bytes(raw))
    assert again.load(blobs[2].spec) is None and blobs[2].spec.blob_id not in again
    # right bytes, but a job claiming other rows: the job is rejected, the cache kept
    lying = BlobSpec(blobs[3].spec.blob_id, 32, 128, bytes(32))
    with pytest.raises(BlobRejected, match="row root"):
        again.load(lying)
    assert blobs[3].spec.blob_id in again


def test_pool_chunk_reads_name_the_bad_field(store):
    spec = spec_of(store, matrix(6))
    with pytest.raises(ProtocolError, match=r"params\.length must be in \[1, 1000\], got 1001"):
        store.read_chunk(spec.blob_id, 0, 1001, max_length=CHUNK)
    with pytest.raises(ProtocolError, match=r"params\.offset 5000 is past the end \(4096"):
        store.read_chunk(spec.blob_id, 5000, 10, max_length=CHUNK)
    with pytest.raises(ProtocolError, match="no blob 0000000000000000"):
        store.read_chunk(bytes(32), 0, 10, max_length=CHUNK)
    data, total = store.read_chunk(spec.blob_id, 4000, 1000, max_length=CHUNK)
    assert len(data) == 96 and total == 4096
    assert store.info(spec.blob_id).rows_root == spec.rows_root


async def test_fetch_over_a_real_connection(store, tmp_path):
    """work.get_blob over TCP on 127.0.0.1, framed by the sans-IO Connection both ends."""
    m = matrix(7, rows=48, k=256)
    spec = spec_of(store, m)
    served = []

    async def pool_side(stream):
        conn = Connection("server")
        async with stream:
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    assert isinstance(event, RequestReceived)
                    msg = event.message
                    assert isinstance(msg, GetBlob)
                    try:
                        chunk, total = store.read_chunk(msg.hash, msg.offset, msg.length, CHUNK)
                        reply = conn.send_result(event.id, GetBlobResult(chunk, total))
                    except ProtocolError as exc:
                        reply = conn.send_error(event.id, exc.code, str(exc))
                    served.append(msg.offset)
                    await stream.send_all(reply)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, pool_side, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = Connection("client")
        buffer: list = []

        async def get_chunk(bid, offset, length):
            request_id, frame = client.send_request(GetBlob(hash=bid, offset=offset, length=length))
            await stream.send_all(frame)
            while not buffer:
                buffer.extend(client.receive_data(await stream.receive_some(65536)))
            event = buffer.pop(0)
            assert isinstance(event, ResponseReceived) and event.id == request_id
            if event.error is not None:
                raise BlobRejected(event.error.message)
            return event.result.data, event.result.total

        with trio.fail_after(10):
            cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
            blob = await cache.ensure(spec, get_chunk, CHUNK)
            np.testing.assert_array_equal(blob.matrix, m)
            assert served == list(range(0, m.nbytes, CHUNK))
            again = await cache.ensure(spec, get_chunk, CHUNK)  # from the cache: no requests
            assert len(served) == -(-m.nbytes // CHUNK)
            np.testing.assert_array_equal(again.matrix, m)
            missing = BlobSpec(bytes(32), 1, 128, bytes(32))
            with pytest.raises(BlobRejected, match="no blob"):
                await fetch_blob(missing, get_chunk, CHUNK)
        await stream.aclose()
        nursery.cancel_scope.cancel()


def test_half_written_files_of_a_crashed_worker_are_removed(tmp_path):
    leftover = tmp_path / ".tmp-abc123"
    leftover.write_bytes(b"half a blob")
    kept = tmp_path / "unrelated.txt"
    kept.write_text("not ours to remove")
    BlobCache(tmp_path, max_bytes=1 << 20)
    assert not leftover.exists()
    assert kept.exists()
