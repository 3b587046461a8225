"""``matmine-pool model …``: register a model once, list the registered ones.

    matmine-pool model add NAME FILE.npz (--data-dir DIR | --api http://HOST:PORT)
    matmine-pool model list (--data-dir DIR | --api http://HOST:PORT)

``--data-dir`` writes into a pool's data dir directly (the pool may be running); ``--api``
goes through the pool's ``/api/models``. The file is checked first (the model format of
SPEC §12.12.1) and nothing is stored or sent if it is refused. Exit codes: 0 done, 1 the
pool refused or HTTP failed, 2 bad usage or a bad model file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from pool.models.registry import ModelRegistry, RegistryError, check_name
from protocol.errors import ProtocolError
from protocol.model import load_model


def add_model_subcommands(sub: Any) -> None:
    """``model add`` / ``model list`` on the pool CLI's subparsers; each sets ``func``."""
    model = sub.add_parser(
        "model",
        help="register int8 models for model jobs, list them",
        description="Register a model once (content-addressed, kept on the pool's disk) "
        "and list the registered ones.",
    )
    commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    add = commands.add_parser("add", help="register FILE.npz as NAME")
    add.add_argument("name", metavar="NAME")
    add.add_argument("file", metavar="FILE.npz", type=Path)
    listing = commands.add_parser("list", help="list the registered models")
    for parser in (add, listing):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--data-dir", metavar="DIR", help="the pool's data dir (direct)")
        where.add_argument("--api", metavar="URL", help="the pool's HTTP API base URL")
        parser.add_argument(
            "--http-timeout", type=float, default=60.0, metavar="S", help="HTTP timeout"
        )
    add.set_defaults(func=run_add)
    listing.set_defaults(func=run_list)


def _fail(message: str, code: int) -> int:
    print(f"matmine-pool model: {message}", file=sys.stderr)
    return code


def _http(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    with httpx.Client(base_url=args.api.rstrip("/"), timeout=args.http_timeout) as client:
        response = client.request(method, path, **kwargs)
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text.strip()[:200]}
    if response.status_code >= 400:
        raise RegistryError(f"HTTP {response.status_code}: {payload.get('error', payload)}")
    return payload


def _line(info: dict[str, Any]) -> str:
    return (
        f"{info['name']}\t{info['model_id']}\t{info['layers']} layers\t"
        f"{info['input_width']} -> {info['output_width']} {info['output_dtype']}"
    )


def run_add(args: argparse.Namespace) -> int:
    try:
        check_name(args.name)
        data = args.file.read_bytes()
        load_model(data)
    except (RegistryError, ProtocolError) as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", 2)
    try:
        if args.data_dir:
            registry = ModelRegistry(args.data_dir)
            try:
                payload = registry.add(args.name, data)[0].as_json()
            finally:
                registry.close()
        else:
            payload = _http(args, "POST", "/api/models", params={"name": args.name}, content=data)
    except RegistryError as exc:
        return _fail(str(exc), 1)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach {args.api}: {exc}", 1)
    print(json.dumps(payload))
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        if args.data_dir:
            registry = ModelRegistry(args.data_dir)
            try:
                models = [info.as_json() for info in registry.list()]
            finally:
                registry.close()
        else:
            models = _http(args, "GET", "/api/models")["models"]
    except RegistryError as exc:
        return _fail(str(exc), 1)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach {args.api}: {exc}", 1)
    for info in models:
        print(_line(info))
    return 0
