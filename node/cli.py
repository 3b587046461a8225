"""``matmine-node``: run the devnet node as its own process, or make a devnet address.

    matmine-node serve [--config node.toml] [--port 18444] [--data-dir D] ...
    matmine-node new-address

Settings come from defaults, then the TOML file (``--config``), then flags.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import trio

from protocol.address import new_address
from protocol.version import package_version
from toolkit.logs import setup_logging
from toolkit.settings import (
    PYTHON_TYPE_NAMES,
    ConfigError,
    Style,
    add_flags,
    from_dict,
    override,
    read_toml,
    setting,
)
from toolkit.sqlite import StoreError

from .config import NodeConfig
from .rpc_server import DEFAULT_HOST, DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, run_node

log = logging.getLogger("node")


_NODE_DEFAULTS = NodeConfig()
STYLE = Style(type_names=PYTHON_TYPE_NAMES)  # "maturity must be int, got 'ten'"


@dataclass(frozen=True)
class NodeSettings:
    """Every setting of ``serve``: a TOML key (optionally under ``[node]``) and a flag."""

    host: str = setting(DEFAULT_HOST, "address to listen on (keep it loopback)")
    port: int = setting(DEFAULT_PORT, "TCP port of the RPC server (0 picks a free one)")
    data_dir: str = setting(
        "matmine-node-data", "directory of the chain database (node.sqlite3); created if missing"
    )
    start_difficulty: float = setting(
        _NODE_DEFAULTS.start_difficulty,
        "difficulty of the first blocks of a NEW chain (a share of difficulty D costs "
        "D·2³² multiply-accumulates; ~200 gives a block every minute or two to one CPU "
        "worker); ignored for an existing data dir",
    )
    min_difficulty: float = setting(
        _NODE_DEFAULTS.min_difficulty, "the retarget never goes below this difficulty"
    )
    block_time: int = setting(
        _NODE_DEFAULTS.block_time,
        "target seconds between blocks; difficulty retargets every block toward it",
    )
    retarget_window: int = setting(
        _NODE_DEFAULTS.retarget_window, "how many recent blocks the retarget averages over"
    )
    max_adjust: int = setting(
        _NODE_DEFAULTS.max_adjust,
        "largest factor one retarget may move the difficulty by, either way",
    )
    maturity: int = setting(
        _NODE_DEFAULTS.maturity,
        "blocks that must be built on a block "
        "before it counts as confirmed and its reward can be spent",
    )
    block_reward: int = setting(
        _NODE_DEFAULTS.block_reward, "coinbase reward of every block, in base units (10^8 per coin)"
    )
    max_future_time: int = setting(
        _NODE_DEFAULTS.max_future_time,
        "how many seconds ahead of this node's clock a block's time may be",
    )
    orphan_probability: float = setting(
        _NODE_DEFAULTS.orphan_probability,
        "TEST ONLY: chance that an accepted block is orphaned by a simulated reorg",
    )
    orphan_seed: str = setting(
        _NODE_DEFAULTS.orphan_seed, "TEST ONLY: seed that makes the orphan lottery repeatable"
    )
    node_address: str = setting(
        _NODE_DEFAULTS.node_address,
        "address paid by blocks the node makes itself (genesis, simulated reorgs, devnet.advance)",
    )
    max_frame_size: int = setting(DEFAULT_MAX_FRAME_SIZE, "largest RPC frame accepted, in bytes")
    verify_threads: int = setting(2, "worker threads for block verification and storage")
    metrics_port: int = setting(
        -1, "port of the Prometheus /metrics endpoint on host (-1: off, 0: any free port)"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def node_config(self) -> NodeConfig:
        """The chain's own settings (``NodeConfig`` checks them)."""
        names = {f.name for f in fields(NodeConfig)}
        return NodeConfig(**{k: v for k, v in vars(self).items() if k in names})


def load_settings(config_file: Path | None, overrides: dict[str, Any]) -> NodeSettings:
    """Defaults ← TOML file ← flags (``None`` values in ``overrides`` are ignored)."""
    settings = NodeSettings()
    if config_file is not None:
        table = read_toml(config_file)
        try:
            settings = from_dict(NodeSettings, table.get("node", table), style=STYLE)
        except ConfigError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    result: NodeSettings = override(settings, given, style=STYLE)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmine-node",
        description="The matmine devnet node: a small chain for the pool, served over "
        "loopback RPC.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the node and its RPC server",
        description="Run the devnet node. Settings: defaults, then the TOML file given by "
        "--config (keys as below with underscores, optionally under [node]), "
        "then these flags.",
    )
    serve.add_argument(
        "--config", type=Path, default=None, help="TOML file with any of the settings below"
    )
    add_flags(serve, NodeSettings)
    commands.add_parser(
        "new-address",
        help="print a fresh devnet address",
        description="Print a fresh random devnet payout address (mmd1…).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "new-address":
        print(new_address())
        return 0
    overrides = {f.name: getattr(args, f.name) for f in fields(NodeSettings)}
    try:
        settings = load_settings(args.config, overrides)
        config = settings.node_config()
    except (OSError, ValueError) as exc:
        print(f"matmine-node: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    failure: str | None = None
    try:
        trio.run(serve_until_signalled, settings, config)
    except* OSError as group:
        failure = "; ".join(str(exc) for exc in group.exceptions)
    except* StoreError as group:  # e.g. a chain database written by newer code
        failure = "; ".join(str(exc) for exc in group.exceptions)
    if failure is not None:
        print(f"matmine-node: {failure}", file=sys.stderr)
        return 1
    return 0


async def serve_until_signalled(settings: NodeSettings, config: NodeConfig) -> None:
    """Run the node until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    run_node,
                    settings.data_dir,
                    config,
                    settings.host,
                    settings.port,
                    max_frame_size=settings.max_frame_size,
                    verify_threads=settings.verify_threads,
                    metrics_port=settings.metrics_port,
                )
            )
            async for signum in signals:
                log.info("%s received, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    sys.exit(main())
