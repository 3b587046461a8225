"""Model batches cut into units, and a unit's lease (SPEC §12.12.3, §12.12.8).

A customer's batch (:class:`ModelItem`) is cut by rows into :class:`ModelUnit` s of at
least ``protocol.audit.min_unit_rows`` rows (unless the batch is smaller, SPEC §12.12.7).
A :class:`ModelLease` is one unit leased to one session: the job's ``work`` (layer 0's),
its ``ModelSource``, the shares it holds by layer and, once delivered, the unit's
commitments (``UnitRecord``), the audit's challenges and its verdict. Plain data; the
:class:`~pool.models.desk.ModelDesk` changes it. :class:`ModelJobWork` is a model lease
as a job's workload (``pool.workloads.JobWork``'s face: layer 0's work, the lease's
``ModelSource``); :func:`lease_model` a ``"model-1"`` session's model lease for its next job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol import messages
from protocol.audit import Challenge, min_unit_rows
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.merkle import RowTree
from protocol.messages import WorkSpec
from protocol.model import Model
from protocol.model_messages import LayerSpec, ModelSource, layer_blobs
from protocol.model_share import LayerShare, TileOpening
from protocol.model_work import (
    UnitRecord,
    layer_shape,
    padded_activation,
    padded_weights_t,
    unit_id,
    weight_roots,
)
from protocol.workload import Shape

if TYPE_CHECKING:
    from pool.models.desk import ModelDesk

UNIT_STATES = ("queued", "leased", "delivered", "done")


def unit_rows(model: Model, batch_rows: int, budget_ppm: int, wanted: int) -> int:
    """Rows per unit: ``wanted``, at least ``min_unit_rows`` (audit within budget), at most
    the batch."""
    return min(batch_rows, max(wanted, min_unit_rows(model, budget_ppm)))


@dataclass(eq=False)
class ModelUnit:
    """Rows ``start .. start + x.shape[0]`` of an item's batch."""

    item: int
    index: int
    start: int
    x: np.ndarray
    r: int
    model: Model
    state: str = "queued"
    refused: set[str] = field(default_factory=set)  # sessions that failed its audit
    output: np.ndarray | None = None

    @cached_property
    def padded_x(self) -> np.ndarray:
        return padded_activation(self.x, layer_shape(self.model, 0, self.rows, self.r))

    @cached_property
    def x_tree(self) -> RowTree:
        return RowTree(self.padded_x)

    @cached_property
    def unit_id(self) -> bytes:
        return unit_id(self.model, self.x, self.r)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass(eq=False)
class ModelItem:
    """A customer's batch through a registered model: its units and, when done, ``Y``."""

    id: int
    name: str
    model: Model
    x: np.ndarray
    units: list[ModelUnit]
    done_at: float | None = None  # when its last unit passed its audit

    @property
    def done(self) -> bool:
        return all(unit.state == "done" for unit in self.units)

    def output(self) -> np.ndarray:
        """``Y`` of the whole batch (every unit done)."""
        parts = [unit.output for unit in self.units if unit.output is not None]
        assert len(parts) == len(self.units), "a unit of the batch has no output yet"
        return np.concatenate(parts)


def split_batch(item: int, model: Model, x: np.ndarray, r: int, rows: int) -> list[ModelUnit]:
    """The batch cut into units of ``rows`` rows (the last may be shorter)."""
    return [
        ModelUnit(item, index, start, np.ascontiguousarray(x[start : start + rows]), r, model)
        for index, start in enumerate(range(0, x.shape[0], rows))
    ]


class ModelWeights:
    """What the pool keeps of a model for its jobs: layer blobs by hash, and per ``r`` the
    ``b_root`` and padded ``W_lᵀ`` of each layer (for the tickets of layer shares)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.blobs = {H(blob): blob for blob in layer_blobs(model)}
        self.order = tuple(H(blob) for blob in layer_blobs(model))
        self._roots: dict[int, tuple[bytes, ...]] = {}
        self._bt: dict[tuple[int, int], np.ndarray] = {}
        self._trees: dict[tuple[int, int], RowTree] = {}

    def roots(self, r: int) -> tuple[bytes, ...]:
        if r not in self._roots:
            self._roots[r] = weight_roots(self.model, r)
        return self._roots[r]

    def bt(self, index: int, r: int) -> np.ndarray:
        """Layer ``index``'s padded ``W_lᵀ`` for slab width ``r`` (it does not depend on m)."""
        key = (index, r)
        if key not in self._bt:
            shape = layer_shape(self.model, index, 1, r)
            self._bt[key] = padded_weights_t(self.model, index, shape)
        return self._bt[key]

    def opening(self, index: int, r: int, tile_index: int) -> TileOpening:
        """Rows ``16·tile_index..+15`` of layer ``index``'s padded ``W_lᵀ`` with their proof
        (for the block of a layer share)."""
        key = (index, r)
        if key not in self._trees:
            self._trees[key] = RowTree(self.bt(index, r))
        return TileOpening.of(self.bt(index, r), tile_index, self._trees[key])

    def layer_specs(self, r: int) -> tuple[LayerSpec, ...]:
        return tuple(
            LayerSpec(blob, layer.k, layer.n, root)
            for blob, layer, root in zip(self.order, self.model.layers, self.roots(r), strict=True)
        )


@dataclass(eq=False)
class HeldShare:
    """A layer share held under its lease until the unit's audit, with the caller's record
    (what is credited on a pass)."""

    share: LayerShare
    record: object


@dataclass(eq=False)
class ModelLease:
    """One unit leased to one session (SPEC §12.12.4 steps 2–6)."""

    id: int
    session: str
    unit: ModelUnit
    token: str
    work: WorkSpec
    deadline: float
    held: list[HeldShare] = field(default_factory=list)
    roots: dict[int, bytes] = field(default_factory=dict)  # layer → a_root first held
    received: bytearray = field(default_factory=bytearray)  # the delivery so far
    record: UnitRecord | None = None  # the commitments, once delivered
    challenges: tuple[Challenge, ...] = ()
    audit_deadline: float = 0.0
    verdict: tuple[bool, str] | None = None
    void: list[HeldShare] = field(default_factory=list)  # held shares a failure voided

    @property
    def voided(self) -> int:
        return len(self.void)

    @property
    def source(self) -> ModelSource:
        assert isinstance(self.work.source, ModelSource)
        return self.work.source

    def pool_opening(self, tile_index: int) -> TileOpening:
        """The pool's own opening of the padded ``X`` at tile row ``tile_index``."""
        return TileOpening.of(self.unit.padded_x, tile_index, self.unit.x_tree)


@dataclass(frozen=True, eq=False)
class ModelJobWork:
    """The workload of a job on a model lease: layer 0's work and the lease's source."""

    lease: ModelLease

    @property
    def shape(self) -> Shape:
        w = self.lease.work
        return Shape(w.m, w.n, w.k, w.r)

    @property
    def work_root(self) -> bytes:
        return self.lease.work.work_root

    def tile_rows(self, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        raise ProtocolError("a model job's shares are checked by layer", ErrorCode.OTHER)

    def block_fields(self, tile: tuple[int, int]) -> dict[str, Any]:
        raise ProtocolError("a model job's blocks are made by layer", ErrorCode.OTHER)

    def work_spec(self) -> messages.WorkSpec:
        return self.lease.work


def lease_model(desk: ModelDesk | None, session: str) -> tuple[ModelLease, ModelJobWork] | None:
    """The session's model lease and its job's workload (None: no model work for it)."""
    if desk is None or desk.data_url is None:
        return None
    lease = desk.lease(session, desk.data_url)
    return None if lease is None else (lease, ModelJobWork(lease))
