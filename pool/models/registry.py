"""The pool's model registry: content-addressed model files and the names customers use.

Under the pool's data dir, ``models/`` holds one file per model, ``<model_id hex>.npz``
(the bytes as registered; written to a temporary file, synced, then renamed into place),
and ``models/names.sqlite`` maps each name to a model id (SPEC §12.12.1). A name is bound
once: registering the same model under it again is a no-op, another model is refused. The
weights never leave the pool's disk. Synchronous (call it from a worker thread).
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.model import Model, load_model
from toolkit.sqlite import open_store, transaction

MODELS_DIR = "models"
MAX_MODEL_BYTES = 512 * 1024 * 1024
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIGRATIONS = (
    """
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        model_id BLOB NOT NULL,
        layers INTEGER NOT NULL,
        input_width INTEGER NOT NULL,
        output_width INTEGER NOT NULL,
        int32_output INTEGER NOT NULL,
        macs_per_row INTEGER NOT NULL,
        size INTEGER NOT NULL,
        added_at REAL NOT NULL
    );
    """,
)


class RegistryError(Exception):
    """A refused registration or lookup; the message is one line."""


class NameTaken(RegistryError):
    """The name is bound to another model."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry tells about a registered model (never its weights)."""

    name: str
    model_id: bytes
    layers: int
    input_width: int
    output_width: int
    int32_output: bool
    macs_per_row: int
    size: int
    added_at: float

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "model_id": self.model_id.hex(),
            "layers": self.layers,
            "input_width": self.input_width,
            "output_width": self.output_width,
            "output_dtype": "int32" if self.int32_output else "int8",
            "macs_per_row": self.macs_per_row,
            "size": self.size,
            "added_at": self.added_at,
        }


def check_name(name: str) -> str:
    """``name`` if it is 1..64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not NAME_PATTERN.match(name):
        raise RegistryError(
            f"model name {name!r} must be 1..64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


class ModelRegistry:
    """Models on disk under ``data_dir/models``, by content id, and their names."""

    def __init__(self, data_dir: str | Path, max_bytes: int = MAX_MODEL_BYTES) -> None:
        self.directory = Path(data_dir) / MODELS_DIR
        self.max_bytes = max_bytes
        self.conn: sqlite3.Connection = open_store(self.directory / "names.sqlite", MIGRATIONS)
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    def close(self) -> None:
        self.conn.close()

    def path(self, model_id: bytes) -> Path:
        return self.directory / f"{model_id.hex()}.npz"

    def add(self, name: str, data: bytes) -> tuple[ModelInfo, bool]:
        """Register ``data`` (a ``.npz``) as ``name``; ``(info, created)``. Nothing is
        stored unless the model is valid and the name is free or already this model's."""
        check_name(name)
        if len(data) > self.max_bytes:
            raise RegistryError(f"model file is {len(data)} bytes, at most {self.max_bytes}")
        try:
            model = load_model(data)
        except ProtocolError as exc:
            raise RegistryError(str(exc)) from None
        existing = self.get(name)
        if existing is not None and existing.model_id != model.model_id:
            raise NameTaken(f"model name {name!r} is taken by model {existing.model_id.hex()}")
        self._write_file(model.model_id, data)  # content-addressed: harmless if a race
        # between two registrations of one name leaves it unnamed
        info = ModelInfo(
            name,
            model.model_id,
            model.depth,
            model.input_width,
            model.output_width,
            model.int32_output,
            model.macs_per_row,
            len(data),
            time.time(),
        )
        with self._lock, transaction(self.conn):
            row = self.conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
            if row is not None:
                existing = _info(row)
                if existing.model_id != model.model_id:
                    raise NameTaken(
                        f"model name {name!r} is taken by model {existing.model_id.hex()}"
                    )
                return existing, False
            self.conn.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.name,
                    info.model_id,
                    info.layers,
                    info.input_width,
                    info.output_width,
                    int(info.int32_output),
                    info.macs_per_row,
                    info.size,
                    info.added_at,
                ),
            )
        return info, True

    def _write_file(self, model_id: bytes, data: bytes) -> None:
        target = self.path(model_id)
        if target.exists():
            return
        fd, temp = tempfile.mkstemp(prefix=".upload-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> ModelInfo | None:
        with self._lock:
            row = self.conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return None if row is None else _info(row)

    def list(self) -> list[ModelInfo]:
        with self._lock:
            rows = self.conn.execute("SELECT * FROM models ORDER BY name").fetchall()
        return [_info(row) for row in rows]

    def load(self, name: str) -> Model:
        """The model named ``name``, read back and checked against its id."""
        info = self.get(name)
        if info is None:
            raise RegistryError(f"no model named {name!r}")
        try:
            model = load_model(self.path(info.model_id).read_bytes())
        except (OSError, ProtocolError) as exc:
            raise RegistryError(f"model {name!r}: its file cannot be read ({exc})") from None
        if model.model_id != info.model_id:
            raise RegistryError(f"model {name!r}: its file does not hash to its id any more")
        return model


def _info(row: tuple) -> ModelInfo:
    name, model_id, layers, k, n, int32, macs, size, added = row
    return ModelInfo(name, bytes(model_id), layers, k, n, bool(int32), macs, size, added)
