"""``matmine-pool``: run the pool, or print a commented default config.

    matmine-pool init-config > pool.toml
    matmine-pool serve --config pool.toml [--stratum-port 3333] [--http-port 8080] ...
    matmine-pool work submit --api http://HOST:PORT A.npy B.npy [--wait] [-o C.npy] [--token T]
    matmine-pool work status|result ...
    matmine-pool model add NAME FILE.npz (--data-dir DIR | --api URL) / model list ...

Flags override the file; the file overrides the defaults (``pool.config``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import trio

from pool.config import WORK_PROFILES, ConfigError, PoolConfig, default_config_text, load_config
from pool.config_rules import LOG_LEVELS
from pool.models.cli import add_model_subcommands
from pool.preflight import preflight
from pool.useful.cli import add_work_subcommands
from protocol.version import package_version
from toolkit.logs import setup_logging
from toolkit.settings import cli_help, setting_type


def parse_chain_url(url: str) -> dict[str, Any]:
    """``embedded`` or ``rpc://HOST:PORT`` as config overrides."""
    if url == "embedded":
        return {"chain.kind": "embedded"}
    parts = urlsplit(url)
    if parts.scheme != "rpc" or not parts.hostname or parts.port is None:
        raise ConfigError(f"--chain must be 'embedded' or rpc://HOST:PORT, got {url!r}")
    return {"chain.kind": "rpc", "chain.rpc_host": parts.hostname, "chain.rpc_port": parts.port}


# Flags that set one config key each: (flag, dotted key, argparse options); help from the field.
FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--stratum-host", "stratum.host", {"metavar": "HOST"}),
    ("--stratum-port", "stratum.port", {"metavar": "PORT"}),
    ("--http-host", "http.host", {"metavar": "HOST"}),
    ("--http-port", "http.port", {"metavar": "PORT"}),
    ("--data-dir", "pool.data_dir", {"metavar": "DIR"}),
    ("--work-profile", "work.profile", {"choices": tuple(WORK_PROFILES)}),
    ("--log-level", "pool.log_level", {"choices": LOG_LEVELS}),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmine-pool",
        description="The matmine mining pool: miners prove int8 matrix products (mmpow-1) "
        "and are paid by PPLNS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "init-config",
        help="print a commented default configuration file",
        description="Print a complete TOML configuration with every key at its "
        "default and a comment saying what it does.",
    )
    serve = sub.add_parser(
        "serve",
        help="run the pool",
        description="Run the pool: miner port(s), HTTP API with /metrics, the embedded "
        "devnet node (or an RPC node), block unlocker and payouts. Stops cleanly "
        "on SIGINT/SIGTERM, committing queued shares first.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: built-in defaults; see 'matmine-pool init-config')",
    )
    for flag, key, options in FLAGS:
        serve.add_argument(
            flag, type=setting_type(PoolConfig, key), **options, help=cli_help(PoolConfig, key)
        )
    serve.add_argument("--no-http", action="store_true", help="do not serve the HTTP API")
    serve.add_argument(
        "--chain", metavar="URL", help="'embedded' (default) or rpc://HOST:PORT of a matmine-node"
    )
    add_work_subcommands(sub)
    add_model_subcommands(sub)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides (dotted keys) for the flags that were given."""
    out: dict[str, Any] = {}
    for flag, key, _ in FLAGS:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            out[key] = value
    if args.no_http:
        out["http.enabled"] = False
    if args.chain:
        out.update(parse_chain_url(args.chain))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init-config":
        sys.stdout.write(default_config_text())
        return 0
    if args.command in ("work", "model"):
        return int(args.func(args))
    try:
        config = load_config(args.config, overrides_from_args(args))
        preflight(config)
    except ConfigError as exc:
        print(f"matmine-pool: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.pool.log_level)
    from pool.app import serve_until_signalled

    try:
        trio.run(serve_until_signalled, config)
    except Exception as exc:
        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, ConfigError | OSError):
                logging.getLogger("pool").error("cannot run the pool: %s", leaf)
                return 2 if isinstance(leaf, ConfigError) else 1
        raise
    return 0


def _leaves(exc: BaseException) -> Any:
    """The plain exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


if __name__ == "__main__":
    sys.exit(main())
