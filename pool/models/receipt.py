"""A customer's receipt of a model batch (``GET /api/work/infer/{id}/receipt``).

The :class:`ReceiptBook` is told by the :class:`~pool.models.desk.ModelDesk` when a batch
is queued, when a layer share is held under a lease (:meth:`ReceiptBook.held`) and when a
lease is judged (:meth:`ReceiptBook.judged`); it keeps, per batch, one
:class:`UnitAudit` per judgment: the outcome, the challenges drawn and their cost, when,
the activation roots the worker committed and the headers mined on the unit with the
shares each had held (credited on a pass, voided otherwise). :func:`receipt_json` is the
receipt: the batch, the model's layers with the weight roots the pool knows, each unit's
roots, headers and audits, and the output's hash (SPEC §12.12.3's ``output_hash``).

Listeners hear of every batch queued, every :class:`UnitAudit` (with its lease) and every
batch forgotten (the pool's metrics, the durable store ``pool.models.store``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.audit import audit_cost
from protocol.hashing import H
from protocol.header import block_hash
from protocol.model import output_bytes
from protocol.model_share import LayerShare

if TYPE_CHECKING:
    from pool.models.units import ModelItem, ModelLease

RECEIPT_VERSION = "matmine/model-receipt-1"
AUDIT_OUTCOMES = ("passed", "failed", "unanswered")
"""``passed``: the audit held, its shares credited; ``failed``: a wrong answer or a
delivered root its shares contradict, shares voided; ``unanswered``: delivered but no
answer by the audit's deadline, shares voided."""


@dataclass(frozen=True)
class HeaderShares:
    """The shares held on one header of a unit's layer, at one share difficulty."""

    header: bytes  # the block hash H(header) of the header the shares were mined on
    layer: int
    difficulty: float
    shares: int

    def as_json(self) -> dict[str, Any]:
        return {
            "hash": self.header.hex(),
            "layer": self.layer,
            "difficulty": self.difficulty,
            "shares": self.shares,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HeaderShares:
        return cls(bytes.fromhex(raw["hash"]), raw["layer"], raw["difficulty"], raw["shares"])


@dataclass(frozen=True)
class UnitAudit:
    """One judgment of a unit of a batch (one lease's delivery)."""

    unit: int  # the unit's index in its batch
    outcome: str  # one of AUDIT_OUTCOMES
    reason: str  # "" on a pass
    challenges: int  # pairs drawn
    cost_macs: int  # MACs the pool spent recomputing them (protocol.audit.audit_cost)
    unit_macs: int  # the unit's useful MACs, m·Σ k_l·n_l (what the cost is a share of)
    seconds: float  # the check's time (0 when nothing was checked)
    at: float  # Unix time of the verdict
    a_roots: tuple[bytes, ...]  # a_root_0 (the pool's) .. a_root_{L−1} (delivered)
    headers: tuple[HeaderShares, ...]
    output_hash: bytes | None  # H(Y of the unit), as delivered

    @property
    def credited(self) -> bool:
        return self.outcome == "passed"

    @property
    def shares(self) -> int:
        return sum(h.shares for h in self.headers)

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "outcome": self.outcome,
            "reason": self.reason,
            "challenges": self.challenges,
            "cost_macs": self.cost_macs,
            "unit_macs": self.unit_macs,
            "seconds": self.seconds,
            "at": self.at,
            "a_roots": [root.hex() for root in self.a_roots],
            "headers": [h.as_json() for h in self.headers],
            "output_hash": _hex(self.output_hash),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UnitAudit:
        out = raw["output_hash"]
        return cls(
            raw["unit"],
            raw["outcome"],
            raw["reason"],
            raw["challenges"],
            raw["cost_macs"],
            raw["unit_macs"],
            raw["seconds"],
            raw["at"],
            tuple(bytes.fromhex(root) for root in raw["a_roots"]),
            tuple(HeaderShares.from_json(h) for h in raw["headers"]),
            None if out is None else bytes.fromhex(out),
        )


@dataclass
class ReceiptBook:
    """Per batch: when it was queued and the judgments of its units; see the module doc."""

    created: dict[int, float] = field(default_factory=dict)  # batch → Unix time queued
    b_roots: dict[int, tuple[bytes, ...]] = field(default_factory=dict)  # batch → b_root_l
    audits: dict[int, list[UnitAudit]] = field(default_factory=dict)  # batch → judgments
    listeners: list[Callable[[ModelLease, UnitAudit], None]] = field(default_factory=list)
    queue_listeners: list[Callable[[ModelItem], None]] = field(default_factory=list)
    forget_listeners: list[Callable[[int], None]] = field(default_factory=list)
    writers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _held: dict[int, Counter[tuple[bytes, int, float]]] = field(default_factory=dict)
    _seconds: dict[int, float] = field(default_factory=dict)  # lease → its check's time

    def queued(self, item: ModelItem, at: float, b_roots: tuple[bytes, ...]) -> None:
        """Batch ``item`` queued at ``at``; its model's weight roots for its ``r``."""
        self.created[item.id] = at
        self.b_roots[item.id] = b_roots
        self.audits.setdefault(item.id, [])
        for listener in self.queue_listeners:
            listener(item)

    def held(self, lease: int, share: LayerShare, difficulty: float) -> None:
        """A layer share held under ``lease`` at ``difficulty``."""
        key = (block_hash(share.head.header), share.head.layer, difficulty)
        self._held.setdefault(lease, Counter())[key] += 1

    def dropped(self, lease: int) -> None:
        """The lease ended unjudged (its session left, its deadline passed undelivered)."""
        self._held.pop(lease, None)
        self._seconds.pop(lease, None)

    def timed(self, lease: int, check: Callable[..., object]) -> Callable[..., None]:
        """``check`` (run in a worker thread), its time kept for ``lease``'s judgment."""

        def run(*args: Any) -> None:
            started = time.perf_counter()
            try:
                check(*args)
            finally:
                self._seconds[lease] = time.perf_counter() - started

        return run

    def ended(self, lease: ModelLease, outcome: str, reason: str, at: float) -> UnitAudit | None:
        """The verdict on ``lease``: a delivered unit's is recorded and told to the
        listeners (an unanswered audit cost the pool nothing); an undelivered one's is
        dropped (None)."""
        if outcome not in AUDIT_OUTCOMES:
            raise ValueError(f"unknown audit outcome {outcome!r}")
        unit, record = lease.unit, lease.record
        held = self._held.pop(lease.id, Counter())
        seconds = self._seconds.pop(lease.id, 0.0)  # the check's time (none: not checked)
        if record is None:
            return None
        audit = UnitAudit(
            unit=unit.index,
            outcome=outcome,
            reason=reason,
            challenges=len(lease.challenges),
            cost_macs=0 if outcome == "unanswered" else audit_cost(unit.model, lease.challenges),
            unit_macs=record.macs,
            seconds=seconds,
            at=at,
            a_roots=(unit.x_tree.root, *record.a_roots),
            headers=tuple(
                HeaderShares(header, layer, difficulty, count)
                for (header, layer, difficulty), count in sorted(held.items())
            ),
            output_hash=record.output_hash,
        )
        self.restore(unit.item, audit)
        for listener in self.listeners:
            listener(lease, audit)
        return audit

    def restore(self, item: int, audit: UnitAudit) -> None:
        """Keep ``audit`` of batch ``item`` (a judgment now, or one read back at start)."""
        self.audits.setdefault(item, []).append(audit)

    async def written(self) -> None:
        """Until what the listeners heard so far is durable (their ``writers``)."""
        for wait in self.writers:
            await wait()

    def forget(self, item: int) -> None:
        self.created.pop(item, None)
        self.b_roots.pop(item, None)
        self.audits.pop(item, None)
        for listener in self.forget_listeners:
            listener(item)


def receipt_json(item: ModelItem, book: ReceiptBook) -> dict[str, Any]:
    """The receipt of batch ``item`` (see the README's inference API for its fields)."""
    model, b_roots = item.model, book.b_roots[item.id]
    audits = book.audits.get(item.id, [])
    units = []
    for unit in item.units:
        judged = [a for a in audits if a.unit == unit.index]
        passed = next((a for a in judged if a.credited), None)
        layers = [
            {
                "layer": index,
                "b_root": b_roots[index].hex(),
                "a_root": None if passed is None else passed.a_roots[index].hex(),
                "headers": [] if passed is None else [
                    h.as_json() for h in passed.headers if h.layer == index
                ],
            }
            for index in range(model.depth)
        ]  # fmt: skip
        units.append(
            {
                "index": unit.index,
                "unit_id": unit.unit_id.hex(),
                "start": unit.start,
                "rows": unit.rows,
                "state": unit.state,
                "layers": layers,
                "shares": 0 if passed is None else passed.shares,
                "output_hash": None if passed is None else _hex(passed.output_hash),
                "audits": [_audit_json(a) for a in judged],
            }
        )
    done = item.done
    return {
        "receipt": RECEIPT_VERSION,
        "id": item.id,
        "model": item.name,
        "model_id": model.model_id.hex(),
        "rows": int(item.x.shape[0]),
        "r": item.units[0].r if item.units else None,
        "state": "done" if done else "running",
        "created": book.created.get(item.id),
        "finished": max(a.at for a in audits if a.credited) if done and audits else None,
        "x_hash": H(item.x.tobytes()).hex(),
        "output_hash": H(output_bytes(model, item.output())).hex() if done else None,
        "layers": [
            {"layer": index, "k": layer.k, "n": layer.n, "b_root": b_roots[index].hex()}
            for index, layer in enumerate(model.layers)
        ],
        "units": units,
        "shares": sum(u["shares"] for u in units),
    }


def _hex(raw: bytes | None) -> str | None:
    return None if raw is None else raw.hex()


def _audit_json(audit: UnitAudit) -> dict[str, Any]:
    return {
        "outcome": audit.outcome,
        "reason": audit.reason,
        "challenges": audit.challenges,
        "cost_macs": audit.cost_macs,
        "at": audit.at,
        "shares": audit.shares,
    }
