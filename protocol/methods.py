"""The wire's method tables: every catalogue combined, by direction (SPEC §wire).

The one place where the mining catalogue (:mod:`protocol.messages`) and the useful-work
catalogue (:mod:`protocol.work_messages`) meet; ``protocol.connection`` looks methods
up here.
"""

from __future__ import annotations

from typing import Any

from .codec import MethodTable, method_table
from .errors import ErrorCode, ProtocolError
from .messages import MINING_CLIENT_METHODS, MINING_SERVER_METHODS
from .work_messages import WORK_CLIENT_METHODS

CLIENT_METHODS: MethodTable = method_table(
    *MINING_CLIENT_METHODS.values(), *WORK_CLIENT_METHODS.values()
)
"""Methods a miner sends to the pool (requests), by name."""

SERVER_METHODS: MethodTable = MINING_SERVER_METHODS
"""Methods the pool sends to a miner (notifications), by name."""


def unknown_method(method: str) -> ProtocolError:
    """The error for a method no table lists (code ``OTHER``)."""
    return ProtocolError(f"unknown method {method!r:.70}", code=ErrorCode.OTHER)


def parse_result(method: str, result: Any) -> Any:
    """The typed result of a client → pool ``method`` from the wire ``result``."""
    cls = CLIENT_METHODS.get(method)
    if cls is None or cls.result_type is None:
        raise unknown_method(method)
    return cls.result_type.from_result(result)
