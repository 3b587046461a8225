"""One model unit on one backend: the whole int8 pass, every GEMM mined (SPEC §12.12.3–4).

For each layer ``l`` in order (:func:`run_unit`): ``A_l`` zero-padded to the layer's shape
and its row tree (``a_root_l``); the layer's workload with the resident model's padded
``W_lᵀ`` and ``b_root_l``; ``backend.prepare``; **one** header for ``work_root_l`` from the
caller (``header_for_layer(l, work_root_l)``, built only once ``A_l`` is fixed); one scan of
it that returns the shares and the noisy product; the product denoised exactly (§11,
``model_denoise.exact_product``), checked by Freivalds' test (``check_product``: a faulty
device never commits a wrong activation) and requantised into ``A_{l+1}``
(``protocol.model_work.next_activation``).
Every share is re-checked on the CPU (``worker.checker``) and carries its opening: the
tile's 16 rows of the padded ``A_l`` and their proofs against ``a_root_l``. ``A_1..A_{L−1}``
are kept in an :class:`~worker.model_openings.OpeningStore` for the audit.

The result, :class:`UnitOutcome`, holds ``Y``, its hash, the roots ``a_root_1..a_root_{L−1}``,
the commitments digest and one :class:`LayerRecord` per layer (roots, header, shares, MACs);
``on_layer`` sees each record as soon as its layer is done, so shares can go to the pool
while the later layers run (the pool holds them until the unit's delivery and audit).
:func:`run_unit` is plain numpy, for a worker thread: :func:`run_unit_in_thread` runs it
through ``trio.to_thread.run_sync`` with a limiter, stopping it between slabs on cancel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import trio

from protocol.audit import Challenge, ChallengeAnswer
from protocol.hashing import H
from protocol.merkle import RowTree
from protocol.model import Model, check_input, output_bytes
from protocol.model_work import (
    commitments_digest,
    layer_shape,
    next_activation,
    padded_activation,
    unit_id,
)
from protocol.noise import pow_seed
from protocol.workload import TILE, Shape, Workload

from .backends.base import Backend, ScanResult, never_stop
from .checker import check_candidate
from .model_cache import LayerOperands, ResidentModel
from .model_denoise import check_product, exact_product
from .model_openings import DEFAULT_OPENINGS_MEMORY, OpeningStore

HeaderForLayer = Callable[[int, bytes], bytes]
"""``header_for_layer(l, work_root_l) -> 128-byte header`` (the job feed builds it)."""


class PassStopped(Exception):
    """``should_stop`` turned true: the unit was dropped at layer ``layer``."""

    def __init__(self, layer: int, macs: int) -> None:
        super().__init__(f"model pass stopped at layer {layer} after {macs} MACs")
        self.layer = layer
        self.macs = macs


class LayerProductWrong(Exception):
    """The backend's product of a layer is not ``A_l·W_l`` (a device fault): nothing of
    the unit is committed."""


@dataclass(frozen=True, eq=False)
class LayerShare:
    """A share on a layer's header with its opening: rows ``16ti..16ti+15`` of the padded
    ``A_l`` and one proof per row against ``a_root_l`` (for ``l = 0`` the pool has them)."""

    tile: tuple[int, int]
    digest: bytes
    difficulty: float
    a_rows: np.ndarray  # 16 × k' int8
    proofs: tuple[tuple[bytes, ...], ...]


@dataclass(frozen=True, eq=False)
class LayerRecord:
    """What one layer of a unit gave: its workload's roots, the header mined, the shares."""

    index: int
    shape: Shape
    a_root: bytes
    b_root: bytes
    work_root: bytes
    header: bytes
    shares: tuple[LayerShare, ...]
    macs: int  # mined: m'·n'·k' (one full header)
    useful_macs: int  # m·k_l·n_l of the pass
    rejected: int  # candidates the CPU re-check refused (hardware errors)
    seconds: dict[str, float]  # wall time by step: commit, prepare, scan, denoise, check, …


@dataclass(eq=False)
class UnitOutcome:
    """A finished unit: output, commitments, per-layer records, and the kept openings."""

    unit_id: bytes
    output: np.ndarray
    output_hash: bytes
    a_roots: tuple[bytes, ...]  # a_root_1 .. a_root_{L−1}
    commitments: bytes
    layers: tuple[LayerRecord, ...]
    openings: OpeningStore

    @property
    def macs(self) -> int:
        """MACs mined over the whole pass (``Σ m'·n'·k'``); all of it useful work."""
        return sum(layer.macs for layer in self.layers)

    @property
    def useful_macs(self) -> int:
        return sum(layer.useful_macs for layer in self.layers)

    @property
    def shares(self) -> int:
        return sum(len(layer.shares) for layer in self.layers)

    def answer(self, challenges: Sequence[Challenge]) -> list[ChallengeAnswer]:
        """The audit's answers from the kept activations (``protocol.audit.check_audit``)."""
        return self.openings.answer_all(challenges)

    def close(self) -> None:
        """The audit is over: forget the kept activations."""
        self.openings.close()

    def __enter__(self) -> UnitOutcome:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def layer_workload_of(
    shape: Shape, padded: np.ndarray, operands: LayerOperands, a_root: bytes
) -> Workload:
    """The layer's workload with both row roots known already (not hashed again)."""
    workload = Workload(shape, padded, operands.bt)
    workload.__dict__["a_root"] = a_root  # functools.cached_property's own slot
    workload.__dict__["b_root"] = operands.b_root
    return workload


def _shares(
    workload: Workload,
    tree: RowTree,
    header: bytes,
    winners: Sequence[tuple[int, int, bytes]],
    share_target: int,
) -> tuple[list[LayerShare], int]:
    """The winners that the CPU re-check confirms, each with its rows and proofs."""
    shares, rejected = [], 0
    for ti, tj, digest in winners:
        check = check_candidate(workload, header, (ti, tj), digest, share_target)
        if not check.ok:
            rejected += 1
            continue
        rows = range(ti * TILE, (ti + 1) * TILE)
        shares.append(
            LayerShare(
                (ti, tj),
                digest,
                check.difficulty,
                workload.a[ti * TILE : (ti + 1) * TILE].copy(),
                tuple(tuple(tree.proof(i)) for i in rows),
            )
        )
    return shares, rejected


class _Clock:
    """Seconds spent per step of one layer (``LayerRecord.seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._last
        self._last = now


def _exact_product(
    backend: Backend,
    workload: Workload,
    header: bytes,
    share_target: int,
    should_stop: Callable[[], bool],
    index: int,
    clock: _Clock,
    check: bool,
) -> tuple[ScanResult, np.ndarray]:
    """One scan of ``header`` (winners, MACs) and the exact product ``A·B``, checked."""
    backend.prepare(workload)
    clock.lap("prepare")
    result = backend.scan(header, share_target, should_stop, want_product=True)
    if not result.complete:
        raise PassStopped(index, result.macs)
    noisy = result.product if result.product is not None else backend.product(header)
    clock.lap("scan")
    bt32 = workload.bt.astype(np.float32)
    seed = pow_seed(header)
    exact = exact_product(noisy, workload.a, workload.bt, seed, workload.shape.r, bt32)
    clock.lap("denoise")
    if check and not check_product(workload.a, bt32, exact, np.random.default_rng()):
        raise LayerProductWrong(
            f"layer {index}: {backend.name}'s product fails Freivalds' test; unit dropped"
        )
    clock.lap("check")
    return result, exact


def run_unit(
    model: Model | ResidentModel,
    x: np.ndarray,
    r: int,
    backend: Backend,
    header_for_layer: HeaderForLayer,
    share_target: int,
    should_stop: Callable[[], bool] = never_stop,
    *,
    openings_memory: int = DEFAULT_OPENINGS_MEMORY,
    spill_dir: Path | None = None,
    check_products: bool = True,
    on_layer: Callable[[LayerRecord], None] | None = None,
) -> UnitOutcome:
    """The whole pass of one unit (inputs ``x``, preferred slab width ``r``), every layer
    mined on exactly one header; raises :class:`PassStopped` when ``should_stop`` turns true
    and :class:`LayerProductWrong` on a device fault (nothing is kept in either case).
    ``check_products``: Freivalds' test of every denoised product (off only for a backend
    whose arithmetic is the CPU's own)."""
    resident = model if isinstance(model, ResidentModel) else ResidentModel(model)
    net = resident.model
    check_input(net, x)
    operands = resident.operands(r)
    m = int(x.shape[0])
    store = OpeningStore(net.depth, m, openings_memory, spill_dir)
    records: list[LayerRecord] = []
    activation = x
    try:
        for index, layer in enumerate(net.layers):
            done = sum(record.macs for record in records)
            if should_stop():
                raise PassStopped(index, done)
            clock = _Clock()
            shape = layer_shape(net, index, m, r)
            padded = padded_activation(activation, shape)
            tree = RowTree(padded)
            workload = layer_workload_of(shape, padded, operands[index], tree.root)
            if index:
                store.keep(index, padded, tree)
            clock.lap("commit")
            header = header_for_layer(index, workload.work_root)
            if len(header) != 128 or header[72:104] != workload.work_root:
                raise ValueError(f"layer {index}: the header is not one of its work root")
            try:
                scan, exact = _exact_product(
                    backend,
                    workload,
                    header,
                    share_target,
                    should_stop,
                    index,
                    clock,
                    check_products,
                )
            except PassStopped as stopped:
                raise PassStopped(index, done + stopped.macs) from None
            shares, rejected = _shares(workload, tree, header, scan.winners, share_target)
            clock.lap("shares")
            activation = next_activation(net, index, exact, m)
            clock.lap("requantise")
            records.append(
                LayerRecord(
                    index=index,
                    shape=shape,
                    a_root=tree.root,
                    b_root=operands[index].b_root,
                    work_root=workload.work_root,
                    header=header,
                    shares=tuple(shares),
                    macs=scan.macs,
                    useful_macs=m * layer.k * layer.n,
                    rejected=rejected,
                    seconds=clock.seconds,
                )
            )
            if on_layer is not None:
                on_layer(records[-1])
    except BaseException:
        store.close()
        raise
    output_hash = H(output_bytes(net, activation))
    unit = unit_id(net, x, r)
    a_roots = tuple(record.a_root for record in records[1:])
    return UnitOutcome(
        unit_id=unit,
        output=activation,
        output_hash=output_hash,
        a_roots=a_roots,
        commitments=commitments_digest(unit, a_roots, output_hash),
        layers=tuple(records),
        openings=store,
    )


class _StopOnCancel:
    """``should_stop`` for a pass in a thread: the caller's, or the trio side cancelled."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop
        self.cancelled = False

    def __call__(self) -> bool:
        return self.cancelled or self._should_stop()


async def run_unit_in_thread(
    model: Model | ResidentModel,
    x: np.ndarray,
    r: int,
    backend: Backend,
    header_for_layer: HeaderForLayer,
    share_target: int,
    limiter: trio.CapacityLimiter,
    should_stop: Callable[[], bool] = never_stop,
    *,
    openings_memory: int = DEFAULT_OPENINGS_MEMORY,
    spill_dir: Path | None = None,
    check_products: bool = True,
    on_layer: Callable[[LayerRecord], None] | None = None,
) -> UnitOutcome:
    """:func:`run_unit` in a worker thread under ``limiter`` (the device's). On cancel the
    pass is told to stop (it drops its scan at the next slab) and the cancel goes on; the
    thread keeps the limiter until it has stopped. ``on_layer`` runs in the thread (hand
    records to trio with ``trio.from_thread``, e.g. into a memory channel)."""
    stop = _StopOnCancel(should_stop)
    job = partial(
        run_unit,
        model,
        x,
        r,
        backend,
        header_for_layer,
        share_target,
        stop,
        openings_memory=openings_memory,
        spill_dir=spill_dir,
        check_products=check_products,
        on_layer=on_layer,
    )
    try:
        return await trio.to_thread.run_sync(job, limiter=limiter, abandon_on_cancel=True)
    except trio.Cancelled:
        stop.cancelled = True
        raise
