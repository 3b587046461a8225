"""A model unit whose session drops before its delivery lands (SPEC §12.12.8): the pool
voids that lease and queues the unit again; the worker reconnects, is leased the same unit
under a new token and runs it again, so the batch is done. (A worker that remembered the
unit rather than the lease ignored the new job and sat idle until the lease ran out.)"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from protocol.model import reference_pass
from protocol.model_work import weight_roots
from tests.e2e.test_model_worker import infer, model_pool, model_settings, wait_done
from tests.support.model_jobs import batch, make_model
from tests.support.running import WrappedBackend, running_worker
from tests.support.useful_pool import blas, useful_settings
from worker.config import PoolEndpoint


@dataclass
class CuttableProxy:
    """Forwards TCP to ``target_port``; :meth:`cut` closes every connection open now."""

    target_port: int
    port: int = 0
    connections: int = 0
    _scopes: list[trio.CancelScope] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            async with client, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)
        self._scopes.remove(scope)

    @staticmethod
    async def _pipe(
        src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in src:
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


class GatedBackend(WrappedBackend):
    """A real backend whose scans of the layer with ``b_root`` wait for :attr:`gate` (set
    from the test); :attr:`entered` is set when the first such scan starts."""

    def __init__(self, inner: Any, b_root: bytes) -> None:
        super().__init__(inner)
        self.b_root, self.gated = b_root, False
        self.entered, self.gate = threading.Event(), threading.Event()

    def prepare(self, workload: Any) -> None:
        self.gated = workload.b_root == self.b_root
        super().prepare(workload)

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        if self.gated:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.scan(header, share_target, should_stop, want_product)


async def test_a_unit_leased_again_after_a_reconnect_is_run_again(tmp_path: Path) -> None:
    model = make_model()
    x = batch(32, model.input_width, seed=7)  # one unit
    device = GatedBackend(blas(), weight_roots(model, 32)[0])
    async with model_pool(tmp_path / "pool") as pool, trio.open_nursery() as proxies:
        stratum = CuttableProxy(pool.handle.stratum_port)
        await proxies.start(stratum.serve)
        desk = pool.handle.context.models
        async with (
            running_worker(
                [PoolEndpoint("127.0.0.1", stratum.port)],
                [device],
                useful=useful_settings(tmp_path),
                model=model_settings(tmp_path),
            ) as worker,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.handle.http_port}") as client,
        ):
            item = await infer(client, model, x)
            with trio.fail_after(30):  # the worker is on layer 0 of the unit
                while not device.entered.is_set():
                    await trio.sleep(0.02)
            first = next(iter(desk.leases.values()))
            stratum.cut()  # the session leaves before its delivery
            with trio.fail_after(10):
                while first.verdict is None:
                    await trio.sleep(0.02)
            assert first.verdict == (False, "the session left") and first.unit.state == "queued"
            device.gate.set()  # the old pass ends (refused); the unit is leased again
            y = await wait_done(client, item, 60)
            assert np.array_equal(y, reference_pass(model, x).output)
            assert stratum.connections >= 2
            passed = [lease for lease in desk.leases.values() if lease.verdict == (True, "")]
            assert len(passed) == 1 and passed[0].id != first.id
            assert passed[0].token != first.token
            assert worker.models is not None and worker.models.results["verified"] == 1
        proxies.cancel_scope.cancel()
