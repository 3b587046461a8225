"""The ``[model]`` settings of model jobs (SPEC §12.12) on the worker: where the weights stay,
how much of them, and what a unit keeps for its audit.

The ``[model]`` section of ``WorkerConfig``; ``worker.model_job`` runs the model jobs the
pool sends with these bounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trio

from toolkit.settings import setting

from .model_cache import ModelCache
from .model_openings import DEFAULT_OPENINGS_MEMORY


@dataclass(frozen=True)
class ModelConfig:
    """Model jobs: weights cached on disk and in memory, activations kept for the audit."""

    enabled: bool = setting(True, 'take model jobs (announce "model-1") when useful work is on')
    cache_dir: str = setting("", 'model files by id; "" = the user\'s cache (…/models)')
    disk_max_bytes: int = setting(4 << 30, "size bound of the model files on disk, LRU", min=0)
    memory_max_bytes: int = setting(
        2 << 30, "bytes of loaded models (weights and padded operands) kept in memory", min=0
    )
    openings_memory_bytes: int = setting(
        DEFAULT_OPENINGS_MEMORY,
        "bytes of a unit's activations kept in memory for its audit; more spill to disk",
        min=0,
    )
    check_products: bool = setting(
        True, "Freivalds' test of every layer's denoised product before it is committed"
    )

    def cache_path(self) -> Path:
        """``cache_dir``, or ``$XDG_CACHE_HOME/matmine-worker/models`` (~/.cache if unset)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "matmine-worker" / "models"

    def openings_path(self) -> Path:
        """Where activations over ``openings_memory_bytes`` go: beside the model files."""
        return self.cache_path().with_name("model-openings")

    def open_cache(self, limiter: trio.CapacityLimiter | None = None) -> ModelCache:
        """The worker's :class:`ModelCache` with these bounds."""
        return ModelCache(self.cache_path(), self.disk_max_bytes, self.memory_max_bytes, limiter)
