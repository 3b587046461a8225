"""A cheap load client for many pool connections: raw framed msgpack, valid shares, loops.

For the connection benchmark (``tests/bench/pool_conns.py``) and its test. A
:class:`LoadMiner` is one connection with one reader task (started by :class:`Fleet`) that
matches answers to their requests by id. Shares need no mining: the pool under load runs at
a share difficulty so small that every ticket meets it (:data:`SHARE_DIFFICULTY`), so a
share is only a distinct (extranonce2, tile) pair of the current job, and the pool still
checks each ticket in full.

Two ways to load the pool:

- :meth:`Fleet.closed_loop`: every connection keeps one submit in flight; the rate it
  reaches is the pool's maximum (it measures queueing, not latency).
- :meth:`Fleet.open_loop`: submits at a fixed total rate, round-robin over the
  connections, each sent at its scheduled time whatever the answers do; a submit's latency
  is from its *scheduled* time to its answer, so a client that falls behind shows up as
  latency instead of hiding it (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import resource
from dataclasses import dataclass, field

import trio

from protocol.framing import FrameDecoder, encode_frame

SHARE_DIFFICULTY = 1e-7  # every ticket of k >= 4·32 meets it: D <= 256·k / 2³²
READ_SIZE = 65536


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (up to the hard
    limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class Results:
    """Answers seen in one phase: latencies of accepted shares, error counts by code."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    send_lags: list[float] = field(default_factory=list)  # open loop: sent after its time
    sent: int = 0
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Accepted shares per second of the phase."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, of: list[float] | None = None) -> float:
        """The ``q`` quantile of the latencies (or of ``of``), seconds; nan when empty."""
        values = self.latencies if of is None else of
        if not values:
            return math.nan
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LoadMiner:
    """One connection: sends requests, its reader matches the answers by id."""

    __slots__ = ("decoder", "en2", "ids", "job", "pending", "shares", "stream", "tile_index")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.ids = itertools.count(1)
        self.job: dict | None = None
        # request id -> (when it counts from, where its answer goes, event to set or None)
        self.pending: dict[int, tuple[float, Results, trio.Event | None]] = {}
        self.en2 = 0
        self.tile_index = 0
        self.shares = 0

    async def _receive(self) -> list[dict]:
        data = await self.stream.receive_some(READ_SIZE)
        if not data:
            raise ConnectionError("the pool closed the connection")
        return self.decoder.feed(data)

    async def call(self, method: str, params: dict) -> dict:
        """A request and its answer, reading inline (before the reader task runs)."""
        rid = next(self.ids)
        await self.stream.send_all(encode_frame({"id": rid, "method": method, "params": params}))
        answer = None
        while answer is None:
            for msg in await self._receive():  # (a job may come in the same read, after it)
                if msg.get("method") == "mining.notify":
                    self.job = msg["params"]
                elif msg.get("id") == rid:
                    answer = msg
        return answer

    async def wait_job(self) -> None:
        while self.job is None:
            for msg in await self._receive():
                if msg.get("method") == "mining.notify":
                    self.job = msg["params"]

    def share_frame(self, tiles: list[tuple[int, int]]) -> tuple[int, bytes]:
        """A distinct, valid share of the current job as a submit frame: (id, frame)."""
        assert self.job is not None
        if self.tile_index == len(tiles) or not self.shares:
            self.en2 += 1
            self.tile_index = 0
        tile = tiles[self.tile_index]
        self.tile_index += 1
        self.shares += 1
        rid = next(self.ids)
        params = {
            "job_id": self.job["job_id"],
            "extranonce2": self.en2.to_bytes(8, "little"),
            "time": self.job["time"],
            "tile": list(tile),
        }
        return rid, encode_frame({"id": rid, "method": "mining.submit", "params": params})

    async def read_answers(self) -> None:
        """Reader task: every answer goes to the phase that sent its request."""
        while True:
            try:
                frames = await self._receive()
            except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            now = trio.current_time()
            for msg in frames:
                if msg.get("method") == "mining.notify":
                    self.job = msg["params"]
                    continue
                entry = self.pending.pop(msg.get("id", -1), None)
                if entry is None:
                    continue
                since, results, done = entry
                if "error" in msg:
                    code = msg["error"]["code"]
                    results.errors[code] = results.errors.get(code, 0) + 1
                else:
                    results.latencies.append(now - since)
                if done is not None:
                    done.set()


class Fleet:
    """Many :class:`LoadMiner` connections to one pool port, each subscribed and authorized."""

    def __init__(self, port: int, shape: tuple[int, int, int, int], address: str) -> None:
        self.port = port
        self.address = address
        self.tiles = [(ti, tj) for ti in range(shape[0] // 16) for tj in range(shape[1] // 16)]
        self.miners: list[LoadMiner] = []

    async def connect(self, count: int, concurrency: int = 64) -> None:
        """Open ``count`` more connections (``concurrency`` handshakes at a time)."""
        limiter = trio.CapacityLimiter(concurrency)
        start = len(self.miners)

        async def one(i: int) -> None:
            async with limiter:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                miner = LoadMiner(stream)
                r = await miner.call("mining.subscribe", {"agent": "pool_conns", "protocol": 1})
                if "error" in r:
                    raise RuntimeError(f"subscribe failed: {r['error']}")
                r = await miner.call("mining.authorize", {"login": f"{self.address}.c{i}"})
                if "error" in r:
                    raise RuntimeError(f"authorize failed: {r['error']}")
                await miner.wait_job()
                self.miners.append(miner)

        async with trio.open_nursery() as nursery:
            for i in range(start, start + count):
                nursery.start_soon(one, i)

    async def run_readers(self, *, task_status: trio.TaskStatus[None]) -> None:
        """One reader task per connection until cancelled (start with ``nursery.start``)."""
        async with trio.open_nursery() as nursery:
            for miner in self.miners:
                nursery.start_soon(miner.read_answers)
            task_status.started()

    async def closed_loop(self, seconds: float, connections: int) -> Results:
        """``connections`` miners each keep one submit in flight for ``seconds``."""
        results = Results()

        async def loop(miner: LoadMiner) -> None:
            while True:
                rid, frame = miner.share_frame(self.tiles)
                done = trio.Event()
                miner.pending[rid] = (trio.current_time(), results, done)
                await miner.stream.send_all(frame)
                results.sent += 1
                await done.wait()

        start = trio.current_time()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for miner in self.miners[:connections]:
                    nursery.start_soon(loop, miner)
        results.seconds = trio.current_time() - start
        await self._drain(results, 5.0)
        return results

    async def open_loop(self, rate: float, seconds: float, drain: float = 5.0) -> Results:
        """Submits at ``rate`` per second for ``seconds``, round-robin over every miner, each
        at its scheduled time; then up to ``drain`` seconds for the last answers."""
        results = Results()
        total = int(rate * seconds)
        miners = itertools.cycle(self.miners)
        start = trio.current_time() + 0.05
        sent = 0
        while sent < total:
            await trio.sleep_until(start + sent / rate)
            due = min(total, int((trio.current_time() - start) * rate) + 1)
            while sent < due:  # everything whose time has come, each at its own time
                miner = next(miners)
                rid, frame = miner.share_frame(self.tiles)
                scheduled = start + sent / rate
                miner.pending[rid] = (scheduled, results, None)
                await miner.stream.send_all(frame)
                results.send_lags.append(trio.current_time() - scheduled)
                sent += 1
        results.sent = sent
        results.seconds = trio.current_time() - start
        await self._drain(results, drain)
        return results

    async def _drain(self, results: Results, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while results.answered < results.sent:
                await trio.sleep(0.01)
        for miner in self.miners:  # answers that did not come are not waited for later
            for rid in [r for r, entry in miner.pending.items() if entry[1] is results]:
                del miner.pending[rid]

    async def aclose(self) -> None:
        for miner in self.miners:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await miner.stream.aclose()
