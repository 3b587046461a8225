"""Which sessions already hold which operand blobs: the pool leases units to them first.

:class:`BlobHolders` counts the bytes of each blob served to each lease (over either plane,
``work.get_blob`` or HTTP ``GET``); once a lease was served a whole blob's size, its session
and its miner (address and worker name, so a reconnect keeps it) hold that blob. Sessions
register while connected; :meth:`BlobHolders.others` is what the other connected sessions
without a lease hold (a unit on those waits a little for them: they are offered it too).
Affinity is a preference only: it never changes what a share or a result earns. Bounded:
a holder keeps its newest ``per_holder`` blobs, at most ``max_holders`` holders.
"""

from __future__ import annotations

from collections import OrderedDict

from pool.useful import UsefulConfig
from pool.useful.queue_model import Lease, LeaseChoice
from protocol.useful import UnitPlan, sized_rows


class BlobHolders:
    """Blobs fetched whole, by session and by miner; the connected sessions."""

    def __init__(self, per_holder: int = 64, max_holders: int = 4096) -> None:
        self.per_holder = per_holder
        self.max_holders = max_holders
        self._held: OrderedDict[str, OrderedDict[bytes, None]] = OrderedDict()
        self._miner_of: dict[str, str] = {}  # connected session → its miner's holder key
        self._progress: dict[tuple[int, bytes], int] = {}  # (lease, blob) → bytes served
        self._idle_since: dict[str, float] = {}  # connected sessions without a lease

    @staticmethod
    def miner_key(address: str | None, worker: str | None) -> str | None:
        """The holder key of a miner (None before it authorized)."""
        return None if not address else f"miner {address}.{worker or ''}"

    def connect(self, session: str, miner: str | None) -> None:
        """``session`` is connected (as ``miner``, if it authorized)."""
        if miner is not None:
            self._miner_of[session] = miner
        else:
            self._miner_of.setdefault(session, "")

    def busy(self, session: str, leased: bool, now: float) -> None:
        """``session`` holds a lease now (``leased``) or not (idle since now, or before)."""
        if leased:
            self._idle_since.pop(session, None)
        elif session in self._miner_of:
            self._idle_since.setdefault(session, now)

    def disconnect(self, session: str) -> None:
        """``session`` left: it holds nothing any more (its miner keeps what it held)."""
        self._miner_of.pop(session, None)
        self._held.pop(session, None)
        self._idle_since.pop(session, None)

    def served(self, lease_id: int, session: str, blob: bytes, nbytes: int, size: int) -> None:
        """``nbytes`` of ``blob`` (``size`` bytes in all) went to ``lease_id`` of ``session``."""
        key = (lease_id, blob)
        total = self._progress.get(key, 0) + nbytes
        if total < size:
            self._progress[key] = total
            return
        self._progress.pop(key, None)
        self._add(session, blob)
        miner = self._miner_of.get(session)
        if miner:
            self._add(miner, blob)

    def lease_ended(self, lease_id: int) -> None:
        """Forget the partial downloads of an ended lease."""
        for key in [k for k in self._progress if k[0] == lease_id]:
            del self._progress[key]

    def held(self, session: str) -> frozenset[bytes]:
        """Blobs ``session`` or its miner fetched whole."""
        out = set(self._held.get(session, ()))
        miner = self._miner_of.get(session)
        if miner:
            out.update(self._held.get(miner, ()))
        return frozenset(out)

    def others(self, session: str) -> dict[bytes, dict[str, float]]:
        """Blobs held by the idle connected sessions other than ``session``: blob →
        {holder session: idle since}."""
        out: dict[bytes, dict[str, float]] = {}
        for other, since in self._idle_since.items():
            if other != session:
                for blob in self.held(other):
                    out.setdefault(blob, {})[other] = since
        return out

    def _add(self, holder: str, blob: bytes) -> None:
        blobs = self._held.setdefault(holder, OrderedDict())
        self._held.move_to_end(holder)
        blobs[blob] = None
        blobs.move_to_end(blob)
        while len(blobs) > self.per_holder:
            blobs.popitem(last=False)
        while len(self._held) > self.max_holders:
            self._held.popitem(last=False)


class Placement:
    """Which unit suits a session (:class:`LeaseChoice`): its blobs, its size, the wait.

    ``retry_at`` is the earliest time a unit held back for a session that holds its blobs
    may go to any session (the pool then offers the queued units again).
    """

    def __init__(self, config: UsefulConfig) -> None:
        self.config = config
        self.holders = BlobHolders()
        self.retry_at: float | None = None

    def choice(
        self, session: str, miner: str | None, rate: float | None, now: float, queued: int = 1
    ) -> LeaseChoice:
        """What ``session`` (of ``miner``, measured at ``rate`` MAC/s or None) should lease;
        with nothing ``queued`` (as last reported) the others' blobs are not gathered."""
        cfg = self.config
        self.holders.connect(session, miner)
        self.holders.busy(session, False, now)
        lo, start, hi = cfg.row_bounds

        def rows(plan: UnitPlan) -> int:
            return sized_rows(rate, cfg.unit_seconds, plan, lo, hi, start)

        return LeaseChoice(
            held=self.holders.held(session),
            others=self.holders.others(session) if queued > 0 else {},
            affinity_seconds=cfg.affinity_seconds,
            rows=rows,
            tail_rows=cfg.unit_tail_rows,
        )

    def leased(self, session: str, got: Lease | float | None, now: float) -> Lease | None:
        """What ``WorkQueue.lease_or_wait`` gave ``session``: its lease, or None (idle;
        a unit held back for another session until ``got`` is offered again then)."""
        self.holders.busy(session, isinstance(got, Lease), now)
        if isinstance(got, float):
            self.retry_at = got if self.retry_at is None else min(self.retry_at, got)
        return got if isinstance(got, Lease) else None

    def due(self, now: float) -> bool:
        """Whether held-back units are free now (then forget the time)."""
        if self.retry_at is None or now < self.retry_at:
            return False
        self.retry_at = None
        return True
