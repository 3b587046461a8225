"""A small test miner built on ``protocol/`` only (no pool code): for tests and the bench.

It speaks the wire through ``protocol.connection.Connection("client")`` over a trio TCP
stream and mines jobs with the numpy reference ``protocol.ticket.mine_header`` — fast
enough at the tiny shapes tests use (64×64×256). It can also send raw bytes, so tests can
feed the pool garbage.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from functools import lru_cache

import trio

from protocol import messages
from protocol.connection import (
    BadRequest,
    Connection,
    NotificationReceived,
    RequestReceived,
    ResponseReceived,
)
from protocol.header import Header, assemble_coinbase, coinbase_hash
from protocol.target import meets_target, target_from_bits, target_from_difficulty
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload


@dataclass(frozen=True)
class Candidate:
    """One ticket that meets a job's share difficulty."""

    job_id: str
    extranonce2: bytes
    time: int
    tile: tuple[int, int]
    digest: bytes
    is_block: bool


@lru_cache(maxsize=8)
def _workload(seed: bytes, shape: Shape) -> Workload:
    return Workload.synthetic(seed, shape)


def mine_job(job: messages.Notify, extranonce1: bytes, extranonce2: bytes,
             ntime: int | None = None) -> list[Candidate]:
    """Every tile of one header that meets the job's difficulty (CPU; run in a thread)."""
    spec = job.work
    assert isinstance(spec.source, messages.SyntheticSource)
    workload = _workload(spec.source.seed, spec.shape)
    if (workload.a_root, workload.b_root) != (spec.a_root, spec.b_root):
        raise AssertionError("the job's roots do not match its synthetic workload")
    ntime = job.time if ntime is None else ntime
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    header = Header(job.version, job.height, job.prev_hash, coinbase_hash(coinbase),
                    workload.work_root, ntime, job.bits).encode()
    work = mine_header(header, workload)
    k = spec.k
    network = target_from_bits(job.bits)
    return [Candidate(job.job_id, extranonce2, ntime, (ti, tj), digest,
                      meets_target(digest, network, k))
            for ti, tj, digest in work.winners(target_from_difficulty(job.difficulty), k)]


def losing_tiles(job: messages.Notify, extranonce1: bytes, extranonce2: bytes
                 ) -> list[Candidate]:
    """Tiles of one header whose ticket does *not* meet the job's difficulty."""
    spec = job.work
    assert isinstance(spec.source, messages.SyntheticSource)
    workload = _workload(spec.source.seed, spec.shape)
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    header = Header(job.version, job.height, job.prev_hash, coinbase_hash(coinbase),
                    workload.work_root, job.time, job.bits).encode()
    work = mine_header(header, workload)
    share = target_from_difficulty(job.difficulty)
    return [Candidate(job.job_id, extranonce2, job.time, (ti, tj), work.digest(ti, tj), False)
            for ti in range(spec.shape.tiles_m) for tj in range(spec.shape.tiles_n)
            if not meets_target(work.digest(ti, tj), share, spec.k)]


class MinerClosed(Exception):
    """The pool closed the connection."""


class TestMiner:
    """One miner connection. Every wait is bounded by ``timeout`` seconds."""

    __test__ = False  # not a pytest class

    def __init__(self, stream: trio.abc.Stream, timeout: float = 10.0) -> None:
        self.stream = stream
        self.timeout = timeout
        self.conn = Connection("client")
        self.responses: dict[int, ResponseReceived] = {}
        self.jobs: list[messages.Notify] = []
        self.messages: list[messages.Message] = []  # show_message / reconnect notifications
        self.extranonce1 = b""
        self.session_id = b""
        self.closed = False

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0
                      ) -> TestMiner:
        return cls(await trio.open_tcp_stream(host, port), timeout)

    @classmethod
    async def connect_tls(cls, port: int, cafile: str, host: str = "127.0.0.1",
                          server_hostname: str = "localhost", timeout: float = 10.0
                          ) -> TestMiner:
        """A miner over TLS, trusting the certificate in ``cafile``."""
        context = ssl.create_default_context(cafile=cafile)
        tcp = await trio.open_tcp_stream(host, port)
        return cls(trio.SSLStream(tcp, context, server_hostname=server_hostname), timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> TestMiner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- reading ------------------------------------------------------------------------

    async def _read(self) -> None:
        if self.closed:
            raise MinerClosed("connection closed by the pool")
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            raise MinerClosed("connection closed by the pool")
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.responses[event.id] = event
            elif isinstance(event, NotificationReceived):
                if isinstance(event.message, messages.Notify):
                    self.jobs.append(event.message)
                else:
                    self.messages.append(event.message)
            elif isinstance(event, RequestReceived | BadRequest):
                raise AssertionError(f"pool sent an unexpected frame: {event}")

    async def wait_closed(self) -> None:
        """Read until the pool closes the connection."""
        with trio.fail_after(self.timeout):
            while True:
                try:
                    await self._read()
                except MinerClosed:
                    return

    # -- requests -----------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, message: messages.Message) -> int:
        request_id, frame = self.conn.send_request(message)
        await self.stream.send_all(frame)
        return request_id

    async def response(self, request_id: int) -> ResponseReceived:
        with trio.fail_after(self.timeout):
            while request_id not in self.responses:
                await self._read()
        return self.responses.pop(request_id)

    async def request(self, message: messages.Message) -> ResponseReceived:
        return await self.response(await self.send(message))

    async def subscribe(self, agent: str = "test-miner/1", resume: bytes | None = None
                        ) -> messages.SubscribeResult:
        r = await self.request(messages.Subscribe(agent=agent, resume=resume))
        assert r.error is None, r.error
        self.extranonce1 = r.result.extranonce1
        self.session_id = r.result.session_id
        return r.result

    async def authorize(self, login: str) -> ResponseReceived:
        return await self.request(messages.Authorize(login=login))

    async def login(self, login: str) -> messages.Notify:
        """Subscribe, authorize and return the first job."""
        await self.subscribe()
        r = await self.authorize(login)
        assert r.error is None, r.error
        return await self.next_job(0)

    async def next_job(self, seen: int | None = None) -> messages.Notify:
        """The first job after the first ``seen`` jobs (default: all jobs seen so far)."""
        seen = len(self.jobs) if seen is None else seen
        with trio.fail_after(self.timeout):
            while len(self.jobs) <= seen:
                await self._read()
        return self.jobs[seen]

    @property
    def job(self) -> messages.Notify:
        return self.jobs[-1]

    async def find(self, job: messages.Notify, extranonce2: bytes | None = None,
                   ntime: int | None = None) -> list[Candidate]:
        """Mine one header of ``job`` in a thread; shares meeting its difficulty."""
        en2 = secrets.token_bytes(8) if extranonce2 is None else extranonce2
        return await trio.to_thread.run_sync(mine_job, job, self.extranonce1, en2, ntime)

    async def submit(self, c: Candidate) -> ResponseReceived:
        return await self.request(messages.Submit(job_id=c.job_id, extranonce2=c.extranonce2,
                                                  time=c.time, tile=c.tile))

    async def send_submit(self, c: Candidate) -> int:
        return await self.send(messages.Submit(job_id=c.job_id, extranonce2=c.extranonce2,
                                               time=c.time, tile=c.tile))

    async def shares(self, count: int, job: messages.Notify | None = None) -> list[Candidate]:
        """At least ``count`` candidates of ``job`` (default: the newest), mining headers."""
        found: list[Candidate] = []
        with trio.fail_after(self.timeout):
            while len(found) < count:
                found += await self.find(job or self.job)
        return found
