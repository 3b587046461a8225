"""``matmine-pool work infer --model NAME X.npy [--wait -o Y.npy] [--receipt FILE]``: a
batch of input rows through a registered model over the pool's HTTP API (``POST
/api/work/infer``), polled until done, its ``Y`` written as ``.npy`` and its receipt
(``GET /api/work/infer/{id}/receipt``) as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


class InferError(Exception):
    """A failure to report on stderr (exit status 1)."""


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise InferError(f"HTTP {response.status_code}: {message}")
    return response.json()


def infer(args: argparse.Namespace) -> int:
    """Queue the batch; with ``--wait`` poll until done and write ``Y``."""
    token = args.token or os.environ.get("MATMINE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        body = Path(args.x).read_bytes()
    except OSError as exc:
        raise InferError(f"cannot read {args.x}: {exc.strerror or exc}") from None
    with httpx.Client(
        base_url=args.api.rstrip("/"), headers=headers, timeout=httpx.Timeout(args.http_timeout)
    ) as client:
        queued = _answer(client.post("/api/work/infer", params={"model": args.model}, content=body))
        item = queued["id"]
        print(
            f"batch {item}: {queued['rows']} rows through {args.model}, {queued['units']} unit(s)"
        )
        if not args.wait:
            _write_receipt(client, item, args.receipt)
            return 0
        deadline = time.monotonic() + args.timeout
        while _answer(client.get(f"/api/work/infer/{item}"))["state"] != "done":
            if time.monotonic() > deadline:
                raise InferError(f"batch {item} is not done after {args.timeout:g} s")
            time.sleep(args.poll)
        result = client.get(f"/api/work/infer/{item}/result")
        if result.status_code != 200:
            _answer(result)
        if args.output:
            Path(args.output).write_bytes(result.content)
            print(f"batch {item}: Y written to {args.output}")
        _write_receipt(client, item, args.receipt)
    return 0


def _write_receipt(client: httpx.Client, item: int, path: str | None) -> None:
    """Write the batch's receipt (JSON) to ``path`` when one is named."""
    if path is None:
        return
    receipt = _answer(client.get(f"/api/work/infer/{item}/receipt"))
    try:
        Path(path).write_text(json.dumps(receipt, indent=1) + "\n")
    except OSError as exc:
        raise InferError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"batch {item}: receipt written to {path} ({receipt['shares']} share(s) credited)")


def add_infer_parser(
    sub: Any, common: Callable[[argparse.ArgumentParser], None], run: Callable[[Any], Any]
) -> None:
    """Add ``infer`` to the ``work`` subcommands (``common``: --api/--token/--http-timeout;
    ``run`` wraps a command's errors)."""
    p = sub.add_parser("infer", help="run a batch of int8 rows through a registered model")
    p.add_argument("x", help="X as .npy (int8, rows×k_0, entries in [-64, 64])")
    p.add_argument("--model", required=True, help="name of a registered model (model add)")
    p.add_argument("--wait", action="store_true", help="poll until the batch is done")
    p.add_argument("-o", "--output", help="with --wait: write Y (.npy) here")
    p.add_argument(
        "--receipt", help="write the batch's receipt (JSON) here (with --wait: once done)"
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--timeout", type=float, default=24 * 3600.0, help="with --wait: give up after")
    common(p)

    def guarded(args: argparse.Namespace) -> int:
        try:
            return infer(args)
        except InferError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    p.set_defaults(func=run(guarded))
