"""Weights that stay: the models a worker runs, on disk and in memory, by ``model_id``.

A model job names its model by ``model_id`` (SPEC §12.12.1), the BLAKE3 of the model's
canonical bytes, so a model is content-addressed: :class:`ModelCache` keeps each model's
``.npz`` under ``directory`` (at most ``disk_bytes`` in all) and the loaded models in memory
(at most ``memory_bytes``, weights and their padded ``Bᵀ`` operands counted), both least
recently used first, never evicting a model a unit is running on (pinned by
:meth:`ModelCache.acquire` until :meth:`ModelCache.release`). A file is verified against
its id whenever it is read (a spoiled file is deleted and fetched again); fetched bytes
that are not the named model are refused (:class:`ModelRejected`) and never stored. So a
model fetched once serves every later unit of it.

:class:`ResidentModel` is one loaded model with what every unit of it shares: per slab
width ``r``, each layer's padded ``W_lᵀ`` and its ``b_root`` (:class:`LayerOperands`),
made once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from protocol.errors import ProtocolError
from protocol.merkle import rows_root
from protocol.model import Model, load_model
from protocol.model_work import layer_shape, padded_weights_t
from protocol.workload import TILE

FetchModel = Callable[[bytes], Awaitable[bytes]]
"""``await fetch(model_id) -> bytes``: the model's ``.npz`` file from the pool."""


class ModelRejected(Exception):
    """Bytes fetched for a model id that are not a valid model of that id."""


@dataclass(frozen=True, eq=False)
class LayerOperands:
    """What every unit of one layer shares at one ``r``: padded ``Bᵀ`` and its root."""

    bt: np.ndarray  # n' × k' int8, read-only
    b_root: bytes


class ResidentModel:
    """A loaded, verified model and its per-``r`` operands (made once, thread-safe)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.model_id = model.model_id
        self._operands: dict[int, tuple[LayerOperands, ...]] = {}
        self._lock = threading.Lock()

    def operands(self, r: int) -> tuple[LayerOperands, ...]:
        """Each layer's padded ``W_lᵀ`` and ``b_root`` for preferred slab width ``r``."""
        with self._lock:
            if r not in self._operands:
                layers = []
                for index in range(self.model.depth):
                    bt = padded_weights_t(
                        self.model, index, layer_shape(self.model, index, TILE, r)
                    )
                    bt.setflags(write=False)
                    layers.append(LayerOperands(bt, rows_root(bt)))
                self._operands[r] = tuple(layers)
            return self._operands[r]

    @property
    def nbytes(self) -> int:
        """Bytes held: the weights and every padded operand made so far."""
        weights = sum(
            layer.w.nbytes
            + layer.bias.nbytes
            + (0 if layer.scale is None else layer.scale.nbytes)
            + (0 if layer.shift is None else layer.shift.nbytes)
            for layer in self.model.layers
        )
        with self._lock:
            made = sum(op.bt.nbytes for ops in self._operands.values() for op in ops)
        return int(weights + made)


def verified_model(data: bytes, model_id: bytes) -> Model:
    """The model in ``data`` if it is a valid model whose id is ``model_id``."""
    short = model_id.hex()[:16]
    try:
        model = load_model(data)
    except ProtocolError as exc:
        raise ModelRejected(f"model {short}…: {exc}") from None
    if model.model_id != model_id:
        raise ModelRejected(f"model {short}…: the bytes are model {model.model_id.hex()[:16]}…")
    return model


@dataclass
class ModelCacheStats:
    """How models were found: fetched from the pool, read from disk, already in memory."""

    fetches: int = 0
    disk_loads: int = 0
    memory_hits: int = 0
    rejected: int = 0
    evicted: dict[str, int] = field(default_factory=lambda: {"disk": 0, "memory": 0})


class ModelCache:
    """Models by id: ``.npz`` files under ``directory`` and loaded models in memory."""

    def __init__(
        self,
        directory: str | Path,
        disk_bytes: int,
        memory_bytes: int,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if disk_bytes < 0 or memory_bytes < 0:
            raise ValueError("cache bounds must be ≥ 0")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk_bytes = disk_bytes
        self.memory_bytes = memory_bytes
        self.limiter = limiter or trio.CapacityLimiter(1)
        self.stats = ModelCacheStats()
        self._resident: OrderedDict[bytes, ResidentModel] = OrderedDict()
        self._pins: dict[bytes, int] = {}
        self._locks: dict[bytes, trio.Lock] = {}
        self._last_use_ns = 0
        for leftover in self.dir.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)

    # -- the async face -----------------------------------------------------------------

    async def acquire(self, model_id: bytes, fetch: FetchModel) -> ResidentModel:
        """The model, pinned until :meth:`release`: from memory, else disk, else fetched."""
        if len(model_id) != 32:
            raise ValueError("a model id is 32 bytes")
        lock = self._locks.setdefault(model_id, trio.Lock())
        async with lock:  # one load or fetch per model at a time; the others wait for it
            resident = self._resident.get(model_id)
            if resident is not None:
                self.stats.memory_hits += 1
            else:
                resident = await self._load_or_fetch(model_id, fetch)
            self._pins[model_id] = self._pins.get(model_id, 0) + 1
            self._resident[model_id] = resident
            self._resident.move_to_end(model_id)
            self._evict_memory()
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._locks.pop(model_id, None)
        return resident

    def release(self, resident: ResidentModel) -> None:
        """Unpin a model acquired before (it stays cached while there is room)."""
        left = self._pins.get(resident.model_id, 0) - 1
        if left < 0:
            raise ValueError("release of a model that was not acquired")
        if left:
            self._pins[resident.model_id] = left
        else:
            del self._pins[resident.model_id]
        self._evict_memory()

    @contextlib.asynccontextmanager
    async def use(self, model_id: bytes, fetch: FetchModel) -> AsyncIterator[ResidentModel]:
        """``async with cache.use(id, fetch) as resident:`` acquire … release."""
        resident = await self.acquire(model_id, fetch)
        try:
            yield resident
        finally:
            self.release(resident)

    async def _load_or_fetch(self, model_id: bytes, fetch: FetchModel) -> ResidentModel:
        model = await trio.to_thread.run_sync(self._load_disk, model_id, limiter=self.limiter)
        if model is not None:
            self.stats.disk_loads += 1
            return ResidentModel(model)
        data = await fetch(model_id)
        self.stats.fetches += 1
        try:
            model = await trio.to_thread.run_sync(
                verified_model, data, model_id, limiter=self.limiter
            )
        except ModelRejected:
            self.stats.rejected += 1
            raise
        await trio.to_thread.run_sync(
            self._store_disk, model_id, data, self.pinned, limiter=self.limiter
        )
        return ResidentModel(model)

    # -- memory -------------------------------------------------------------------------

    @property
    def pinned(self) -> frozenset[bytes]:
        return frozenset(self._pins)

    @property
    def resident_bytes(self) -> int:
        return sum(r.nbytes for r in self._resident.values())

    def __contains__(self, model_id: bytes) -> bool:
        return model_id in self._resident or self._path(model_id).exists()

    def _evict_memory(self) -> None:
        """Drop least recently used unpinned models until the memory bound holds."""
        total = self.resident_bytes
        for model_id in list(self._resident):
            if total <= self.memory_bytes:
                break
            if model_id in self._pins:
                continue
            total -= self._resident.pop(model_id).nbytes
            self.stats.evicted["memory"] += 1

    # -- disk (run in a worker thread) --------------------------------------------------

    def _path(self, model_id: bytes) -> Path:
        return self.dir / f"{model_id.hex()}.npz"

    def _touch(self, path: Path) -> None:
        now = max(time.time_ns(), self._last_use_ns + 1)
        self._last_use_ns = now
        os.utime(path, ns=(now, now))

    @property
    def disk_total(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.npz"))

    def _load_disk(self, model_id: bytes) -> Model | None:
        """The model stored under ``model_id``, verified; a spoiled file is deleted."""
        path = self._path(model_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            model = verified_model(data, model_id)
        except ModelRejected:
            path.unlink(missing_ok=True)
            return None
        self._touch(path)
        return model

    def _store_disk(self, model_id: bytes, data: bytes, pinned: frozenset[bytes]) -> bool:
        """Keep the file, evicting least recently used unpinned ones; False if it cannot."""
        path = self._path(model_id)
        if path.exists():
            self._touch(path)
            return True
        room = self.disk_bytes - len(data)
        if len(data) > self.disk_bytes or not self._evict_disk(room, pinned):
            return False
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._touch(path)
        return True

    def _evict_disk(self, keep_at_most: int, pinned_ids: frozenset[bytes]) -> bool:
        files = []
        for path in self.dir.glob("*.npz"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        files.sort()
        pinned = {model_id.hex() for model_id in pinned_ids}
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= keep_at_most:
                break
            if path.stem in pinned:
                continue
            total -= size
            path.unlink(missing_ok=True)
            self.stats.evicted["disk"] += 1
        return total <= keep_at_most
