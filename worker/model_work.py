"""The miner's side of model jobs: each lease run once, on one device, in the background.

:class:`ModelWork` is what ``worker.miner`` hands a job whose source is a ``ModelSource``: a
unit not seen before starts a :class:`~worker.model_job.ModelJobRunner` on the first device
(its thread holds the device's limiter for the pass, so the device's own loop waits), its
shares go to the pool with ``PoolClient.submit_message`` as each layer finishes; later jobs
of the same lease (new templates while the audit runs) are ignored; a unit leased again (its
token is new: after a reconnect) runs again. Verdicts are counted in ``results``
(``verified`` / ``failed`` / ``error``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial

import httpx
import trio

from protocol.errors import ProtocolError
from protocol.messages import Submit
from protocol.model_messages import ModelSource

from .client import Job
from .device_slot import DeviceSlot
from .model_cache import ModelCache, ModelRejected
from .model_job import ModelJobError, ModelJobRunner
from .model_pass import LayerProductWrong, LayerRecord, PassStopped
from .model_settings import ModelConfig
from .stats import WorkerStats

log = logging.getLogger(__name__)

SEEN_UNITS = 256  # leases remembered (a lease's later jobs are not run again)


def count_layer(stats: WorkerStats, device: str, record: LayerRecord) -> None:
    """A finished layer's mined MACs: a complete ``useful`` scan of ``device``."""
    stats.add_scan(device, record.macs, True, "useful")


class ModelWork:
    """Model jobs of one worker; see the module doc."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._cache: ModelCache | None = None  # opened with the first model job
        self.results = {"verified": 0, "failed": 0, "error": 0}
        self._seen: OrderedDict[tuple[bytes, str], None] = OrderedDict()  # (unit, token)

    @property
    def cache(self) -> ModelCache:
        """The models kept on disk and in memory (``[model]`` bounds)."""
        if self._cache is None:
            self._cache = self.config.open_cache()
        return self._cache

    def take(
        self, job: Job, slot: DeviceSlot, nursery: trio.Nursery, stats: WorkerStats | None = None
    ) -> None:
        """Run ``job``'s unit on ``slot`` in ``nursery`` unless it ran already; each layer's
        mined MACs are counted in ``stats`` as ``useful`` scans of the device (every layer
        header's product is taken: SPEC §12.12.4), so they are in its hashrate,
        ``matmine_worker_work_macs_total`` and ``matmine_worker_scanned_macs_total``."""
        source = job.notify.work.source
        assert isinstance(source, ModelSource)
        lease = (source.unit, source.token)  # a unit leased again (a new session) runs again
        if lease in self._seen:
            return
        self._seen[lease] = None
        while len(self._seen) > SEEN_UNITS:
            self._seen.popitem(last=False)
        nursery.start_soon(self._run, job, slot, stats)

    async def _run(self, job: Job, slot: DeviceSlot, stats: WorkerStats | None) -> None:
        source = job.notify.work.source
        assert isinstance(source, ModelSource)
        unit = source.unit.hex()[:16]
        runner = ModelJobRunner(
            slot.backend,
            self.cache,
            slot.limiter,
            job.extranonce1,
            spill_dir=self.config.openings_path(),
            check_products=self.config.check_products,
            on_layer=None if stats is None else partial(count_layer, stats, slot.name),
        )

        async def submit(message: Submit) -> object:
            outcome = await job.client.submit_message(message)
            if outcome.result != "accepted":
                log.warning(
                    "layer %s share of unit %s…: %s %s %s",
                    message.layer,
                    unit,
                    outcome.result,
                    outcome.code,
                    outcome.message,
                )
            return outcome

        try:
            result = await runner.run(job.notify, submit)
        except (
            ModelJobError,
            ModelRejected,
            LayerProductWrong,
            PassStopped,
            ProtocolError,
            httpx.HTTPError,
        ) as exc:
            self.results["error"] += 1
            log.error("model unit %s… from job %s dropped: %s", unit, job.job_id, exc)
            return
        finally:
            slot.prepared_root = None  # the pass prepared its own layers on the device
        self.results["verified" if result.verified else "failed"] += 1
        if result.verified:
            log.info(
                "model unit %s… verified: %d share(s), %d challenge(s) answered",
                unit,
                result.shares,
                len(result.challenges),
            )
        else:
            log.error("model unit %s… failed its audit: %s", unit, result.reason)
