"""The matmine devnet node: chain rules and state (``chain``), SQLite (``store``), RPC and CLI."""

from .chain import Chain
from .config import NodeConfig

__all__ = ["Chain", "NodeConfig"]
