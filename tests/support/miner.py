"""A small test miner built on ``protocol/`` only (no pool code): for tests and the bench.

It speaks the wire through ``protocol.connection.Connection("client")`` over a trio TCP
stream and mines jobs with the numpy reference ``protocol.ticket.mine_header`` — fast
enough at the tiny shapes tests use (64×64×256). It can also send raw bytes, so tests can
feed the pool garbage.

Useful work (SPEC §12.7): subscribe with ``capabilities=("useful-1",)``; for a blob job,
:meth:`TestMiner.load_workload` fetches both operands with ``work.get_blob`` and checks
them against the job's roots, :meth:`TestMiner.product` mines one header and denoises its
noisy product (``protocol.denoise``), :meth:`TestMiner.send_result` returns ``C`` with
``work.result`` chunks.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import trio

from protocol import messages
from protocol.codec import Message
from protocol.connection import (
    BadRequest,
    Connection,
    NotificationReceived,
    RequestReceived,
    ResponseReceived,
)
from protocol.denoise import denoise
from protocol.errors import ErrorCode
from protocol.header import Header, assemble_coinbase, coinbase_hash
from protocol.merkle import rows_root
from protocol.target import meets_target, target_from_bits, target_from_difficulty
from protocol.ticket import HeaderWork, mine_header
from protocol.useful import chunks
from protocol.work_messages import CHUNK_SIZE, USEFUL_CAPABILITY, GetBlob, WorkResult
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


def mine_job_header(
    job: messages.Notify,
    extranonce1: bytes,
    extranonce2: bytes,
    ntime: int | None = None,
    workload: Workload | None = None,
) -> tuple[HeaderWork, list[Candidate]]:
    """Mine one header of ``job`` (CPU; run in a thread): its work and its shares.

    ``workload`` is needed for a blob job (the operands fetched with ``work.get_blob``).
    """
    spec = job.work
    if workload is None:
        assert isinstance(spec.source, messages.SyntheticSource), "blob job without operands"
        workload = _workload(spec.source.seed, spec.shape)
    if (workload.a_root, workload.b_root) != (spec.a_root, spec.b_root):
        raise AssertionError("the job's roots do not match its workload")
    ntime = job.time if ntime is None else ntime
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    header = Header(
        job.version,
        job.height,
        job.prev_hash,
        coinbase_hash(coinbase),
        workload.work_root,
        ntime,
        job.bits,
    ).encode()
    work = mine_header(header, workload)
    k = spec.k
    network = target_from_bits(job.bits)
    return work, [
        Candidate(
            job.job_id, extranonce2, ntime, (ti, tj), digest, meets_target(digest, network, k)
        )
        for ti, tj, digest in work.winners(target_from_difficulty(job.difficulty), k)
    ]


def mine_job(
    job: messages.Notify,
    extranonce1: bytes,
    extranonce2: bytes,
    ntime: int | None = None,
    workload: Workload | None = None,
) -> list[Candidate]:
    """Every tile of one header that meets the job's difficulty (CPU; run in a thread)."""
    return mine_job_header(job, extranonce1, extranonce2, ntime, workload)[1]


def losing_tiles(job: messages.Notify, extranonce1: bytes, extranonce2: bytes) -> list[Candidate]:
    """Tiles of one header whose ticket does *not* meet the job's difficulty."""
    spec = job.work
    assert isinstance(spec.source, messages.SyntheticSource)
    workload = _workload(spec.source.seed, spec.shape)
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, extranonce2, job.coinbase2)
    header = Header(
        job.version,
        job.height,
        job.prev_hash,
        coinbase_hash(coinbase),
        workload.work_root,
        job.time,
        job.bits,
    ).encode()
    work = mine_header(header, workload)
    share = target_from_difficulty(job.difficulty)
    return [
        Candidate(job.job_id, extranonce2, job.time, (ti, tj), work.digest(ti, tj), False)
        for ti in range(spec.shape.tiles_m)
        for tj in range(spec.shape.tiles_n)
        if not meets_target(work.digest(ti, tj), share, spec.k)
    ]


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
        self.messages: list[Message] = []  # show_message / reconnect notifications
        self.extranonce1 = b""
        self.session_id = b""
        self.closed = False
        self.workloads: dict[bytes, Workload] = {}  # blob jobs' operands, by work root
        # what arrived, in order: ("job", job_id), ("response", request id), ("message", msg)
        self.arrivals: list[tuple[str, object]] = []

    @classmethod
    async def connect(
        cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0, local: str | None = None
    ) -> TestMiner:
        """A miner over TCP; ``local`` picks its source address (e.g. ``127.0.0.2``: another
        IP on loopback)."""
        return cls(await trio.open_tcp_stream(host, port, local_address=local), timeout)

    @classmethod
    async def connect_tls(
        cls,
        port: int,
        cafile: str,
        host: str = "127.0.0.1",
        server_hostname: str = "localhost",
        timeout: float = 10.0,
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
                self.arrivals.append(("response", event.id))
            elif isinstance(event, NotificationReceived):
                if isinstance(event.message, messages.Notify):
                    self.jobs.append(event.message)
                    self.arrivals.append(("job", event.message.job_id))
                else:
                    self.messages.append(event.message)
                    self.arrivals.append(("message", event.message))
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

    async def send(self, message: Message) -> int:
        request_id, frame = self.conn.send_request(message)
        await self.stream.send_all(frame)
        return request_id

    async def response(self, request_id: int) -> ResponseReceived:
        with trio.fail_after(self.timeout):
            while request_id not in self.responses:
                await self._read()
        return self.responses.pop(request_id)

    async def request(self, message: Message) -> ResponseReceived:
        return await self.response(await self.send(message))

    async def subscribe(
        self,
        agent: str = "test-miner/1",
        resume: bytes | None = None,
        capabilities: tuple[str, ...] | None = None,
    ) -> messages.SubscribeResult:
        r = await self.request(
            messages.Subscribe(agent=agent, resume=resume, capabilities=capabilities)
        )
        assert r.error is None, r.error
        self.extranonce1 = r.result.extranonce1
        self.session_id = r.result.session_id
        return r.result

    async def authorize(self, login: str) -> ResponseReceived:
        return await self.request(messages.Authorize(login=login))

    async def login(self, login: str, useful: bool = False) -> messages.Notify:
        """Subscribe (announcing ``useful-1`` if ``useful``), authorize, return the first job."""
        await self.subscribe(capabilities=(USEFUL_CAPABILITY,) if useful else None)
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

    async def find(
        self, job: messages.Notify, extranonce2: bytes | None = None, ntime: int | None = None
    ) -> list[Candidate]:
        """Mine one header of ``job`` in a thread; shares meeting its difficulty."""
        en2 = secrets.token_bytes(8) if extranonce2 is None else extranonce2
        workload = self.workloads.get(job.work.work_root)
        return await trio.to_thread.run_sync(mine_job, job, self.extranonce1, en2, ntime, workload)

    async def submit(self, c: Candidate) -> ResponseReceived:
        return await self.request(
            messages.Submit(job_id=c.job_id, extranonce2=c.extranonce2, time=c.time, tile=c.tile)
        )

    async def send_submit(self, c: Candidate) -> int:
        return await self.send(
            messages.Submit(job_id=c.job_id, extranonce2=c.extranonce2, time=c.time, tile=c.tile)
        )

    async def shares(self, count: int, job: messages.Notify | None = None) -> list[Candidate]:
        """At least ``count`` candidates of ``job`` (default: the newest), mining headers."""
        found: list[Candidate] = []
        with trio.fail_after(self.timeout):
            while len(found) < count:
                found += await self.find(job or self.job)
        return found

    # -- useful work --------------------------------------------------------------------

    async def get_blob(self, blob: bytes, offset: int, length: int) -> ResponseReceived:
        """One ``work.get_blob`` request and its raw response (result or error)."""
        return await self.request(GetBlob(hash=blob, offset=offset, length=length))

    async def fetch_blob(self, blob: bytes, size: int, chunk: int = CHUNK_SIZE) -> bytes:
        """All ``size`` bytes of ``blob`` in chunks; AssertionError on any refusal."""
        data = bytearray()
        while len(data) < size:
            r = await self.get_blob(blob, len(data), min(chunk, size - len(data)))
            assert r.error is None, r.error
            assert r.result.total == size, (r.result.total, size)
            assert r.result.data, "empty chunk"
            data += r.result.data
        return bytes(data)

    async def load_workload(self, job: messages.Notify) -> Workload:
        """The operands of a blob job, fetched and checked against its row roots."""
        spec = job.work
        assert isinstance(spec.source, messages.BlobSource), "not a blob job"
        if spec.work_root in self.workloads:
            return self.workloads[spec.work_root]
        raw_a = await self.fetch_blob(spec.source.a, spec.m * spec.k)
        raw_b = await self.fetch_blob(spec.source.b, spec.n * spec.k)
        a = np.frombuffer(raw_a, dtype=np.int8).reshape(spec.m, spec.k)
        bt = np.frombuffer(raw_b, dtype=np.int8).reshape(spec.n, spec.k)
        assert rows_root(a) == spec.a_root and rows_root(bt) == spec.b_root, "rows ≠ roots"
        workload = Workload(spec.shape, a, bt)
        self.workloads[spec.work_root] = workload
        return workload

    async def product(self, job: messages.Notify) -> tuple[np.ndarray, list[Candidate]]:
        """Mine one header of a blob job: ``(C = A·B denoised, int32, shares found)``."""
        workload = await self.load_workload(job)
        en2 = secrets.token_bytes(8)

        def work() -> tuple[np.ndarray, list[Candidate]]:
            header_work, found = mine_job_header(job, self.extranonce1, en2, None, workload)
            c = denoise(
                header_work.noisy_product,
                workload.a,
                workload.bt,
                header_work.seed,
                workload.shape.r,
            )
            return c, found

        return await trio.to_thread.run_sync(work)

    async def send_result(
        self, job: messages.Notify, c: np.ndarray, chunk: int = CHUNK_SIZE
    ) -> ResponseReceived:
        """Send ``c`` (int32 LE, row-major) with ``work.result``; the last chunk's response.

        Stops at (and returns) the first error response.
        """
        raw = np.ascontiguousarray(c, dtype="<i4").tobytes()
        response = None
        for offset, data, final in chunks(raw, chunk):
            response = await self.request(
                WorkResult(
                    job_id=job.job_id,
                    unit=job.work.work_root,
                    offset=offset,
                    data=data,
                    final=final,
                )
            )
            if response.error is not None:
                return response
        assert response is not None
        return response


async def misbehave(miner: TestMiner) -> None:
    """Log in and submit tickets that miss the difficulty until the pool closes the session
    (fresh work after the first: every invalid share is one escalation step at window 1)."""
    from protocol.address import new_address

    await miner.login(new_address() + ".bad")
    try:
        for step in range(3):
            seen = len(miner.jobs)
            (c, *_) = await trio.to_thread.run_sync(
                losing_tiles, miner.job, miner.extranonce1, secrets.token_bytes(8)
            )
            r = await miner.submit(c)
            assert r.error.code == ErrorCode.LOW_DIFFICULTY
            if step == 0:  # resend work: mine the fresh job next
                await miner.next_job(seen)
    except MinerClosed:
        pass
    await miner.wait_closed()
