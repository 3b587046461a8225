"""Chain adapters: the pool's interface to its upstream chain and its two implementations."""

from .base import (
    BlockStatus,
    BlockSubmission,
    BlockTemplate,
    ChainAdapter,
    ChainError,
    ChainUnavailable,
    InsufficientFunds,
    PaymentKeyConflict,
    SubmitResult,
)

__all__ = [
    "BlockStatus",
    "BlockSubmission",
    "BlockTemplate",
    "ChainAdapter",
    "ChainError",
    "ChainUnavailable",
    "InsufficientFunds",
    "PaymentKeyConflict",
    "SubmitResult",
]
