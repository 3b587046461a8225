"""The pool's ``[models]`` section: model jobs (SPEC §12.12), on when useful work is on."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.audit import DEFAULT_BUDGET_PPM
from protocol.model_delivery import MAX_CHALLENGES
from protocol.model_work import DEFAULT_R
from protocol.workload import ALLOWED_R
from toolkit.settings import setting


@dataclass
class ModelJobsConfig:
    """Model jobs: units, leases and the audit."""

    enabled: bool = setting(True, "run customers' model batches (with useful work and HTTP on)")
    r: int = setting(DEFAULT_R, "preferred slab width of a model unit", choices=ALLOWED_R)
    unit_rows: int = setting(
        1, "rows of a unit wanted; raised to the model's m_min (audit within budget)", min=1
    )
    budget_ppm: int = setting(
        DEFAULT_BUDGET_PPM, "the audit's cost in ppm of a unit's MACs (SPEC §12.12.7)",
        min=1, max=10**6,
    )  # fmt: skip
    challenges: int = setting(
        0, "draws of every audit; 0 = SPEC §12.12.7's count", min=0, max=MAX_CHALLENGES
    )
    lease_seconds: float = setting(600.0, "a model unit's lease deadline", positive=True)
    audit_seconds: float = setting(
        120.0, "the audit's answers are due this long after the delivery", min=60
    )
    keep_seconds: float = setting(
        3600.0, "a finished batch (its Y) is kept this long, then forgotten", positive=True
    )
