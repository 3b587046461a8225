"""The mining catalogue of the wire (SPEC §wire): ``mining.*`` and ``client.*``.

Miner → pool requests (subscribe, authorize, submit, suggest_difficulty, ping) with
their results, and pool → miner notifications (notify with its ``WorkSpec``, reconnect,
show_message); built on :mod:`protocol.codec`. A new method is one new class plus one
entry in ``MINING_CLIENT_METHODS`` or ``MINING_SERVER_METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .codec import (
    Bin,
    Bool,
    Float,
    Message,
    MethodTable,
    Nested,
    OneOf,
    Optional,
    Result,
    Str,
    StrList,
    Struct,
    Tile,
    TrueResult,
    UInt,
    method_table,
    wire_field,
)
from .data_plane import MAX_DATA_URL, MAX_TOKEN, check_data_url
from .errors import ProtocolError
from .header import EXTRANONCE2_SIZE
from .model_messages import MAX_A_PROOF, MAX_LAYER, MAX_TILE_ROWS, MIN_TILE_ROWS, ModelSource
from .workload import Shape, work_root

MAX_JOB_ID = 64
"""Longest job id on the wire (SPEC §12.4)."""
_PLAIN_SUBMIT_KEYS = frozenset(("job_id", "extranonce2", "time", "tile"))
_MAX_U32 = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribeResult(Result):
    """Answer to ``mining.subscribe``: the session and its extranonce1."""

    _where: ClassVar[str] = "mining.subscribe: result"
    session_id: bytes = wire_field(Bin(min_len=1, max_len=32))
    extranonce1: bytes = wire_field(Bin(min_len=1, max_len=32))
    extranonce2_size: int = wire_field(UInt(lo=EXTRANONCE2_SIZE, hi=EXTRANONCE2_SIZE))


@dataclass(frozen=True)
class AuthorizeResult(Result):
    """Answer to ``mining.authorize``: the bare boolean ``true`` on the wire."""

    _where: ClassVar[str] = "mining.authorize: result"
    ok: bool = wire_field(Bool(), True)

    def to_result(self) -> bool:
        return self.ok

    @classmethod
    def from_result(cls, result: Any) -> AuthorizeResult:
        return cls(Bool().check(result, cls._where))


@dataclass(frozen=True)
class SubmitResult(Result):
    """An accepted share: the difficulty credited, and the block hash if it made a block."""

    _where: ClassVar[str] = "mining.submit: result"
    difficulty: float = wire_field(Float())
    block: bytes | None = wire_field(Optional(Bin(32)), None)


@dataclass(frozen=True)
class SuggestDifficultyResult(TrueResult):
    _where: ClassVar[str] = "mining.suggest_difficulty: result"


@dataclass(frozen=True)
class PingResult(TrueResult):
    _where: ClassVar[str] = "mining.ping: result"


# --- client → pool -------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribe(Message):
    """Open a session; ``resume`` is an earlier ``session_id`` to get its extranonce1 back.

    ``capabilities`` (optional, additive) lists features the miner supports; absent = none.
    """

    method: ClassVar[str] = "mining.subscribe"
    result_type: ClassVar[type[Result]] = SubscribeResult
    agent: str = wire_field(Str(max_len=128))
    protocol: int = wire_field(UInt(32, lo=1, hi=(1 << 32) - 1), 1)
    resume: bytes | None = wire_field(Optional(Bin(min_len=1, max_len=32)), None)
    capabilities: tuple[str, ...] | None = wire_field(Optional(StrList(16, 32)), None)
    """Optional features the miner supports, e.g. ``("useful-1",)`` (SPEC §12.7)."""


@dataclass(frozen=True)
class Authorize(Message):
    """Log a worker in: ``login`` is ``ADDRESS.WORKER`` (worker "default" if absent)."""

    method: ClassVar[str] = "mining.authorize"
    result_type: ClassVar[type[Result]] = AuthorizeResult
    login: str = wire_field(Str(max_len=128))
    password: str = wire_field(Str(max_len=128, min_len=0, printable=False), "")

    def _check(self, where: str) -> None:
        if not self.address:
            raise ProtocolError(f"{where}.login must be ADDRESS.WORKER, got {self.login!r:.60}")

    @property
    def address(self) -> str:
        return self.login.partition(".")[0]

    @property
    def worker(self) -> str:
        return self.login.partition(".")[2] or "default"


@dataclass(frozen=True)
class Submit(Message):
    """A share: the ticket of ``tile`` for the header of job, extranonce2 and time."""

    method: ClassVar[str] = "mining.submit"
    result_type: ClassVar[type[Result]] = SubmitResult
    job_id: str = wire_field(Str(max_len=MAX_JOB_ID))
    extranonce2: bytes = wire_field(Bin(EXTRANONCE2_SIZE))
    time: int = wire_field(UInt(64))
    tile: tuple[int, int] = wire_field(Tile())
    # A share on a model job (SPEC §12.12.8) names its layer and that layer's a_root, and
    # opens the tile's 16 rows of the padded A_l; absent on every other job.
    layer: int | None = wire_field(Optional(UInt(16, hi=MAX_LAYER)), None)
    a_root: bytes | None = wire_field(Optional(Bin(32)), None)
    a_rows: bytes | None = wire_field(
        Optional(Bin(min_len=MIN_TILE_ROWS, max_len=MAX_TILE_ROWS)), None
    )
    a_proof: bytes | None = wire_field(Optional(Bin(min_len=0, max_len=MAX_A_PROOF)), None)

    @classmethod
    def from_params(cls, params: Any) -> Any:
        """As :meth:`Message.from_params`; a plain share (the four required fields, each
        valid, no layer fields) skips the generic per-field dispatch. Anything else takes
        the generic path, so every refusal and its text stay the same."""
        if type(params) is dict and params.keys() <= _PLAIN_SUBMIT_KEYS:
            job_id = params.get("job_id")
            en2 = params.get("extranonce2")
            when = params.get("time")
            tile = params.get("tile")
            if (
                type(job_id) is str
                and 0 < len(job_id) <= MAX_JOB_ID
                and type(en2) is bytes
                and len(en2) == EXTRANONCE2_SIZE
                and type(when) is int
                and 0 <= when <= _MAX_U64
                and type(tile) is list
                and len(tile) == 2
                and job_id.isprintable()
            ):
                ti, tj = tile
                if type(ti) is type(tj) is int and 0 <= ti <= _MAX_U32 and 0 <= tj <= _MAX_U32:
                    obj = cls.__new__(cls)
                    setattr_ = object.__setattr__
                    setattr_(obj, "job_id", job_id)
                    setattr_(obj, "extranonce2", en2)
                    setattr_(obj, "time", when)
                    setattr_(obj, "tile", (ti, tj))
                    setattr_(obj, "layer", None)
                    setattr_(obj, "a_root", None)
                    setattr_(obj, "a_rows", None)
                    setattr_(obj, "a_proof", None)
                    return obj
        return cls._from_map(params, cls._where)

    def _check(self, where: str) -> None:
        # Each refusal names the field that is there without its partner, first.
        if self.a_proof is not None and len(self.a_proof) % 32:
            raise ProtocolError(f"{where}.a_proof must be whole 32-byte hashes")
        for name, partner in (("a_proof", "a_rows"), ("a_rows", "a_proof"), ("layer", "a_root")):
            if getattr(self, name) is not None and getattr(self, partner) is None:
                raise ProtocolError(f"{where}.{name} needs {where}.{partner}")
        if self.a_root is not None and self.layer is None:
            raise ProtocolError(f"{where}.a_root needs {where}.layer")
        if self.a_rows is not None and self.layer is None:
            raise ProtocolError(f"{where}.a_rows needs {where}.layer and {where}.a_root")

    @property
    def is_layer_share(self) -> bool:
        """Whether the submit carries a model job's layer fields."""
        return self.layer is not None


@dataclass(frozen=True)
class SuggestDifficulty(Message):
    method: ClassVar[str] = "mining.suggest_difficulty"
    result_type: ClassVar[type[Result]] = SuggestDifficultyResult
    difficulty: float = wire_field(Float())


@dataclass(frozen=True)
class Ping(Message):
    method: ClassVar[str] = "mining.ping"
    result_type: ClassVar[type[Result]] = PingResult


# --- pool → client -------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSource(Struct):
    """Operands generated from a 32-byte workload seed (SPEC §synthetic)."""

    kind: ClassVar[str] = "synthetic"
    _where: ClassVar[str] = "work.source"
    seed: bytes = wire_field(Bin(32))


@dataclass(frozen=True)
class NextUnit(Struct):
    """The unit the pool has reserved for this session next (SPEC §12.7, prefetch): its two
    operand blobs and the token that already authorizes their ``GET`` on the same data plane.
    """

    _where: ClassVar[str] = "work.source.next"
    a: bytes = wire_field(Bin(32))
    b: bytes = wire_field(Bin(32))
    token: str = wire_field(Str(max_len=MAX_TOKEN))


@dataclass(frozen=True)
class BlobSource(Struct):
    """Operands fetched by content hash: ``a`` is the blob of A, ``b`` the blob of Bᵀ.

    ``data`` and ``token`` (both or neither) name the lease's HTTP data plane (SPEC §12.7):
    the URL base of its blob and result endpoints and the lease's bearer token. ``next``
    (only with ``data``) names the unit reserved for the session next, to prefetch.
    """

    kind: ClassVar[str] = "blob"
    _where: ClassVar[str] = "work.source"
    a: bytes = wire_field(Bin(32))
    b: bytes = wire_field(Bin(32))
    data: str | None = wire_field(Optional(Str(max_len=MAX_DATA_URL)), None)
    token: str | None = wire_field(Optional(Str(max_len=MAX_TOKEN)), None)
    next: NextUnit | None = wire_field(  # noqa: RUF009 (a field spec)
        Optional(Nested(NextUnit)), None
    )

    def _check(self, where: str) -> None:
        if (self.data is None) != (self.token is None):
            raise ProtocolError(f"{where}.data and {where}.token go together (both or neither)")
        if self.next is not None and self.data is None:
            raise ProtocolError(f"{where}.next needs {where}.data (it is fetched over HTTP)")
        if self.data is not None:
            check_data_url(self.data, where)


@dataclass(frozen=True)
class WorkSpec(Struct):
    """The workload of a job: its shape, row commitments and where the operands come from."""

    _where: ClassVar[str] = "work"
    m: int = wire_field(UInt(32))
    n: int = wire_field(UInt(32))
    k: int = wire_field(UInt(32))
    r: int = wire_field(UInt(32))
    a_root: bytes = wire_field(Bin(32))
    b_root: bytes = wire_field(Bin(32))
    source: SyntheticSource | BlobSource | ModelSource = wire_field(  # noqa: RUF009
        OneOf(SyntheticSource, BlobSource, ModelSource)
    )

    def _check(self, where: str) -> None:
        try:
            shape = Shape(self.m, self.n, self.k, self.r)
        except ProtocolError as exc:
            text = str(exc).removeprefix("work.")
            raise ProtocolError(f"{where}.{text}") from None
        if isinstance(self.source, ModelSource):  # its work is layer 0's (SPEC §12.12.8)
            self.source.check_work(shape, self.a_root, self.b_root, where)

    @property
    def shape(self) -> Shape:
        return Shape(self.m, self.n, self.k, self.r)

    @property
    def work_root(self) -> bytes:
        """The commitment that goes into the header."""
        return work_root(self.shape, self.a_root, self.b_root)


@dataclass(frozen=True)
class Notify(Message):
    """A job. Difficulty travels with it; ``clean`` means drop all earlier jobs."""

    method: ClassVar[str] = "mining.notify"
    job_id: str = wire_field(Str(max_len=MAX_JOB_ID))
    clean: bool = wire_field(Bool())
    version: int = wire_field(UInt(32))
    height: int = wire_field(UInt(32))
    prev_hash: bytes = wire_field(Bin(32))
    coinbase1: bytes = wire_field(Bin(min_len=1, max_len=1024))
    coinbase2: bytes = wire_field(Bin(min_len=1, max_len=1024))
    time: int = wire_field(UInt(64))
    bits: int = wire_field(UInt(32))
    difficulty: float = wire_field(Float())
    work: WorkSpec = wire_field(Nested(WorkSpec))  # noqa: RUF009 (a field spec)


@dataclass(frozen=True)
class Reconnect(Message):
    """Ask the miner to reconnect to ``host:port`` after ``wait`` seconds."""

    method: ClassVar[str] = "client.reconnect"
    host: str = wire_field(Str(max_len=255))
    port: int = wire_field(UInt(lo=1, hi=65535))
    wait: float = wire_field(Float(allow_zero=True))


@dataclass(frozen=True)
class ShowMessage(Message):
    method: ClassVar[str] = "client.show_message"
    text: str = wire_field(Str(max_len=4096, min_len=0, printable=False))


MINING_CLIENT_METHODS: MethodTable = method_table(
    Subscribe, Authorize, Submit, SuggestDifficulty, Ping
)
"""Mining methods a miner sends to the pool (requests), by name."""

MINING_SERVER_METHODS: MethodTable = method_table(Notify, Reconnect, ShowMessage)
"""Methods the pool sends to a miner (notifications), by name."""
