"""Model jobs for the tests: a small model, a unit's pass, the job a pool sends for it, and
layer shares really mined on it (``protocol.ticket.mine_header``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from protocol.hashing import H
from protocol.header import Header, assemble_coinbase, coinbase_hash, coinbase_parts
from protocol.merkle import RowTree
from protocol.messages import Notify, Submit, WorkSpec
from protocol.model import Model, model_from_arrays, reference_pass
from protocol.model_messages import LayerSpec, ModelSource, layer_blobs
from protocol.model_share import TileOpening
from protocol.model_work import layer_workload, unit_id, weight_roots
from protocol.target import target_from_difficulty
from protocol.ticket import mine_header
from protocol.workload import Workload

EN1 = b"\xaa\xbb\xcc\xdd"
POOL_ADDRESS = "mmd1" + "01" * 20 + "00000000"  # only hashed into the coinbase here
DIMS = ((40, 24), (24, 20), (20, 10))  # k' = 128 (r = 32) on every layer


def make_model(dims=DIMS, raw_last: bool = True, seed: int = 0) -> Model:
    """A model of ``dims`` with random weights; ReLU on even layers."""
    rng = np.random.default_rng(seed)
    arrays = {"relu": np.array([index % 2 == 0 for index in range(len(dims))])}
    for index, (k, n) in enumerate(dims):
        arrays[f"w{index}"] = rng.integers(-64, 65, (k, n)).astype(np.int8)
        arrays[f"b{index}"] = rng.integers(-5000, 5000, n).astype(np.int32)
        if not (raw_last and index == len(dims) - 1):
            arrays[f"scale{index}"] = rng.integers(1 << 29, 1 << 31, n).astype(np.int32)
            arrays[f"shift{index}"] = np.full(n, 38, dtype=np.int32)
    return model_from_arrays(arrays)


def batch(rows: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-64, 65, (rows, width)).astype(np.int8)


@dataclass
class Unit:
    """One unit of a model job, honestly computed: every layer's workload."""

    model: Model
    x: np.ndarray
    r: int = 32

    @cached_property
    def workloads(self) -> list[Workload]:
        activations = reference_pass(self.model, self.x).activations
        return [layer_workload(self.model, i, a, self.r) for i, a in enumerate(activations)]

    def source(self, data: str = "http://:8081/data", token: str = "1.ab") -> ModelSource:
        blobs = layer_blobs(self.model)
        layers = tuple(
            LayerSpec(H(blob), layer.k, layer.n, root)
            for blob, layer, root in zip(
                blobs, self.model.layers, weight_roots(self.model, self.r), strict=True
            )
        )
        return ModelSource(
            self.model.model_id,
            unit_id(self.model, self.x, self.r),
            self.x.shape[0],
            self.r,
            H(self.x.tobytes()),
            layers,
            data,
            token,
        )

    def job(
        self,
        difficulty: float,
        *,
        bits: int = 0x1F010000,
        height: int = 1,
        prev_hash: bytes = b"\x11" * 32,
        time: int = 1_700_000_000,
        reward: int = 50 * 10**8,
        address: str = POOL_ADDRESS,
        tag: str = "test",
    ) -> Notify:
        w0 = self.workloads[0]
        s = w0.shape
        work = WorkSpec(s.m, s.n, s.k, s.r, w0.a_root, w0.b_root, self.source())
        c1, c2 = coinbase_parts(height, reward, address, tag, len(EN1))
        return Notify("job.1", True, 1, height, prev_hash, c1, c2, time, bits, difficulty, work)

    def opening(self, layer: int, tile_index: int, matrix: str = "A") -> TileOpening:
        w = self.workloads[layer]
        m = w.a if matrix == "A" else w.bt
        return TileOpening.of(m, tile_index, RowTree(m))


def header_of(job: Notify, extranonce2: bytes, time: int, work_root: bytes) -> bytes:
    coinbase = assemble_coinbase(job.coinbase1, EN1, extranonce2, job.coinbase2)
    return Header(
        job.version, job.height, job.prev_hash, coinbase_hash(coinbase), work_root, time, job.bits
    ).encode()


@dataclass
class Mined:
    """A header of one layer mined for ``job``: tiles whose ticket meets a target, and not."""

    extranonce2: bytes
    time: int
    winners: list[tuple[int, int]]
    losers: list[tuple[int, int]]


def mine_layer(
    unit: Unit, job: Notify, layer: int, target: int, attempts: int = 400, need_loser: bool = True
) -> Mined:
    """Roll extranonce2 until a header of ``layer`` has a tile meeting ``target`` (and,
    with ``need_loser``, one that does not)."""
    w = unit.workloads[layer]
    for n in range(attempts):
        extranonce2 = n.to_bytes(8, "little")
        work = mine_header(header_of(job, extranonce2, job.time, w.work_root), w)
        won = [(ti, tj) for ti, tj, _ in work.winners(target, w.shape.k)]
        lost = [
            (ti, tj)
            for ti in range(w.shape.tiles_m)
            for tj in range(w.shape.tiles_n)
            if (ti, tj) not in won
        ]
        if won and (lost or not need_loser):
            return Mined(extranonce2, job.time, won, lost)
    raise AssertionError("no winning ticket found; is the difficulty too high?")


def share_target(job: Notify) -> int:
    return target_from_difficulty(job.difficulty)


def layer_submit(
    unit: Unit,
    job: Notify,
    layer: int,
    mined: Mined,
    tile: tuple[int, int],
    *,
    with_rows: bool = True,
) -> Submit:
    """The honest submit of ``tile`` of a header mined on ``layer``."""
    w = unit.workloads[layer]
    opening = unit.opening(layer, tile[0])
    return Submit(
        job.job_id,
        mined.extranonce2,
        mined.time,
        tile,
        layer,
        w.a_root,
        opening.rows.tobytes() if with_rows else None,
        opening.proof_bytes if with_rows else None,
    )
