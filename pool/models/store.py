"""Model batches kept across a restart (SQLite ``models_queue.sqlite`` in the data dir).

:class:`ModelStore` writes what a restart needs and nothing more: each batch as queued (its
model's name, ``X``, the rows per unit and ``r``), each unit's ``Y`` once its audit passed,
every judgment of the batch's receipt (``pool.models.receipt.UnitAudit``) and when the batch
was done. Leases, held shares and deliveries are not written: a unit leased at a crash is
queued again at start (its held shares were never credited, SPEC §12.7), a done batch's
result and receipt can still be fetched until ``keep_seconds`` after it was done.

:meth:`ModelStore.restore` puts the stored batches back into a fresh desk at start; a
:class:`StoreWriter` hears the desk (its ``receipts``' listeners) and writes in order in
worker threads (``synchronous=FULL``); ``POST /api/work/infer`` answers ``201`` once its
batch is written (``ReceiptBook.written``).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import trio

from pool.models.desk import ModelDesk
from pool.models.receipt import UnitAudit
from pool.models.registry import ModelRegistry, RegistryError
from pool.models.units import ModelItem, ModelLease, ModelWeights, split_batch
from pool.useful.npy import npy_array, npy_bytes
from protocol.errors import ProtocolError
from toolkit.sqlite import open_store, transaction

log = logging.getLogger("pool.models")

STORE_FILE = "models_queue.sqlite"
SCHEMA_V1 = """
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model_id BLOB NOT NULL,
    x BLOB NOT NULL,
    unit_rows INTEGER NOT NULL,
    r INTEGER NOT NULL,
    created REAL NOT NULL,
    done_at REAL
);
CREATE TABLE outputs (
    batch INTEGER NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    y BLOB NOT NULL,
    PRIMARY KEY (batch, idx)
);
CREATE TABLE audits (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    audit TEXT NOT NULL
);
CREATE INDEX audits_batch ON audits(batch);
"""
MIGRATIONS = [SCHEMA_V1]


class ModelStore:
    """The model batches of one pool in SQLite at ``data_dir/models_queue.sqlite``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.conn: sqlite3.Connection = open_store(self.data_dir / STORE_FILE, MIGRATIONS)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    # -- writes (in a worker thread) ---------------------------------------------------

    def write_batch(self, item: int, name: str, model_id: bytes, x: np.ndarray, rows: int,
                    r: int, created: float) -> None:  # fmt: skip
        """Batch ``item`` as queued: ``X`` cut in units of ``rows`` rows at slab width ``r``."""
        with self._lock, transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO batches (id, name, model_id, x, unit_rows, r, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item, name, model_id, npy_bytes(x), rows, r, created),
            )

    def write_judgment(
        self, item: int, audit: UnitAudit, y: np.ndarray | None, done_at: float | None
    ) -> None:
        """A judgment of a unit of batch ``item``; on a pass its ``Y``; ``done_at``: the
        batch's last unit passed then."""
        with self._lock, transaction(self.conn) as conn:
            if conn.execute("SELECT 1 FROM batches WHERE id = ?", (item,)).fetchone() is None:
                return  # forgotten meanwhile
            conn.execute(
                "INSERT INTO audits (batch, audit) VALUES (?, ?)",
                (item, json.dumps(audit.as_json())),
            )
            if y is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO outputs (batch, idx, y) VALUES (?, ?, ?)",
                    (item, audit.unit, npy_bytes(y)),
                )
            if done_at is not None:
                conn.execute("UPDATE batches SET done_at = ? WHERE id = ?", (done_at, item))

    def delete_batch(self, item: int) -> None:
        with self._lock, transaction(self.conn) as conn:
            conn.execute("DELETE FROM batches WHERE id = ?", (item,))

    # -- restart ---------------------------------------------------------------------------

    def restore(self, desk: ModelDesk) -> int:
        """Put every stored batch back into ``desk`` (run in a worker thread before the
        desk serves): units queued unless their ``Y`` is stored; the batches restored."""
        with self._lock, transaction(self.conn, write=False) as conn:
            batches = conn.execute(
                "SELECT id, name, model_id, x, unit_rows, r, created, done_at FROM batches"
                " ORDER BY id"
            ).fetchall()
            outputs = conn.execute("SELECT batch, idx, y FROM outputs").fetchall()
            audits = conn.execute("SELECT batch, audit FROM audits ORDER BY id").fetchall()
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        desk._next_item = max(desk._next_item, 1 + (seq[0] if seq else 0))  # ids never reused
        ys = {(batch, idx): npy_array(y) for batch, idx, y in outputs}
        registry = ModelRegistry(self.data_dir)
        try:
            for row in batches:
                try:
                    self._restore_batch(desk, registry, row, ys)
                except (RegistryError, ProtocolError, ValueError, OSError) as exc:
                    log.error(
                        "model batch %d not restored (kept in %s): %s", row[0], STORE_FILE, exc
                    )
        finally:
            registry.close()
        for batch, raw in audits:
            if batch in desk.items:
                desk.receipts.restore(batch, UnitAudit.from_json(json.loads(raw)))
        return sum(row[0] in desk.items for row in batches)

    @staticmethod
    def _restore_batch(
        desk: ModelDesk, registry: ModelRegistry, row: tuple, ys: dict[tuple[int, int], np.ndarray]
    ) -> None:
        item_id, name, model_id, x_raw, rows, r, created, done_at = row
        known = desk._weights.get(bytes(model_id))
        model = known.model if known is not None else registry.load(name)
        if model.model_id != bytes(model_id):
            raise ValueError(f"the name {name!r} names another model now")
        x = npy_array(x_raw)
        units = split_batch(item_id, model, x, r, rows)
        for unit in units:
            if (y := ys.get((item_id, unit.index))) is not None:
                unit.state, unit.output = "done", y
        weights = desk._weights.setdefault(model.model_id, ModelWeights(model))
        for index in range(model.depth):
            weights.bt(index, r)
        desk.items[item_id] = ModelItem(item_id, name, model, x, units, done_at)
        desk.receipts.created[item_id] = created
        desk.receipts.b_roots[item_id] = weights.roots(r)
        desk.receipts.audits.setdefault(item_id, [])


class StoreWriter:
    """Hears a desk's batches (its ``receipts``' listeners) and writes them, in order, in
    worker threads; :meth:`written` waits until what was heard so far is on disk."""

    def __init__(self, store: ModelStore, desk: ModelDesk, limiter: trio.CapacityLimiter) -> None:
        self.store, self.desk, self.limiter = store, desk, limiter
        self._send, self._receive = trio.open_memory_channel[Callable[[], None]](math.inf)
        self.heard = self.done = 0
        self._progress = trio.Event()
        desk.receipts.queue_listeners.append(self.queued)
        desk.receipts.listeners.append(self.judged)
        desk.receipts.forget_listeners.append(self.forgotten)
        desk.receipts.writers.append(self.written)

    def _write(self, call: Callable[[], None]) -> None:
        self.heard += 1
        self._send.send_nowait(call)

    def queued(self, item: ModelItem) -> None:
        first = item.units[0] if item.units else None
        rows, r = (first.rows, first.r) if first is not None else (1, self.desk.config.r)
        created = self.desk.receipts.created[item.id]
        write = self.store.write_batch
        self._write(
            partial(write, item.id, item.name, item.model.model_id, item.x, rows, r, created)
        )

    def judged(self, lease: ModelLease, audit: UnitAudit) -> None:
        unit, record = lease.unit, lease.record
        assert record is not None
        item = self.desk.items.get(unit.item)
        y = record.output if audit.credited else None
        last = audit.credited and item is not None and all(
            u.state == "done" or u is unit for u in item.units
        )  # fmt: skip
        done_at = audit.at if last else None
        self._write(partial(self.store.write_judgment, unit.item, audit, y, done_at))

    def forgotten(self, item: int) -> None:
        self._write(partial(self.store.delete_batch, item))

    async def written(self) -> None:
        """Until every write heard so far is done (or failed, logged)."""
        target = self.heard
        while self.done < target:
            await self._progress.wait()

    async def run(self) -> None:
        """Write what is heard until cancelled; then what is left, shielded."""
        try:
            async for call in self._receive:
                with trio.CancelScope(shield=True):  # a write taken is done, cancelled or not
                    await self._one(call)
        finally:
            with trio.CancelScope(shield=True):
                while True:
                    try:
                        call = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    await self._one(call)

    async def _one(self, call: Callable[[], None]) -> None:
        try:
            await trio.to_thread.run_sync(call, limiter=self.limiter)
        except (sqlite3.Error, OSError) as exc:
            log.error("model jobs: a batch could not be written to %s: %s", STORE_FILE, exc)
        self.done += 1
        self._progress.set()
        self._progress = trio.Event()


async def run_model_store(
    desk: ModelDesk,
    data_dir: Path,
    limiter: trio.CapacityLimiter,
    *,
    task_status: trio.TaskStatus[ModelStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the store, put its batches back into ``desk``, write the desk's batches until
    cancelled, then close it (``nursery.start`` it before the desk serves)."""
    store = await trio.to_thread.run_sync(ModelStore, data_dir, limiter=limiter)
    try:
        restored = await trio.to_thread.run_sync(store.restore, desk, limiter=limiter)
        if restored:
            log.info("model jobs: %d batch(es) restored from %s", restored, STORE_FILE)
        writer = StoreWriter(store, desk, limiter)
        task_status.started(store)
        await writer.run()
    finally:
        store.close()
