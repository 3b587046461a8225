"""The pool program: build every part from the config and run them in one nursery.

:func:`run_pool` opens the ledger and the chain adapter, starts the share log writer,
the job manager, useful work (queue, results, lease expiry; ``[useful]``), the miner
ports, the HTTP API (with the work API), the block unlocker, the block resubmitter and
payouts, and reports a :class:`PoolHandle` (bound ports and the live parts) through ``task_status``.
Cancelling it shuts everything down: the share log commits what is queued, then the
ledger and the chain are closed. :func:`serve_until_signalled` is the CLI's entry: it
turns SIGINT/SIGTERM into that cancellation.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from pool.abuse import BanList, CheckBudget
from pool.api_data import PoolData, PoolSnapshot, WorkerSnapshot
from pool.block_submitter import BlockSubmitter
from pool.chain.embedded import EmbeddedChain
from pool.chain.rpc import RpcChain
from pool.check_procs import open_check_processes
from pool.config import ConfigError, PoolConfig, node_config
from pool.context import PoolContext
from pool.hashrate import HashrateMeter
from pool.health import DependencyHealth, HealthChange, miner_message
from pool.history import HashrateHistory, run_sampler
from pool.http_api import create_app, serve_http
from pool.jobs import JobManager
from pool.ledger import Ledger, open_ledger
from pool.metrics import ModelMetrics, PoolMetrics, with_models
from pool.models.jobs import model_data_url, open_model_jobs
from pool.models.store import STORE_FILE, run_model_store
from pool.payouts import run_payouts
from pool.pplns import PplnsPolicy
from pool.retention import run_retention
from pool.server import StratumServer, collect_less_often
from pool.share_check import ShareChecker
from pool.sharelog import ShareLog
from pool.sockets import raise_open_files
from pool.unlocker import run_unlocker
from pool.useful import UsefulMetrics
from pool.useful.api import create_work_routes
from pool.useful.data_api import create_data_routes, data_url
from pool.useful.service import UsefulWork
from pool.workloads import SyntheticSource
from protocol.address import new_address, validate_address
from protocol.errors import ProtocolError
from protocol.version import package_version
from toolkit.metrics import add_program_metrics

log = logging.getLogger("pool")

ADDRESS_FILE = "pool_address"
STATS_INTERVAL = 5.0


@dataclass
class PoolHandle:
    """A running pool: where it listens and its live parts (for tests and operators)."""

    config: PoolConfig
    stratum_port: int
    tls_port: int | None
    http_port: int | None
    payout_address: str
    ledger: Ledger
    ledger_limiter: trio.CapacityLimiter
    chain: Any
    jobs: JobManager
    context: PoolContext
    sharelog: ShareLog
    metrics: PoolMetrics
    registry: CollectorRegistry
    useful: UsefulWork | None = None
    health: DependencyHealth | None = None


def ensure_payout_address(config: PoolConfig) -> str:
    """The configured payout address, or the one kept in the data dir (made on first start)."""
    if config.pool.payout_address:
        return config.pool.payout_address
    path = config.data_path / ADDRESS_FILE
    if path.exists():
        address = path.read_text().strip()
        try:
            return validate_address(address)
        except ProtocolError as exc:
            raise ConfigError(f"{path} holds no valid address: {exc}") from None
    address = new_address()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(address + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info("generated the pool wallet address %s (kept in %s)", address, path)
    return address


def open_chain(config: PoolConfig, wallet: str) -> Any:
    """The chain adapter the config asks for."""
    if config.chain.kind == "rpc":
        log.info("using the devnet node at %s:%d", config.chain.rpc_host, config.chain.rpc_port)
        return RpcChain(
            config.chain.rpc_host,
            config.chain.rpc_port,
            wallet_address=wallet,
            timeout=config.chain.rpc_timeout,
        )
    node_dir = config.data_path / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    log.info("running the embedded devnet node in %s", node_dir)
    return EmbeddedChain(node_dir, node_config(config), wallet_address=wallet)


def snapshot(ctx: PoolContext, started: float) -> PoolSnapshot:
    """The live state the HTTP API shows (cheap, on the event loop)."""
    now = trio.current_time()
    wall = time.time()
    miners: dict[str, list[WorkerSnapshot]] = {}
    workers = 0
    for s in list(ctx.sessions):
        if s.address is None or s.worker is None:
            continue
        workers += 1
        last = s.hashrate.last_share
        miners.setdefault(s.address, []).append(
            WorkerSnapshot(
                name=s.worker,
                hashrate=s.hashrate.rates(now),
                last_share=None if last is None else wall - (now - last),
                difficulty=s.difficulty,
            )
        )
    current = ctx.jobs.current
    return PoolSnapshot(
        connections=len(ctx.sessions),
        workers=workers,
        hashrate=ctx.pool_hashrate.rates(now) if ctx.pool_hashrate else {},
        network_difficulty=current.network_difficulty if current else 0.0,
        height=current.block.height if current else 0,
        miners=miners,
        started=started,
    )


def capable_sessions(ctx: PoolContext) -> int:
    """Authorized sessions that announced ``useful-1`` (they can compute customers' units)."""
    return sum(1 for s in list(ctx.sessions) if s.useful_capable and s.authorized)


async def _stats(ctx: PoolContext, metrics: PoolMetrics) -> None:
    while True:
        now = trio.current_time()
        current = ctx.jobs.current
        if current is not None:
            metrics.network_difficulty.set(current.network_difficulty)
            metrics.block_height.set(current.block.height)
        if ctx.pool_hashrate is not None:
            metrics.hashrate.set(ctx.pool_hashrate.rates(now).get("5m", 0.0))
        metrics.workers.set(sum(1 for s in ctx.sessions if s.address is not None))
        await trio.sleep(STATS_INTERVAL)


async def run_pool(
    config: PoolConfig, *, task_status: trio.TaskStatus[PoolHandle] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the whole pool until cancelled (see the module doc)."""
    files_short = raise_open_files(config.stratum.max_connections)
    if files_short is not None:
        log.warning("%s", files_short)
    collect_less_often()
    config.data_path.mkdir(parents=True, exist_ok=True)
    wallet = ensure_payout_address(config)
    registry = CollectorRegistry()
    add_program_metrics(registry, "pool", package_version())
    metrics = PoolMetrics(registry)
    health = DependencyHealth(metrics.dependency_up)
    ledger_limiter = trio.CapacityLimiter(1)
    lc = config.ledger
    ledger = await trio.to_thread.run_sync(
        partial(
            open_ledger,
            config.ledger_location,
            connect_timeout=lc.connect_timeout,
            statement_timeout=lc.statement_timeout,
            call_timeout=lc.call_timeout,
        )
    )
    chain = None
    useful = None
    p = config.pool
    fee_address = p.fee_address or None
    started = time.time()
    try:  # from here on, whatever was opened is closed again, however the pool ends
        chain = open_chain(config, wallet)
        why_not = config.useful.usable(config.stratum.max_frame_size)
        if why_not is not None:
            log.log(
                logging.WARNING if config.useful.enabled else logging.INFO,
                "useful work is off (%s): every miner gets synthetic work",
                why_not,
            )
        else:
            useful = await trio.to_thread.run_sync(
                UsefulWork, config.data_path, config.useful.useful_config(), UsefulMetrics(registry)
            )
            useful_metrics = useful.metrics
            metrics.useful_mined_macs = lambda: useful_metrics.mined_macs
            useful_metrics.miners = metrics.miners
        check_limiter = trio.CapacityLimiter(p.check_threads)
        async with (
            open_check_processes(
                p.check_processes,
                check_limiter,
                blob_path=None if useful is None else useful.blobs.path,
                observe=metrics.share_check_seconds.observe,
            ) as processes,
            trio.open_nursery() as nursery,
        ):
            if processes is not None:
                nursery.start_soon(processes.warm)
            sharelog = ShareLog(
                ledger,
                ledger_limiter,
                interval=config.ledger.batch_interval_ms / 1000,
                max_batch=config.ledger.batch_max_shares,
                max_pending=config.ledger.max_pending_shares,
                observe_commit=metrics.db_write_seconds.observe,
                health=health,
                retry_interval=lc.retry_interval,
            )
            await nursery.start(sharelog.run)
            jobs = JobManager(
                chain,
                SyntheticSource(config.work_shape()),
                payout_address=wallet,
                tag=p.tag,
                instance_id=p.instance_id,
                poll_interval=config.chain.poll_interval,
                refresh_seconds=config.work.job_refresh_seconds,
                health=health,
            )
            await nursery.start(jobs.run)
            metrics.template_age.set_function(jobs.template_age)
            checker = ShareChecker(
                jobs,
                sharelog,
                chain,
                ledger,
                ledger_limiter,
                check_limiter,
                pplns_factor=p.pplns_factor,
                fee_bps=p.fee_bps,
                fee_address=fee_address,
                max_shares_per_job=config.limits.max_shares_per_job,
                metrics=metrics,
                useful=useful,
                submit_timeout=config.chain.submit_timeout,
                processes=processes,
                budget=CheckBudget(
                    config.limits.checks_per_ip_per_second,
                    config.limits.check_burst_per_ip,
                    config.limits.max_banned_ips,
                ),
            )
            await nursery.start(checker.batcher.run)  # the submit pipeline's check stage
            ctx = PoolContext(
                config=config,
                jobs=jobs,
                checker=checker,
                bans=BanList(config.limits.ban_seconds, config.limits.max_banned_ips),
                vardiff=config.vardiff_config(),
                metrics=metrics,
                pool_hashrate=HashrateMeter(trio.current_time()),
                useful=useful,
            )

            def tell_miners(change: HealthChange) -> None:  # once per outage and recovery
                for session in list(ctx.sessions):
                    session.show_message(miner_message(change))

            health.subscribe(tell_miners)
            model_routes: list[Any] = []
            model_metrics: ModelMetrics | None = None
            if useful is not None and config.models.enabled:
                ctx.models, model_routes = open_model_jobs(ctx, config.data_path, useful.limiter)
                await nursery.start(run_model_store, ctx.models, config.data_path, useful.limiter)
                model_metrics = ModelMetrics(registry)
                ctx.models.receipts.listeners.append(model_metrics.audited)
                await useful.start()
                await nursery.start(useful.run_expiry, ctx.lease_ended)
                await nursery.start(useful.watch_queue, ctx.units_queued)
            server = StratumServer(config.stratum, ctx)
            ports = await nursery.start(server.serve)
            http_port = None
            if config.http.enabled:
                data = PoolData(
                    ledger,
                    lambda: snapshot(ctx, started),
                    ledger_limiter,
                    fee_bps=p.fee_bps,
                    min_payout=p.min_payout,
                    accepted_work=lambda: metrics.accepted_work_macs,
                    useful=None if useful is None else with_models(useful.stats, model_metrics),
                    work_of=metrics.miners.of,
                )
                work_routes = (
                    []
                    if useful is None
                    else create_work_routes(
                        useful.queue,
                        useful.blobs,
                        config.useful.tokens,
                        useful.limiter,
                        partial(capable_sessions, ctx),
                    )
                    + create_data_routes(useful, checker.credit)
                )
                work_routes = model_routes + work_routes  # model jobs' API and data plane
                history = HashrateHistory()
                await nursery.start(
                    run_sampler,
                    history,
                    lambda: snapshot(ctx, started),
                    config.http.history_interval,
                )
                http_port = await nursery.start(
                    serve_http,
                    create_app(data, registry, work_routes, health, history),
                    config.http.host,
                    config.http.port,
                )
                log.info("HTTP API and /metrics on http://%s:%d/", config.http.host, http_port)
                if useful is not None and config.useful.data_plane:
                    # blob jobs name the HTTP data plane from now on
                    useful.data_url = config.useful.data_url or data_url(
                        config.http.host, http_port, config.stratum.public_host
                    )
                    if ctx.models is not None:
                        ctx.models.data_url = model_data_url(useful.data_url)
            policy = PplnsPolicy(p.pplns_factor, p.fee_bps, fee_address)
            await nursery.start(
                partial(
                    run_unlocker,
                    ledger,
                    chain,
                    p.unlock_interval,
                    ledger_limiter,
                    metrics,
                    policy=policy,
                    unknown_grace=p.unknown_block_grace,
                )
            )
            # A block whose first submission may still be running is left alone meanwhile.
            submitter = BlockSubmitter(
                ledger,
                chain,
                ledger_limiter,
                metrics,
                policy,
                interval=config.chain.resubmit_interval,
                grace=config.chain.submit_timeout + 5,
            )
            await nursery.start(submitter.run)
            await nursery.start(
                run_payouts, ledger, chain, p.payout_interval, p.min_payout, ledger_limiter, metrics
            )
            r = config.retention
            databases = {} if config.ledger.kind == "postgres" else {"ledger": config.ledger_path}
            if useful is not None:
                databases["useful"] = config.data_path / "useful.sqlite"
            if ctx.models is not None:
                databases["models_queue"] = config.data_path / STORE_FILE
            await nursery.start(
                partial(
                    run_retention,
                    ledger,
                    ledger_limiter,
                    r.interval,
                    p.pplns_factor,
                    r.share_history_seconds,
                    r.block_grace_seconds,
                    metrics,
                    useful=useful,
                    useful_history=r.useful_history_seconds,
                    blob_grace=r.blob_grace_seconds,
                    databases=databases,
                )
            )
            nursery.start_soon(_stats, ctx, metrics)
            log.info(
                "pool ready: payout address %s, fee %.2f%%, work %s",
                wallet,
                p.fee_bps / 100,
                config.work_shape(),
            )
            task_status.started(
                PoolHandle(
                    config=config,
                    stratum_port=ports[0],
                    tls_port=ports[1] if len(ports) > 1 else None,
                    http_port=http_port,
                    payout_address=wallet,
                    ledger=ledger,
                    ledger_limiter=ledger_limiter,
                    chain=chain,
                    jobs=jobs,
                    context=ctx,
                    sharelog=sharelog,
                    metrics=metrics,
                    registry=registry,
                    useful=useful,
                    health=health,
                )
            )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(ledger.close, limiter=ledger_limiter)
            if useful is not None:
                await trio.to_thread.run_sync(useful.close)
            if chain is not None:
                await chain.aclose()
            log.info("pool stopped; ledger closed")


async def serve_until_signalled(config: PoolConfig) -> None:
    """Run the pool until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # start_soon, not start: a signal stops the pool even while it is still starting
            # (waiting for an unreachable node, say).
            nursery.start_soon(run_pool, config)
            async for signum in signals:
                log.info(
                    "received %s, shutting down (committing queued shares)",
                    signal.Signals(signum).name,
                )
                nursery.cancel_scope.cancel()
                break
