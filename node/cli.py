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
import tomllib
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import trio

from protocol.address import new_address
from protocol.version import package_version
from toolkit.sqlite import StoreError

from .chain import NodeConfig
from .rpc_server import DEFAULT_HOST, DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, run_node

log = logging.getLogger("matmine.node")


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default and the help text for ``--help``."""

    key: str
    kind: type
    default: Any
    help: str


_NODE_DEFAULTS = NodeConfig()

SETTINGS = [
    Setting("host", str, DEFAULT_HOST, "address to listen on (keep it loopback)"),
    Setting("port", int, DEFAULT_PORT, "TCP port of the RPC server (0 picks a free one)"),
    Setting("data_dir", str, "matmine-node-data",
            "directory of the chain database (node.sqlite3); created if missing"),
    Setting("start_difficulty", float, _NODE_DEFAULTS.start_difficulty,
            "difficulty of the first blocks of a NEW chain (a share of difficulty D costs "
            "D·2³² multiply-accumulates; ~200 gives a block every minute or two to one CPU "
            "worker); ignored for an existing data dir"),
    Setting("min_difficulty", float, _NODE_DEFAULTS.min_difficulty,
            "the retarget never goes below this difficulty"),
    Setting("block_time", int, _NODE_DEFAULTS.block_time,
            "target seconds between blocks; difficulty retargets every block toward it"),
    Setting("retarget_window", int, _NODE_DEFAULTS.retarget_window,
            "how many recent blocks the retarget averages over"),
    Setting("max_adjust", int, _NODE_DEFAULTS.max_adjust,
            "largest factor one retarget may move the difficulty by, either way"),
    Setting("maturity", int, _NODE_DEFAULTS.maturity,
            "blocks that must be built on a block before it counts as confirmed and its "
            "reward can be spent"),
    Setting("block_reward", int, _NODE_DEFAULTS.block_reward,
            "coinbase reward of every block, in base units (10^8 per coin)"),
    Setting("max_future_time", int, _NODE_DEFAULTS.max_future_time,
            "how many seconds ahead of this node's clock a block's time may be"),
    Setting("orphan_probability", float, _NODE_DEFAULTS.orphan_probability,
            "TEST ONLY: chance that an accepted block is orphaned by a simulated reorg"),
    Setting("orphan_seed", str, _NODE_DEFAULTS.orphan_seed,
            "TEST ONLY: seed that makes the orphan lottery repeatable"),
    Setting("node_address", str, _NODE_DEFAULTS.node_address,
            "address paid by blocks the node makes itself (genesis, simulated reorgs, "
            "devnet.advance)"),
    Setting("max_frame_size", int, DEFAULT_MAX_FRAME_SIZE,
            "largest RPC frame accepted, in bytes"),
    Setting("verify_threads", int, 2, "worker threads for block verification and storage"),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
]
_BY_KEY = {s.key: s for s in SETTINGS}
_NODE_KEYS = {f.name for f in fields(NodeConfig)}


def load_settings(config_file: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults ← TOML file ← flags (``None`` values in ``overrides`` are ignored)."""
    values = {s.key: s.default for s in SETTINGS}
    if config_file is not None:
        with config_file.open("rb") as f:
            table = tomllib.load(f)
        table = table.get("node", table)
        for key, value in table.items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
            if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, setting.kind) or isinstance(value, bool):
                raise ValueError(f"{config_file}: {key} must be {setting.kind.__name__}, "
                                 f"got {value!r}")
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmine-node",
        description="The matmine devnet node: a small chain for the pool, served over "
                    "loopback RPC.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the node and its RPC server",
        description="Run the devnet node. Settings: defaults, then the TOML file given by "
                    "--config (keys as below with underscores, optionally under [node]), "
                    "then these flags.",
    )
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML file with any of the settings below")
    for s in SETTINGS:
        serve.add_argument(f"--{s.key.replace('_', '-')}", dest=s.key, type=s.kind,
                           default=None, help=f"{s.help} (default: {s.default})")
    commands.add_parser("new-address", help="print a fresh devnet address",
                        description="Print a fresh random devnet payout address (mmd1…).")
    return parser


def node_config(values: dict[str, Any]) -> NodeConfig:
    return NodeConfig(**{k: v for k, v in values.items() if k in _NODE_KEYS})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "new-address":
        print(new_address())
        return 0
    overrides = {s.key: getattr(args, s.key) for s in SETTINGS}
    try:
        values = load_settings(args.config, overrides)
        config = node_config(values)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"matmine-node: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=values["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    failure: str | None = None
    try:
        trio.run(serve_until_signalled, values, config)
    except* OSError as group:
        failure = "; ".join(str(exc) for exc in group.exceptions)
    except* StoreError as group:  # e.g. a chain database written by newer code
        failure = "; ".join(str(exc) for exc in group.exceptions)
    if failure is not None:
        print(f"matmine-node: {failure}", file=sys.stderr)
        return 1
    return 0


async def serve_until_signalled(values: dict[str, Any], config: NodeConfig) -> None:
    """Run the node until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(
                run_node, values["data_dir"], config, values["host"], values["port"],
                max_frame_size=values["max_frame_size"], verify_threads=values["verify_threads"],
            ))
            async for signum in signals:
                log.info("%s received, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    sys.exit(main())
