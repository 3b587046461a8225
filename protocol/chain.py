"""What a pool and a chain node say to each other: the chain RPC types and their codec.

Shared by the node (:mod:`node`) and the pool's chain adapters (:mod:`pool.chain`); money
is integer base units. The node RPC is framed like the wire (:mod:`protocol.framing`):
request ``{"id", "method", "params"}`` → ``{"id", "result"}`` or
``{"id", "error": {"code", "message"}}``.

- :class:`BlockTemplate`, :class:`BlockSubmission`, :class:`SubmitResult`,
  :class:`BlockStatus`: each with ``to_wire()`` / ``from_wire()``, a msgpack-ready map
  and its strict parse (``ProtocolError`` on a missing or mistyped field).
- ``BlockSubmission.a_root`` / ``b_root`` (optional): for blob workloads, the roots the
  row proofs open against. Left out, the node takes the root the first row's proof leads
  to; either way it checks ``work_root(shape, a_root, b_root)`` against the header and
  every opened row against its root.
- :class:`ChainError` and its subclasses, raised by every adapter with an RPC ``code``;
  :func:`chain_error_from_code` turns an RPC error back into one.
- :func:`tip_to_wire` / :func:`tip_from_wire`: the ``node.tip`` answer.
- :func:`rpc_request`, :func:`rpc_result`, :func:`rpc_error`: the three envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from protocol.errors import ErrorCode, ProtocolError
from protocol.workload import Shape

# Error codes of the node RPC: the wire's OTHER and MALFORMED, plus chain-specific ones.
ERR_OTHER = ErrorCode.OTHER
ERR_MALFORMED = ErrorCode.MALFORMED
ERR_UNKNOWN_METHOD = 30
ERR_CHAIN = 40
ERR_INSUFFICIENT_FUNDS = 41
ERR_PAYMENT_KEY_CONFLICT = 42
ERR_UNAVAILABLE = 43

BlockState = Literal["pending", "confirmed", "orphaned", "unknown"]


class ChainError(Exception):
    """A request the chain refused or could not serve; ``code`` is the RPC error code."""

    code = ERR_CHAIN

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InsufficientFunds(ChainError):
    """``send_many`` asked for more than the sender's mature balance."""

    code = ERR_INSUFFICIENT_FUNDS


class PaymentKeyConflict(ChainError):
    """``send_many`` reused an idempotency key with a different set of outputs."""

    code = ERR_PAYMENT_KEY_CONFLICT


class ChainUnavailable(ChainError):
    """The node could not be reached (RPC adapter, after its retries)."""

    code = ERR_UNAVAILABLE


def chain_error_from_code(code: int, message: str) -> ChainError:
    """The exception an adapter raises for an RPC error ``code``."""
    cls = {
        ERR_INSUFFICIENT_FUNDS: InsufficientFunds,
        ERR_PAYMENT_KEY_CONFLICT: PaymentKeyConflict,
        ERR_UNAVAILABLE: ChainUnavailable,
    }.get(code, ChainError)
    return cls(message, code)


def _need(d: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ProtocolError(f"missing field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _optional(d: dict, key: str, kind: type) -> Any:
    value = d.get(key)
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _proofs(value: Any, key: str) -> list[list[bytes]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(p, list) and all(isinstance(h, bytes) for h in p) for p in value
    ):
        raise ProtocolError(f"field {key!r} must be a list of lists of 32-byte hashes")
    return value


@dataclass(frozen=True)
class BlockTemplate:
    """What the next block must say: height, parent, compact target, time and reward."""

    height: int
    prev_hash: bytes
    bits: int
    time: int
    reward: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "prev_hash": self.prev_hash,
            "bits": self.bits,
            "time": self.time,
            "reward": self.reward,
        }

    @classmethod
    def from_wire(cls, d: Any) -> BlockTemplate:
        return cls(
            _need(d, "height", int),
            _need(d, "prev_hash", bytes),
            _need(d, "bits", int),
            _need(d, "time", int),
            _need(d, "reward", int),
        )


@dataclass(frozen=True)
class BlockSubmission:
    """A solved block: header, full coinbase, and what is needed to re-check the ticket."""

    header: bytes
    coinbase: bytes
    shape: Shape
    tile: tuple[int, int]
    workload_seed: bytes | None
    a_rows: bytes | None = None
    bt_rows: bytes | None = None
    a_proofs: list[list[bytes]] | None = None
    b_proofs: list[list[bytes]] | None = None
    a_root: bytes | None = None
    b_root: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        s = self.shape
        return {
            "header": self.header,
            "coinbase": self.coinbase,
            "shape": {"m": s.m, "n": s.n, "k": s.k, "r": s.r},
            "tile": [self.tile[0], self.tile[1]],
            "workload_seed": self.workload_seed,
            "a_rows": self.a_rows,
            "bt_rows": self.bt_rows,
            "a_proofs": self.a_proofs,
            "b_proofs": self.b_proofs,
            "a_root": self.a_root,
            "b_root": self.b_root,
        }

    @classmethod
    def from_wire(cls, d: Any) -> BlockSubmission:
        """Parse an RPC map; raises ``ProtocolError`` on a missing or mistyped field."""
        shape_d = _need(d, "shape", dict)
        shape = Shape(*(_need(shape_d, name, int) for name in ("m", "n", "k", "r")))
        tile = _need(d, "tile", list)
        if len(tile) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in tile):
            raise ProtocolError("field 'tile' must be [ti, tj]")
        return cls(
            header=_need(d, "header", bytes),
            coinbase=_need(d, "coinbase", bytes),
            shape=shape,
            tile=(tile[0], tile[1]),
            workload_seed=_optional(d, "workload_seed", bytes),
            a_rows=_optional(d, "a_rows", bytes),
            bt_rows=_optional(d, "bt_rows", bytes),
            a_proofs=_proofs(d.get("a_proofs"), "a_proofs"),
            b_proofs=_proofs(d.get("b_proofs"), "b_proofs"),
            a_root=_optional(d, "a_root", bytes),
            b_root=_optional(d, "b_root", bytes),
        )


@dataclass(frozen=True)
class SubmitResult:
    """The node's verdict; ``reason`` is "accepted" or a short token such as "stale"."""

    accepted: bool
    block_hash: bytes | None
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "block_hash": self.block_hash, "reason": self.reason}

    @classmethod
    def from_wire(cls, d: Any) -> SubmitResult:
        return cls(
            _need(d, "accepted", bool), _optional(d, "block_hash", bytes), _need(d, "reason", str)
        )


@dataclass(frozen=True)
class BlockStatus:
    """Where a block stands. ``confirmations`` counts blocks built on top of it.

    "pending" while ``confirmations < maturity``, then "confirmed"; "orphaned" once off
    the main chain; "unknown" (height -1) for a hash the node never accepted.
    """

    state: BlockState
    confirmations: int
    height: int

    def to_wire(self) -> dict[str, Any]:
        return {"state": self.state, "confirmations": self.confirmations, "height": self.height}

    @classmethod
    def from_wire(cls, d: Any) -> BlockStatus:
        state = _need(d, "state", str)
        if state not in ("pending", "confirmed", "orphaned", "unknown"):
            raise ProtocolError(f"unknown block state {state!r}")
        return cls(cast(BlockState, state), _need(d, "confirmations", int), _need(d, "height", int))


def tip_to_wire(height: int, block_hash: bytes) -> dict[str, Any]:
    """The answer to ``node.tip``: the tip's height and hash."""
    return {"height": height, "hash": block_hash}


def tip_from_wire(d: Any) -> tuple[int, bytes]:
    """(height, hash) from a ``node.tip`` answer; ``ProtocolError`` if it is not one."""
    return _need(d, "height", int), _need(d, "hash", bytes)


def rpc_request(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request envelope (give it to :func:`protocol.framing.encode_frame`)."""
    return {"id": request_id, "method": method, "params": params}


def rpc_result(request_id: int | None, result: Any) -> dict[str, Any]:
    """The answer to request ``request_id``."""
    return {"id": request_id, "result": result}


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    """An error answer; ``request_id`` is None when the request had no usable id."""
    return {"id": request_id, "error": {"code": code, "message": message}}
