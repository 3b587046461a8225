"""The pool's model jobs (SPEC §12.12): batches queued, units leased, layer shares held,
deliveries taken, audits drawn and judged; each batch's judgments go to ``receipts``.

:meth:`ModelDesk.lease` gives a ``"model-1"`` session the first queued unit it may take
(its ``ModelSource`` names the data plane and the lease's token); :meth:`check_share` holds
checked layer shares under ``(lease, layer, a_root)``; :meth:`deliver` fixes the commitments
and draws the audit from the pool's secret; :meth:`answer` judges it: a pass credits the
held shares and keeps ``Y``; a failure voids them, escalates the session and queues the unit
again."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from pool.models.receipt import ReceiptBook
from pool.models.settings import ModelJobsConfig
from pool.models.units import (
    HeldShare,
    ModelItem,
    ModelLease,
    ModelUnit,
    ModelWeights,
    split_batch,
    unit_rows,
)
from pool.useful.tokens import LeaseTokens
from protocol.audit import AuditFailure, audit_seed, challenge_count, check_audit, draw_challenges
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.messages import Notify, Submit, WorkSpec
from protocol.model import Model, check_input
from protocol.model_delivery import (
    MAX_CHALLENGES,
    challenges_to_json,
    decode_answers,
    decode_delivery,
    delivery_size,
)
from protocol.model_messages import ModelSource, layer_submit_bytes
from protocol.model_share import LayerShare, TileOpening, check_layer_share
from protocol.model_work import UnitRecord, layer_shape

log = logging.getLogger("pool.models")

LEASE_IDS = 1 << 40
"""The first model lease id: a job's ``lease_id`` never names a useful-work lease too."""

Credit = Callable[[list[Any]], Awaitable[object]]
"""Credits the records of a unit's held shares once its audit passed."""


class DeskError(Exception):
    """A refused data-plane request: ``status`` is its HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelDesk:
    """Model batches, units and leases of one pool; see the module doc."""

    def __init__(
        self,
        config: ModelJobsConfig,
        limiter: trio.CapacityLimiter,
        *,
        pool_secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        on_failed: Callable[[str, str], None] | None = None,
        on_verdict: Callable[[str, bool, int], None] | None = None,
        on_queued: Callable[[], None] | None = None,
        on_held: Callable[[object], None] | None = None,
        on_passed: Callable[[int, list[object]], None] | None = None,
        on_delivered: Callable[[str], None] | None = None,
        max_frame_size: int = 1 << 20,
    ) -> None:
        self.config = config
        self.max_frame_size = max_frame_size  # the sessions' frames: every layer share fits
        self.limiter = limiter
        self.clock = clock
        self.on_failed = on_failed  # (session, reason): escalate like a wrong product
        self.on_verdict = on_verdict  # (session, passed, shares voided): its next job
        self.on_queued = on_queued  # units were queued: idle capable sessions lease one
        self.on_held = on_held  # (record): a layer share held under its lease
        self.on_passed = on_passed  # (the pass's useful MACs, held records): audit passed
        self.on_delivered = on_delivered  # (session): its unit delivered, its next job now
        self.data_url: str | None = None  # the model data plane named in jobs (None: off)
        self._current: dict[str, ModelLease] = {}  # session → its lease not yet delivered
        self._secret = pool_secret if pool_secret is not None else secrets.token_bytes(32)
        self.tokens = LeaseTokens()
        self.items: dict[int, ModelItem] = {}
        self.leases: dict[int, ModelLease] = {}
        self._weights: dict[bytes, ModelWeights] = {}
        self._next_item = 1
        self._next_lease = LEASE_IDS  # apart from the useful queue's lease ids
        self.served_bytes = 0  # blob bytes sent over the data plane (counted by the route)
        self.changed = trio.Event()  # set when a unit is queued or an item is done
        self.receipts = ReceiptBook()  # each batch's judgments, for its receipt

    # -- customers -----------------------------------------------------------------------

    def prepare_batch(
        self, model: Model, x: np.ndarray, weights: ModelWeights | None = None
    ) -> tuple[list[ModelUnit], ModelWeights]:
        """The CPU work of queueing (call it in a worker thread): ``x`` checked and cut into
        units, each unit's padded ``X`` and row tree, the model's layer blobs, ``b_root`` s
        and padded ``W_lᵀ`` for ``r``. ``ProtocolError`` for bad rows."""
        check_input(model, x)
        r = self.config.r
        rows = unit_rows(model, int(x.shape[0]), self.config.budget_ppm, self.config.unit_rows)
        units = split_batch(0, model, x, r, rows)
        for unit in units:
            unit.x_tree, unit.unit_id  # noqa: B018 (made now, not in the event loop)
        weights = weights or ModelWeights(model)
        weights.roots(r)
        for index in range(model.depth):
            weights.bt(index, r)
        return units, weights

    def queue_batch(
        self, name: str, model: Model, x: np.ndarray, prepared: tuple | None = None
    ) -> ModelItem:
        """Queue ``x`` (int8 rows) through ``model`` (``prepared``: what
        :meth:`prepare_batch` made, else made here); ``ProtocolError`` for bad rows."""
        units, weights = prepared or self.prepare_batch(model, x, self._weights.get(model.model_id))
        if units and (need := self._share_bytes(max(units, key=lambda u: u.rows))) > (
            self.max_frame_size
        ):  # no session could send this batch's layer shares: refuse it now
            raise DeskError(
                422,
                f"a layer share of model {name!r} is {need} bytes, over the pool's "
                f"stratum.max_frame_size ({self.max_frame_size}): raise it to at least {need}",
            )
        item = ModelItem(self._next_item, name, model, x, units)
        for unit in units:
            unit.item = item.id
        self._next_item += 1
        self.items[item.id] = item
        self.receipts.queued(item, self.clock(), weights.roots(self.config.r))
        self._weights.setdefault(model.model_id, weights)
        self._poke()
        if self.on_queued is not None:
            self.on_queued()
        log.info(
            "model batch %d (%s, %d rows) queued as %d unit(s)", item.id, name, x.shape[0],
            len(units),
        )  # fmt: skip
        return item

    async def queue(self, name: str, model: Model, x: np.ndarray) -> ModelItem:
        """:meth:`queue_batch` with its CPU work in a worker thread."""
        known = self._weights.get(model.model_id)
        prepared = await trio.to_thread.run_sync(
            self.prepare_batch, model, x, known, limiter=self.limiter
        )
        return self.queue_batch(name, model, x, prepared)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- leases and jobs -----------------------------------------------------------------

    def lease(self, session: str, data_url: str) -> ModelLease | None:
        """The session's lease not yet delivered, else a queued unit it did not fail (and whose
        layer shares fit a frame), leased with its job's work; None: no model work for it."""
        now = self.clock()
        self._expire(now)
        current = self._current.get(session)
        if current is not None:
            return current
        for item in self.items.values():
            for unit in item.units:
                if unit.state == "queued" and session not in unit.refused and self._fits(unit):
                    return self._leased(session, unit, data_url, now)
        return None

    def holds(self, session: str) -> bool:
        """Whether ``session`` holds a model lease not yet delivered."""
        return session in self._current

    def _fits(self, unit: ModelUnit) -> bool:
        return self._share_bytes(unit) <= self.max_frame_size

    @staticmethod
    def _share_bytes(unit: ModelUnit) -> int:
        """The largest frame a layer share of ``unit`` needs."""
        shapes = [layer_shape(unit.model, i, unit.rows, unit.r) for i in range(unit.model.depth)]
        return max(layer_submit_bytes(s) for s in shapes)

    def release_session(self, session: str) -> None:
        """The session left: its units not yet judged (delivered or not) go back to the
        queue, their held shares void (stale, not counted against it)."""
        self._current.pop(session, None)
        left = [x for x in self.leases.values() if x.session == session and x.verdict is None]
        for lease in left:
            lease.verdict = (False, "the session left")
            self.receipts.dropped(lease.id)
            lease.void, lease.held = lease.held, []
            lease.unit.state = "queued"
        if left:
            self._poke()
            if self.on_queued is not None:
                self.on_queued()

    def _leased(self, session: str, unit: ModelUnit, data_url: str, now: float) -> ModelLease:
        weights = self._weights[unit.model.model_id]
        lease_id = self._next_lease
        self._next_lease += 1
        token = self.tokens.issue(lease_id)
        source = ModelSource(
            unit.model.model_id,
            unit.unit_id,
            unit.rows,
            unit.r,
            H(unit.x.tobytes()),
            weights.layer_specs(unit.r),
            data_url,
            token,
        )
        s = layer_shape(unit.model, 0, unit.rows, unit.r)
        work = WorkSpec(s.m, s.n, s.k, s.r, unit.x_tree.root, weights.roots(unit.r)[0], source)
        lease = ModelLease(lease_id, session, unit, token, work, now + self.config.lease_seconds)
        unit.state = "leased"
        self.leases[lease_id] = lease
        self._current[session] = lease
        log.info(
            "model unit %s… leased to %s (lease %d)", unit.unit_id.hex()[:16], session, lease_id
        )
        return lease

    def _expire(self, now: float) -> None:
        for item in list(self.items.values()):
            if item.done_at is not None and now - item.done_at > self.config.keep_seconds:
                del self.items[item.id]  # its result was there to fetch long enough
                self.receipts.forget(item.id)
        for lease in list(self.leases.values()):
            if lease.verdict is not None:
                if lease.unit.item not in self.items:
                    del self.leases[lease.id]
                continue
            if lease.record is None and now > lease.deadline:
                self._fail(lease, "the lease ran out before the delivery")
            elif lease.record is not None and now > lease.audit_deadline:
                self._fail(lease, "no audit answer by the deadline", "unanswered")

    def _no_longer_current(self, lease: ModelLease) -> None:
        """``lease`` is not its session's lease to mine any more (delivered or failed)."""
        if self._current.get(lease.session) is lease:
            del self._current[lease.session]

    def lease_of_token(self, token: str) -> ModelLease:
        """The lease a data-plane token names (403 otherwise)."""
        lease = self.leases.get(self.tokens.lease_id(token) or 0)
        if lease is None:
            raise DeskError(403, "the token names no model lease of this pool")
        return lease

    # -- data plane ----------------------------------------------------------------------

    def blob(self, token: str, blob: bytes) -> bytes:
        """``GET {data}/blobs/{hash}``: the unit's ``X`` or a layer blob of its model."""
        lease = self.lease_of_token(token)
        if lease.verdict is not None:
            raise DeskError(403, "the lease is over")
        if blob == lease.source.x:
            return lease.unit.x.tobytes()
        found = self._weights[lease.unit.model.model_id].blobs.get(blob)
        if found is None:
            raise DeskError(404, "the lease's unit names no such blob")
        return found

    async def check_share(
        self,
        lease_id: int,
        job: Notify,
        extranonce1: bytes,
        submit: Submit,
        record: Callable[[LayerShare], object],
    ) -> LayerShare:
        """Check a share on a model job (``check_layer_share``, in a worker thread) and hold
        it under the lease with ``record(share)`` (what a pass credits); ``ProtocolError``
        (its wire code) when refused, 21 when the lease is over."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.record is not None or lease.verdict is not None:
            raise ProtocolError("the model unit of this job is no longer mining", ErrorCode.STALE)
        layer = submit.layer if submit.layer is not None else 0
        if submit.layer is not None and submit.layer < lease.source.depth:
            first = lease.roots.get(submit.layer)
            if first is not None and submit.a_root != first:
                raise ProtocolError(
                    f"mining.submit: layer {submit.layer} was held with another a_root",
                    ErrorCode.MALFORMED,
                )
        layer = min(layer, lease.source.depth - 1)
        bt = self._weights[lease.unit.model.model_id].bt(layer, lease.unit.r)
        tj = submit.tile[1]
        rows = bt[16 * tj : 16 * tj + 16] if 16 * tj + 16 <= bt.shape[0] else bt[:16]
        pool_a0 = lease.pool_opening(submit.tile[0]) if submit.a_rows is None else None
        share = await trio.to_thread.run_sync(
            check_layer_share, job, extranonce1, submit, rows, pool_a0, limiter=self.limiter
        )
        if lease.record is not None or lease.verdict is not None:
            raise ProtocolError("the model unit of this job is no longer mining", ErrorCode.STALE)
        lease.roots.setdefault(share.head.layer, share.head.a_root)
        held = HeldShare(share, record(share))
        lease.held.append(held)
        self.receipts.held(lease.id, share, job.difficulty)
        if self.on_held is not None:
            self.on_held(held.record)
        return share

    def weights_opening(self, lease: ModelLease, layer: int, tile_index: int) -> TileOpening:
        """The pool's opening of layer ``layer``'s padded ``W_lᵀ`` at tile ``tile_index``."""
        return self._weights[lease.unit.model.model_id].opening(layer, lease.unit.r, tile_index)

    def received(self, token: str, unit: bytes) -> int:
        """``GET {data}/results/{unit}``: the delivery bytes the pool holds."""
        return len(self._delivering(token, unit).received)

    def _delivering(self, token: str, unit: bytes) -> ModelLease:
        lease = self.lease_of_token(token)
        if unit != lease.unit.unit_id:
            raise DeskError(404, "the token's lease is not on this unit")
        return lease

    def deliver(self, token: str, unit: bytes, offset: int, body: bytes, digest: bytes) -> int:
        """``PUT {data}/results/{unit}?offset=``: the delivery's bytes; when whole and its
        hash holds, the commitments are fixed and the audit drawn. The bytes received."""
        lease = self._delivering(token, unit)
        if lease.verdict is not None or lease.record is not None:
            why = lease.verdict[1] if lease.record is None and lease.verdict else "delivered"
            raise DeskError(409, f"this unit's lease is over: {why}")
        size = delivery_size(lease.unit.model, lease.unit.rows)
        if offset != len(lease.received):
            raise DeskError(409, f"the pool holds {len(lease.received)} bytes, not {offset}")
        if offset + len(body) > size:
            raise DeskError(413, f"the delivery of this unit is {size} bytes")
        lease.received += body
        if len(lease.received) < size:
            return len(lease.received)
        raw = bytes(lease.received)
        if H(raw) != digest:
            lease.received.clear()
            raise DeskError(422, "the delivery does not match X-Result-Hash; send it again")
        model = lease.unit.model
        a_roots, output = decode_delivery(model, lease.unit.rows, raw)
        lease.record = UnitRecord(model, lease.unit.x, lease.unit.r, a_roots, output)
        for index, root in enumerate(a_roots, start=1):
            if lease.roots.get(index, root) != root:
                self._fail(lease, f"layer {index}'s shares were mined on another a_root")
                return size
        count = self.config.challenges or challenge_count(
            model, lease.unit.rows, self.config.budget_ppm
        )
        seed = audit_seed(self._secret, lease.record.digest)
        draws = draw_challenges(model, lease.unit.rows, seed, min(count, MAX_CHALLENGES))
        lease.challenges = draws[:MAX_CHALLENGES]
        lease.audit_deadline = self.clock() + self.config.audit_seconds
        self._no_longer_current(lease)  # mined: the session's next job now
        if self.on_delivered is not None:
            self.on_delivered(lease.session)
        return size

    def audit(self, token: str, unit: bytes) -> dict[str, object]:
        """``GET {data}/audits/{unit}`` (409 before the delivery is whole)."""
        lease = self._delivering(token, unit)
        if lease.record is None:
            raise DeskError(409, "the unit's delivery is not complete")
        body = challenges_to_json(unit, lease.challenges, int(lease.audit_deadline))
        if lease.verdict is not None:
            body["verified"] = lease.verdict[0]
            if not lease.verdict[0]:
                body["reason"] = lease.verdict[1]
        return body

    async def answer(self, token: str, unit: bytes, raw: bytes, credit: Credit) -> tuple[bool, str]:
        """``PUT {data}/audits/{unit}``: judge the answers; a pass credits the held shares
        and keeps ``Y``, a failure voids them. (400 for a body of the wrong length.)"""
        lease = self._delivering(token, unit)
        if lease.record is None:
            raise DeskError(409, "the unit's delivery is not complete")
        if lease.verdict is not None:
            raise DeskError(409, "this unit's audit is already judged")
        record, unit_ = lease.record, lease.unit
        try:
            answers = decode_answers(record.model, unit_.rows, unit_.r, lease.challenges, raw)
        except ProtocolError as exc:
            raise DeskError(400, str(exc)) from None
        check = self.receipts.timed(lease.id, check_audit)  # its time goes on the receipt
        try:
            await trio.to_thread.run_sync(
                check, record, lease.challenges, answers, limiter=self.limiter
            )
        except AuditFailure as exc:
            self._fail(lease, str(exc))
            assert lease.verdict is not None
            return lease.verdict
        await credit([held.record for held in lease.held])
        lease.verdict = (True, "")
        self.receipts.ended(lease, "passed", "", self.clock())
        if self.on_passed is not None:  # the pass's MACs, unpadded, as for products
            self.on_passed(unit_.rows * record.model.macs_per_row, [h.record for h in lease.held])
        unit_.state, unit_.output = "done", record.output
        item = self.items.get(unit_.item)
        if item is not None and item.done:
            item.done_at = self.clock()
        log.info(
            "model unit %s… passed its audit: %d share(s) credited",
            unit_.unit_id.hex()[:16],
            len(lease.held),
        )
        self._poke()
        if self.on_verdict is not None:
            self.on_verdict(lease.session, True, 0)
        return lease.verdict

    def _fail(self, lease: ModelLease, reason: str, outcome: str = "failed") -> None:
        """Void the lease's held shares, escalate its session, queue the unit again."""
        voided = len(lease.held)
        lease.verdict = (False, reason)
        self.receipts.ended(lease, outcome, reason, self.clock())
        lease.void, lease.held = lease.held, []
        lease.unit.state = "queued"
        lease.unit.refused.add(lease.session)
        log.warning(
            "model unit %s… failed (%s): %d held share(s) voided",
            lease.unit.unit_id.hex()[:16],
            reason,
            voided,
        )
        self._no_longer_current(lease)
        if self.on_failed is not None:
            self.on_failed(lease.session, reason)
        if self.on_verdict is not None:
            self.on_verdict(lease.session, False, voided)
        self._poke()
        if self.on_queued is not None:
            self.on_queued()
