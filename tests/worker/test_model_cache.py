"""Weights that stay (SPEC §12.12.1): models by id on disk and in memory, fetched once,
verified on every read, least recently used first, never evicted while a unit runs."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from protocol.model import reference_pass, save_model
from tests.support.model_data import layer_header, random_inputs, random_model
from toolkit.settings import ConfigError, check_bounds, from_dict
from worker.backends.blas import BlasBackend
from worker.model_cache import ModelCache, ModelRejected, ResidentModel
from worker.model_pass import run_unit_in_thread
from worker.model_settings import ModelConfig


class Pool:
    """The pool's side of fetching: model files by id, counting every fetch."""

    def __init__(self, *models) -> None:
        self.files = {model.model_id: save_model(model) for model in models}
        self.fetched: list[bytes] = []

    async def fetch(self, model_id: bytes) -> bytes:
        self.fetched.append(model_id)
        return self.files[model_id]


def models(count: int, widths=(40, 72, 24)):
    rng = np.random.default_rng(31)
    return [random_model(rng, widths) for _ in range(count)]


async def test_a_model_fetched_once_serves_many_units(tmp_path):
    (model,) = models(1)
    pool = Pool(model)
    cache = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=1 << 20)
    backend, limiter = BlasBackend(threads=1), trio.CapacityLimiter(1)
    outputs = []
    xs = [random_inputs(np.random.default_rng(seed), 17, 40) for seed in range(3)]
    for x in xs:
        async with cache.use(model.model_id, pool.fetch) as resident:
            assert cache.pinned == {model.model_id}
            outcome = await run_unit_in_thread(
                resident, x, 64, backend, layer_header, 1 << 256, limiter
            )
            outputs.append(outcome.output)
            outcome.close()
        assert cache.pinned == frozenset()
    assert pool.fetched == [model.model_id]
    assert (cache.stats.fetches, cache.stats.disk_loads, cache.stats.memory_hits) == (1, 0, 2)
    assert backend.weights_converted == model.depth  # each layer's float32 B made once
    for y, x in zip(outputs, xs, strict=True):
        assert np.array_equal(y, reference_pass(model, x).output)
    # a worker restarted on the same directory reads it from disk, verified, not the pool
    again = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=1 << 20)
    resident = await again.acquire(model.model_id, pool.fetch)
    assert resident.model.model_id == model.model_id and pool.fetched == [model.model_id]
    assert again.stats.disk_loads == 1 and again.stats.fetches == 0
    again.release(resident)
    with pytest.raises(ValueError, match="not acquired"):
        again.release(resident)


async def test_spoiled_file_is_fetched_again_and_wrong_bytes_are_refused(tmp_path):
    first, second = models(2)
    pool = Pool(first, second)
    cache = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=0)
    async with cache.use(first.model_id, pool.fetch):
        pass
    path = tmp_path / f"{first.model_id.hex()}.npz"
    path.write_bytes(pool.files[second.model_id])  # the file now holds another model
    cache = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=0)
    async with cache.use(first.model_id, pool.fetch) as resident:
        assert resident.model_id == first.model_id
    assert pool.fetched == [first.model_id, first.model_id]
    assert path.read_bytes() == pool.files[first.model_id]

    pool.files[second.model_id] = pool.files[first.model_id]  # a pool that sends the wrong file
    with pytest.raises(ModelRejected, match="the bytes are model"):
        await cache.acquire(second.model_id, pool.fetch)
    pool.files[second.model_id] = b"not a model"
    with pytest.raises(ModelRejected, match=r"not a readable \.npz"):
        await cache.acquire(second.model_id, pool.fetch)
    assert second.model_id not in cache and cache.stats.rejected == 2
    assert cache.pinned == frozenset()


async def test_least_recently_used_goes_first_but_never_a_pinned_one(tmp_path):
    first, second, third = models(3)
    pool = Pool(first, second, third)
    size = len(pool.files[first.model_id])
    cache = ModelCache(tmp_path, disk_bytes=2 * size + size // 2, memory_bytes=0)
    held = await cache.acquire(first.model_id, pool.fetch)  # pinned throughout
    async with cache.use(second.model_id, pool.fetch):
        pass
    async with cache.use(third.model_id, pool.fetch):  # evicts second (first is pinned)
        pass
    assert first.model_id in cache and third.model_id in cache
    assert second.model_id not in cache and cache.stats.evicted["disk"] == 1
    assert cache.disk_total <= cache.disk_bytes
    # memory: with no room, only the pinned model stays resident
    assert cache.resident_bytes == held.nbytes
    cache.release(held)
    assert cache.resident_bytes == 0


async def test_concurrent_units_of_one_model_fetch_it_once(tmp_path):
    (model,) = models(1)
    pool = Pool(model)
    cache = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=1 << 20)
    got = []

    async def unit() -> None:
        async with cache.use(model.model_id, pool.fetch) as resident:
            got.append(resident)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(unit)
    assert pool.fetched == [model.model_id] and len({id(r) for r in got}) == 1
    assert cache.pinned == frozenset()


def test_model_settings_bound_the_cache_and_the_openings(tmp_path):
    config = from_dict(
        ModelConfig,
        {"cache_dir": str(tmp_path / "m"), "disk_max_bytes": 1000, "openings_memory_bytes": 0},
    )
    check_bounds(config)
    cache = config.open_cache()
    assert (cache.dir, cache.disk_bytes) == (tmp_path / "m", 1000)
    assert config.openings_path() == tmp_path / "model-openings"
    with pytest.raises(ConfigError, match="disk_max_bytes"):
        check_bounds(from_dict(ModelConfig, {"disk_max_bytes": -1}))


async def test_memory_keeps_the_recent_model_and_its_operands_are_made_once(tmp_path):
    first, second = models(2)
    pool = Pool(first, second)
    probe = ResidentModel(first)
    probe.operands(64)
    cache = ModelCache(tmp_path, disk_bytes=1 << 20, memory_bytes=probe.nbytes + 100)
    async with cache.use(first.model_id, pool.fetch) as resident:
        operands = resident.operands(64)
    async with cache.use(first.model_id, pool.fetch) as again:  # from memory
        assert again is resident and again.operands(64) is operands
    async with cache.use(second.model_id, pool.fetch) as other:
        other.operands(64)
    async with cache.use(first.model_id, pool.fetch) as back:  # memory held only one
        assert back is not resident
    assert (cache.stats.fetches, cache.stats.memory_hits, cache.stats.disk_loads) == (2, 1, 1)
    assert cache.stats.evicted["memory"] >= 1 and pool.fetched == [first.model_id, second.model_id]
