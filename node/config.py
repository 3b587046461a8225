"""``NodeConfig``: the node's consensus and devnet settings, checked when made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.address import make_address, validate_address
from protocol.errors import ProtocolError
from protocol.hashing import H
from protocol.header import COIN
from protocol.target import bits_from_target, target_from_difficulty

DEFAULT_NODE_ADDRESS = make_address(H(b"matmine-node/devnet-node-address")[:20])


@dataclass(frozen=True)
class NodeConfig:
    """Consensus and devnet settings of the node (all have defaults)."""

    start_difficulty: float = 200.0
    min_difficulty: float = 1.0
    block_time: int = 30
    retarget_window: int = 10
    max_adjust: int = 4
    maturity: int = 10
    block_reward: int = 50 * COIN
    max_future_time: int = 7200
    orphan_probability: float = 0.0
    orphan_seed: str = "matmine-devnet"
    node_address: str = DEFAULT_NODE_ADDRESS
    workload_cache: int = 8

    def __post_init__(self) -> None:
        for name in ("start_difficulty", "min_difficulty"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.start_difficulty < self.min_difficulty:
            raise ValueError("start_difficulty must be at least min_difficulty")
        for name in (
            "block_time",
            "retarget_window",
            "max_adjust",
            "block_reward",
            "max_future_time",
            "workload_cache",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.maturity, int) or self.maturity < 0:
            raise ValueError(f"maturity must be a non-negative integer, got {self.maturity!r}")
        if not 0.0 <= self.orphan_probability <= 1.0:
            raise ValueError("orphan_probability must lie in [0, 1]")
        try:
            validate_address(self.node_address)
        except ProtocolError as exc:
            raise ValueError(f"node_address: {exc}") from None

    @property
    def start_bits(self) -> int:
        return bits_from_target(target_from_difficulty(self.start_difficulty))

    @property
    def max_target(self) -> int:
        return target_from_difficulty(self.min_difficulty)
