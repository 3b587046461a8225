"""One model job from the pool, end to end (SPEC §12.12.8): fetch, mine, submit, deliver,
answer the audit.

:class:`ModelJobRunner` takes a ``mining.notify`` whose ``work.source`` is a
``ModelSource``: it fetches ``X`` and the layer blobs over the lease's data plane (each
checked by hash; the layers as a model file and against ``model_id``; ``X``'s padded root
against ``work.a_root``), keeps the model in a :class:`~worker.model_cache.ModelCache`
(fetched once for every unit of the model), runs the pass with
:func:`~worker.model_pass.run_unit_in_thread` and one header per layer built from the job
for ``work_root_l``, hands every layer's shares to ``submit`` as soon as that layer is done
(while the later layers run), uploads the delivery, fetches the audit and answers it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import trio

from protocol.audit import Challenge
from protocol.hashing import H
from protocol.header import Header, assemble_coinbase, coinbase_hash
from protocol.merkle import rows_root
from protocol.messages import Notify, Submit
from protocol.model import Model, save_model
from protocol.model_delivery import challenges_from_json, encode_answers, encode_delivery
from protocol.model_messages import ModelSource, model_from_blobs
from protocol.model_work import layer_shape, padded_activation
from protocol.target import target_from_difficulty
from protocol.workload import ENTRY_MAX, ENTRY_MIN

from .backends.base import Backend
from .model_cache import ModelCache, ResidentModel
from .model_pass import LayerRecord, LayerShare, UnitOutcome, run_unit_in_thread

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
SubmitShare = Callable[[Submit], Awaitable[object]]
"""Sends one ``mining.submit`` to the pool and waits for its answer."""


class ModelJobError(Exception):
    """A model job that cannot be done (a bad blob, a refused request): one line."""


@dataclass(frozen=True)
class ModelJobResult:
    """What one model job gave: the unit, the pool's audit verdict, shares sent."""

    unit: bytes
    verified: bool
    reason: str
    shares: int
    challenges: tuple[Challenge, ...]


def submit_of(job: Notify, record: LayerRecord, share: LayerShare, extranonce2: bytes) -> Submit:
    """The ``mining.submit`` of a share on layer ``record.index`` with its opening: the 16
    rows and the siblings above their subtree (``a_proof``)."""
    header = Header.decode(record.header)
    return Submit(
        job.job_id,
        extranonce2,
        header.time,
        share.tile,
        record.index,
        record.a_root,
        share.a_rows.tobytes(),
        b"".join(share.proofs[0][4:]),
    )


class ModelJobRunner:
    """Runs model jobs on one backend; ``check_products``: Freivalds on every product."""

    def __init__(
        self,
        backend: Backend,
        cache: ModelCache,
        limiter: trio.CapacityLimiter,
        extranonce1: bytes,
        *,
        spill_dir: Path | None = None,
        check_products: bool = True,
        on_layer: Callable[[LayerRecord], None] | None = None,
    ) -> None:
        self.backend = backend
        self.on_layer = on_layer  # each layer's record as it is done (on the trio side)
        self.cache = cache
        self.limiter = limiter
        self.extranonce1 = extranonce1
        self.spill_dir = spill_dir
        self.check_products = check_products

    async def _get(self, http: httpx.AsyncClient, source: ModelSource, blob: bytes) -> bytes:
        answer = await http.get(
            f"{source.data}/blobs/{blob.hex()}", headers={"Authorization": f"Bearer {source.token}"}
        )
        if answer.status_code != 200:
            raise ModelJobError(f"GET blob {blob.hex()[:16]}…: {answer.status_code} {answer.text}")
        if H(answer.content) != blob:
            raise ModelJobError(f"blob {blob.hex()[:16]}…: the bytes do not hash to it")
        return answer.content

    async def _inputs(self, http: httpx.AsyncClient, job: Notify, model: Model) -> np.ndarray:
        source = job.work.source
        assert isinstance(source, ModelSource)
        raw = await self._get(http, source, source.x)
        if len(raw) != source.m * model.input_width:
            raise ModelJobError(f"X is {len(raw)} bytes, not {source.m}x{model.input_width}")
        x = np.frombuffer(raw, dtype=np.int8).reshape(source.m, model.input_width)
        if int(x.min()) < ENTRY_MIN or int(x.max()) > ENTRY_MAX:
            raise ModelJobError("X has entries outside [-64, 64]")
        padded = padded_activation(x, layer_shape(model, 0, source.m, source.r))
        if rows_root(padded) != job.work.a_root:
            raise ModelJobError("the padded X does not have the job's a_root")
        return x

    def _header_builder(
        self, job: Notify, extranonce2: dict[int, bytes]
    ) -> Callable[[int, bytes], bytes]:
        def header_for_layer(index: int, root: bytes) -> bytes:
            en2 = (index + 1).to_bytes(8, "little")  # one header per layer of the unit
            extranonce2[index] = en2
            coinbase = assemble_coinbase(job.coinbase1, self.extranonce1, en2, job.coinbase2)
            return Header(
                job.version,
                job.height,
                job.prev_hash,
                coinbase_hash(coinbase),
                root,
                job.time,
                job.bits,
            ).encode()

        return header_for_layer

    async def run(self, job: Notify, submit: SubmitShare) -> ModelJobResult:
        """Do the whole job; the pool's verdict on its audit."""
        source = job.work.source
        if not isinstance(source, ModelSource):
            raise ModelJobError("not a model job")
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:

            async def fetch(model_id: bytes) -> bytes:
                blobs = [await self._get(http, source, spec.blob) for spec in source.layers]
                model = model_from_blobs(blobs)
                if model.model_id != model_id:
                    raise ModelJobError("the layer blobs are not the job's model")
                return save_model(model)

            async with self.cache.use(source.model_id, fetch) as resident:
                x = await self._inputs(http, job, resident.model)
                outcome, sent = await self._mine(job, resident, x, submit)
            with outcome:
                return await self._deliver(http, job, source, resident.model, outcome, sent)

    async def _mine(
        self, job: Notify, resident: ResidentModel, x: np.ndarray, submit: SubmitShare
    ) -> tuple[UnitOutcome, int]:
        source = job.work.source
        assert isinstance(source, ModelSource)
        extranonce2: dict[int, bytes] = {}
        send, receive = trio.open_memory_channel[LayerRecord](source.depth)
        sent = 0

        def on_layer(record: LayerRecord) -> None:
            trio.from_thread.run_sync(send.send_nowait, record)

        async def submitter() -> None:
            nonlocal sent
            async with receive:
                async for record in receive:
                    if self.on_layer is not None:
                        self.on_layer(record)
                    for share in record.shares:
                        await submit(submit_of(job, record, share, extranonce2[record.index]))
                        sent += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submitter)
            async with send:
                outcome = await run_unit_in_thread(
                    resident,
                    x,
                    source.r,
                    self.backend,
                    self._header_builder(job, extranonce2),
                    target_from_difficulty(job.difficulty),
                    self.limiter,
                    spill_dir=self.spill_dir,
                    check_products=self.check_products,
                    on_layer=on_layer,
                )
        return outcome, sent

    async def _deliver(
        self,
        http: httpx.AsyncClient,
        job: Notify,
        source: ModelSource,
        model: Model,
        outcome: UnitOutcome,
        sent: int,
    ) -> ModelJobResult:
        auth = {"Authorization": f"Bearer {source.token}"}
        body = encode_delivery(model, outcome.a_roots, outcome.output)
        unit = source.unit.hex()
        answer = await http.put(
            f"{source.data}/results/{unit}",
            params={"offset": "0"},
            content=body,
            headers={**auth, "X-Result-Hash": H(body).hex()},
        )
        if answer.status_code != 200 or not answer.json().get("delivered"):
            raise ModelJobError(f"PUT delivery: {answer.status_code} {answer.text}")
        answer = await http.get(f"{source.data}/audits/{unit}", headers=auth)
        if answer.status_code != 200:
            raise ModelJobError(f"GET audit: {answer.status_code} {answer.text}")
        audit = answer.json()
        if audit.get("verified") is False:  # judged at the delivery already (void roots)
            return ModelJobResult(source.unit, False, str(audit.get("reason", "")), sent, ())
        challenges, _deadline = challenges_from_json(audit, model, source.m, source.unit)
        answers = await trio.to_thread.run_sync(outcome.answer, challenges)
        raw = encode_answers(model, challenges, answers)
        answer = await http.put(
            f"{source.data}/audits/{unit}",
            content=raw,
            headers={**auth, "Content-Type": "application/octet-stream"},
        )
        if answer.status_code != 200:
            raise ModelJobError(f"PUT audit: {answer.status_code} {answer.text}")
        verdict = answer.json()
        return ModelJobResult(
            source.unit,
            bool(verdict.get("verified")),
            str(verdict.get("reason", "")),
            sent,
            challenges,
        )
