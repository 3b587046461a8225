"""The devnet's block rules: what a valid header, coinbase, work and payment are.

Pure functions of their inputs (no store, no lock), used by :class:`node.chain.Chain`:
:func:`decode_header`, :func:`check_coinbase`, :func:`check_work` (work root, opened
rows, the winning ticket: the expensive part), :func:`retarget` and
:func:`check_payment`. A broken block rule raises :class:`Rejected`; a malformed payment
request raises :class:`~protocol.chain.ChainError`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.address import validate_address
from protocol.chain import ERR_MALFORMED, BlockSubmission, ChainError
from protocol.errors import ProtocolError
from protocol.hashing import H
from protocol.header import HEADER_VERSION, Coinbase, Header, coinbase_hash, coins, parse_coinbase
from protocol.merkle import row_leaf, verify_proof
from protocol.target import bits_from_target, meets_target, target_from_bits
from protocol.ticket import verify_ticket
from protocol.workload import TILE, Shape, Workload, check_entries, synthetic_rows, work_root

from .store import StoredBlock

if TYPE_CHECKING:
    from .chain import NodeConfig

MAX_PAYMENT_KEY = 200
MAX_OUTPUTS = 10_000


class Rejected(Exception):
    """A submission broke rule ``reason``; ``detail`` is for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_header(raw: bytes) -> Header:
    """The header of a submission, in the version this chain knows."""
    try:
        header = Header.decode(raw)
    except ProtocolError as exc:
        raise Rejected("bad-header", str(exc)) from None
    if header.version != HEADER_VERSION:
        raise Rejected("bad-version", f"header version {header.version}")
    return header


def check_coinbase(header: Header, raw_coinbase: bytes, block_reward: int) -> Coinbase:
    """The coinbase the header commits to, paying ``block_reward`` at the header's height."""
    if coinbase_hash(raw_coinbase) != header.coinbase_hash:
        raise Rejected("bad-coinbase-hash", "header does not commit to this coinbase")
    try:
        coinbase = parse_coinbase(raw_coinbase)
        validate_address(coinbase.address)
    except ProtocolError as exc:
        raise Rejected("bad-coinbase", str(exc)) from None
    if coinbase.height != header.height:
        raise Rejected(
            "bad-coinbase-height", f"coinbase height {coinbase.height}, header {header.height}"
        )
    if coinbase.reward != block_reward:
        raise Rejected(
            "bad-reward", f"coinbase pays {coins(coinbase.reward)}, reward is {coins(block_reward)}"
        )
    return coinbase


def retarget(window: Sequence[StoredBlock], tip_bits: int, config: NodeConfig) -> int:
    """Compact target of the block after the tip, from the main-chain ``window`` ending at
    it (up to ``retarget_window`` + 1 blocks; see :mod:`node.chain`)."""
    cfg = config
    intervals = len(window) - 1
    # A young chain has fewer than retarget_window intervals: the missing ones count
    # as on time at the tip's target, so one lucky early block cannot swing the
    # difficulty by the full max_adjust.
    missing = cfg.retarget_window - intervals
    expected = cfg.retarget_window * cfg.block_time
    span = window[-1].time - window[0].time + missing * cfg.block_time
    span = min(max(span, -(-expected // cfg.max_adjust)), expected * cfg.max_adjust)
    targets = [target_from_bits(b.bits) for b in window[1:]]
    mean_target = (sum(targets) + missing * target_from_bits(tip_bits)) // cfg.retarget_window
    target = max(1, min(mean_target * span // expected, cfg.max_target))
    return bits_from_target(target)


class WorkloadRoots:
    """The (A, B) Merkle roots of recent synthetic workloads, least recently used dropped.

    Safe from several threads; computing a missing entry runs outside the lock.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._roots: OrderedDict[tuple[bytes, Shape], tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, seed: bytes, shape: Shape) -> tuple[bytes, bytes]:
        """(a_root, b_root) of the synthetic workload ``seed`` of ``shape``."""
        key = (seed, shape)
        with self._lock:
            if key in self._roots:
                self._roots.move_to_end(key)
                return self._roots[key]
        workload = Workload.synthetic(seed, shape)
        roots = (workload.a_root, workload.b_root)
        with self._lock:
            self._roots[key] = roots
            while len(self._roots) > self.size:
                self._roots.popitem(last=False)
        return roots


def check_work(header: Header, sub: BlockSubmission, roots: WorkloadRoots) -> None:
    """Work root, opened rows and the winning ticket (the expensive part, no lock)."""
    shape = sub.shape
    ti, tj = sub.tile
    if not (0 <= ti < shape.tiles_m and 0 <= tj < shape.tiles_n):
        raise Rejected("bad-tile", f"tile {sub.tile} outside {shape.tiles_m}x{shape.tiles_n}")
    blob_fields = (sub.a_rows, sub.bt_rows, sub.a_proofs, sub.b_proofs, sub.a_root, sub.b_root)
    if sub.workload_seed is not None:
        if any(f is not None for f in blob_fields):
            raise Rejected("bad-workload", "both a workload seed and opened rows given")
        if len(sub.workload_seed) != 32:
            raise Rejected("bad-workload", "workload seed must be 32 bytes")
        a_root, b_root = roots.get(sub.workload_seed, shape)
        if work_root(shape, a_root, b_root) != header.work_root:
            raise Rejected("bad-work-root", "header work_root is not this synthetic workload")
        a = synthetic_rows(sub.workload_seed, "A", ti * TILE, TILE, shape.k)
        bt = synthetic_rows(sub.workload_seed, "B", tj * TILE, TILE, shape.k)
    else:
        if any(f is None for f in blob_fields[:4]):
            raise Rejected("bad-workload", "need a workload seed, or opened rows and proofs")
        if any(r is not None and len(r) != 32 for r in (sub.a_root, sub.b_root)):
            raise Rejected("bad-workload", "a_root and b_root must be 32 bytes")
        a = _opened_rows(sub.a_rows, sub.a_proofs, shape.m, shape.k, "A")
        bt = _opened_rows(sub.bt_rows, sub.b_proofs, shape.n, shape.k, "B")
        a_root = sub.a_root or _root_of(a[0], ti * TILE, sub.a_proofs)
        b_root = sub.b_root or _root_of(bt[0], tj * TILE, sub.b_proofs)
        if work_root(shape, a_root, b_root) != header.work_root:
            raise Rejected(
                "bad-work-root", "header work_root does not match the opened rows' Merkle roots"
            )
        _check_proofs(a, sub.a_proofs, ti, a_root, "A")
        _check_proofs(bt, sub.b_proofs, tj, b_root, "B")
    try:
        digest = verify_ticket(sub.header, shape, (ti, tj), a, bt)
    except ProtocolError as exc:
        raise Rejected("bad-ticket", str(exc)) from None
    if not meets_target(digest, target_from_bits(header.bits), shape.k):
        raise Rejected(
            "high-hash",
            f"ticket {digest.hex()[:16]} of tile {sub.tile} does not meet the network target",
        )


def _opened_rows(
    raw: bytes | None, proofs: list[list[bytes]] | None, rows: int, k: int, name: str
) -> np.ndarray:
    """The 16 opened rows of a blob matrix as int8, with proofs of the right shape."""
    assert raw is not None and proofs is not None
    if len(raw) != TILE * k:
        raise Rejected("bad-rows", f"{name} rows must be {TILE}x{k} bytes, got {len(raw)}")
    matrix = np.frombuffer(raw, dtype=np.int8).reshape(TILE, k)
    try:
        check_entries(matrix, name)
    except ProtocolError as exc:
        raise Rejected("bad-rows", str(exc)) from None
    depth = (rows - 1).bit_length()
    if len(proofs) != TILE:
        raise Rejected("bad-merkle-proof", f"need {TILE} {name} proofs, got {len(proofs)}")
    for i, proof in enumerate(proofs):
        if len(proof) != depth or not all(len(h) == 32 for h in proof):
            raise Rejected("bad-merkle-proof", f"{name} proof {i} must be {depth} hashes")
    return matrix


def _root_of(row: np.ndarray, index: int, proof: list[list[bytes]] | None) -> bytes:
    """The root that ``proof`` (of row ``index``) leads to (mmpow-1 row tree)."""
    assert proof is not None
    node = row_leaf(row.tobytes())
    for sibling in proof[0]:
        pair = (sibling, node) if index & 1 else (node, sibling)
        node = H(b"mmpow1/node", *pair)
        index >>= 1
    return node


def _check_proofs(
    matrix: np.ndarray, proofs: list[list[bytes]] | None, tile: int, root: bytes, name: str
) -> None:
    assert proofs is not None
    for i, proof in enumerate(proofs):
        index = tile * TILE + i
        if not verify_proof(matrix[i].tobytes(), index, proof, root):
            raise Rejected("bad-merkle-proof", f"{name} row {index} is not in the committed matrix")


def check_payment(key: Any, outputs: Any, from_address: Any) -> None:
    """Refuse a malformed ``send_many`` (key, outputs, sender) with ``ERR_MALFORMED``."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_PAYMENT_KEY:
        raise ChainError(
            f"payment key must be a string of 1..{MAX_PAYMENT_KEY} characters", ERR_MALFORMED
        )
    if not isinstance(outputs, dict) or not 0 < len(outputs) <= MAX_OUTPUTS:
        raise ChainError(f"outputs must map 1..{MAX_OUTPUTS} addresses to amounts", ERR_MALFORMED)
    try:
        validate_address(from_address)
        for address, amount in outputs.items():
            validate_address(address)
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                raise ChainError(
                    f"amount for {address} must be a positive integer of base "
                    f"units, got {amount!r}",
                    ERR_MALFORMED,
                )
    except ProtocolError as exc:
        raise ChainError(str(exc), ERR_MALFORMED) from None


def height_of(raw_header: bytes) -> str:
    """The height a raw header claims, for the log (\"?\" when too short)."""
    return str(int.from_bytes(raw_header[4:8], "little")) if len(raw_header) >= 8 else "?"
