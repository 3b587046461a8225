"""Model batches kept across a restart (SQLite ``models_queue.sqlite`` in the data dir).

:class:`ModelStore` writes what a restart needs and nothing more: each batch as queued (its
model's name, ``X``, the rows per unit and ``r``), each unit's ``Y`` once its audit passed,
every judgment of the batch's receipt (``pool.models.receipt.UnitAudit``) and when the batch
was done. Leases, held shares and deliveries are not written: a unit leased at a crash is
queued again at start (its held shares were never credited, SPEC §12.7), a done batch's
result and receipt can still be fetched until ``keep_seconds`` after it was done.

:meth:`ModelStore.attach` hears the desk (its ``receipts``' listeners);
:meth:`ModelStore.restore` puts the stored batches back into a fresh desk at start. Writes
are synchronous (``synchronous=FULL``): a batch is on disk before its ``201``.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import trio

from pool.models.desk import ModelDesk
from pool.models.receipt import UnitAudit
from pool.models.registry import ModelRegistry
from pool.models.units import ModelItem, ModelLease, ModelWeights, split_batch
from protocol.model import Model
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


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _array(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


class ModelStore:
    """The model batches of one pool in SQLite at ``data_dir/models_queue.sqlite``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.conn: sqlite3.Connection = open_store(self.data_dir / STORE_FILE, MIGRATIONS)
        self._lock = threading.Lock()
        self.desk: ModelDesk | None = None

    def close(self) -> None:
        self.conn.close()

    # -- writes ----------------------------------------------------------------------------

    def attach(self, desk: ModelDesk) -> None:
        """Write ``desk``'s batches as they are queued, judged, done and forgotten."""
        self.desk = desk
        desk.receipts.queue_listeners.append(self.queued)
        desk.receipts.listeners.append(self.judged)
        desk.receipts.forget_listeners.append(self.forgotten)

    def queued(self, item: ModelItem) -> None:
        rows = item.units[0].rows if item.units else 1
        r = item.units[0].r if item.units else 0
        assert self.desk is not None
        created = self.desk.receipts.created[item.id]
        with self._lock, transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO batches (id, name, model_id, x, unit_rows, r, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item.id, item.name, item.model.model_id, _npy(item.x), rows, r, created),
            )

    def judged(self, lease: ModelLease, audit: UnitAudit) -> None:
        """A judgment; on a pass the unit's ``Y`` too, and when it was the batch's last
        unit, the batch done (at the verdict's time)."""
        assert self.desk is not None and lease.record is not None
        unit = lease.unit
        item = self.desk.items.get(unit.item)
        with self._lock, transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO audits (batch, audit) VALUES (?, ?)",
                (unit.item, json.dumps(audit.as_json())),
            )
            if item is None or not audit.credited:
                return
            conn.execute(
                "INSERT OR REPLACE INTO outputs (batch, idx, y) VALUES (?, ?, ?)",
                (unit.item, unit.index, _npy(lease.record.output)),
            )
            if all(u.state == "done" or u is unit for u in item.units):
                conn.execute("UPDATE batches SET done_at = ? WHERE id = ?", (audit.at, unit.item))

    def forgotten(self, item_id: int) -> None:
        with self._lock, transaction(self.conn) as conn:
            conn.execute("DELETE FROM batches WHERE id = ?", (item_id,))

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
        ys = {(batch, idx): _array(y) for batch, idx, y in outputs}
        registry = ModelRegistry(self.data_dir)
        models: dict[bytes, Model] = {}
        try:
            for item_id, name, model_id, x_raw, rows, r, created, done_at in batches:
                model = models.get(bytes(model_id)) or registry.load(name)
                if model.model_id != bytes(model_id):
                    raise ValueError(f"model batch {item_id}: {name!r} names another model now")
                models[model.model_id] = model
                x = _array(x_raw)
                units = split_batch(item_id, model, x, r, rows)
                for unit in units:
                    if (y := ys.get((item_id, unit.index))) is not None:
                        unit.state, unit.output = "done", y
                weights = desk._weights.setdefault(model.model_id, ModelWeights(model))
                roots = weights.roots(r)
                for index in range(model.depth):
                    weights.bt(index, r)
                item = ModelItem(item_id, name, model, x, units, done_at)
                desk.items[item_id] = item
                desk.receipts.created[item_id] = created
                desk.receipts.b_roots[item_id] = roots
                desk.receipts.audits.setdefault(item_id, [])
        finally:
            registry.close()
        for batch, raw in audits:
            if batch in desk.items:
                desk.receipts.restore(batch, UnitAudit.from_json(json.loads(raw)))
        return len(batches)


async def run_model_store(
    desk: ModelDesk,
    data_dir: Path,
    limiter: trio.CapacityLimiter,
    *,
    task_status: trio.TaskStatus[ModelStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the store, put its batches back into ``desk``, keep writing the desk's batches
    until cancelled, then close it (``nursery.start`` it before the desk serves)."""
    store = await trio.to_thread.run_sync(ModelStore, data_dir, limiter=limiter)
    try:
        restored = await trio.to_thread.run_sync(store.restore, desk, limiter=limiter)
        store.attach(desk)
        if restored:
            log.info("model jobs: %d batch(es) restored from %s", restored, STORE_FILE)
        task_status.started(store)
        await trio.sleep_forever()
    finally:
        store.close()
