"""Chain adapters: the pool's interface to its upstream chain and its two implementations."""

from protocol.chain import (
    BlockStatus,
    BlockSubmission,
    BlockTemplate,
    ChainError,
    ChainUnavailable,
    InsufficientFunds,
    PaymentKeyConflict,
    SubmitResult,
)

from .base import ChainAdapter

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
