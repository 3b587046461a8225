"""``matmine-pool work …``: submit a product to a pool's work API, poll it, fetch C.

    matmine-pool work submit --api http://HOST:PORT A.npy B.npy [--wait] [-o C.npy] [--token T]
    matmine-pool work submit --b-operand ID A.npy [--wait] [-o C.npy]   (B registered before)
    matmine-pool work operand add B.npy | operand list | operand rm ID
    matmine-pool work status --api http://HOST:PORT ID [--token T]
    matmine-pool work result --api http://HOST:PORT ID -o C.npy [--token T]

The pool CLI calls :func:`add_work_subcommands` on its subparsers; each parsed command
carries ``func(args) -> exit code``. ``submit`` first checks A and B as the pool would
(int8, shapes, k, entries in [-64, 64], the limits the pool publishes at ``GET /api/work``)
and uploads nothing if one fails; it prints the work id on stdout, progress goes to stderr
(units done/total, elapsed, MAC/s, ETA; one line redrawn on a terminal), with a warning
while no worker able to do useful work is connected. The token may also come from
``MATMINE_TOKEN``. Exit codes: 0 done or accepted, 1 failed item or HTTP error, 2 bad usage
or an operand the pool would refuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pool.models.cli_infer import add_infer_parser
from pool.useful.cli_check import (
    NO_WORKER,
    OperandError,
    Progress,
    check_operand_file,
    check_operand_files,
)

DEFAULT_API = "http://127.0.0.1:8080"


class CliError(Exception):
    """A failure to report on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("MATMINE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=args.api.rstrip("/"), headers=headers, timeout=httpx.Timeout(args.http_timeout)
    )


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise CliError(f"HTTP {response.status_code}: {message}")
    return response.json()


def _npy_stream(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                yield block


def _status(client: httpx.Client, work_id: str) -> dict[str, Any]:
    return _check(client.get(f"/api/work/{work_id}"))


def _fetch_result(client: httpx.Client, work_id: str, output: Path) -> None:
    with client.stream("GET", f"/api/work/{work_id}/result") as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        tmp = output.with_name(output.name + ".part")
        with open(tmp, "wb") as f:
            for block in response.iter_bytes():
                f.write(block)
        os.replace(tmp, output)


def _progress(status: dict[str, Any]) -> str:
    states = status.get("unit_states", {})
    return (
        f"{status['id']}: {status['state']}, {states.get('done', 0)}/{status['units']} "
        f"units done, {states.get('running', 0)} running"
    )


def _work_info(client: httpx.Client) -> dict[str, Any]:
    """The pool's ``GET /api/work`` answer (limits, capable sessions); {} from an older pool
    that has no such route."""
    response = client.get("/api/work")
    if response.status_code in (404, 405):
        return {}
    info = _check(response)
    return info if isinstance(info, dict) else {}


def _operand_paths(args: argparse.Namespace) -> list[Path]:
    """A and B (or A alone with ``--b-operand``), checked here first unless ``--no-check``."""
    if (args.b is None) == (args.b_operand is None):
        raise CliError("give B.npy or --b-operand ID (one of them)", code=2)
    paths = [Path(args.a)] if args.b is None else [Path(args.a), Path(args.b)]
    for name, path in zip("AB", paths, strict=False):
        if not path.is_file():
            raise CliError(f"{path}: {name} is not a readable file (nothing uploaded)", code=2)
    if args.check:
        try:
            if len(paths) == 2:
                check_operand_files(paths[0], paths[1])
            else:
                check_operand_file(paths[0], "A")
        except OperandError as exc:
            raise CliError(f"{exc} (nothing uploaded)", code=2) from None
    return paths


def submit(args: argparse.Namespace) -> int:
    paths = _operand_paths(args)
    size = sum(p.stat().st_size for p in paths)
    params = {} if args.b_operand is None else {"b_operand": args.b_operand}
    with _client(args) as client:
        info = _work_info(client)
        if args.check and info.get("limits") and len(paths) == 2:
            try:
                check_operand_files(paths[0], paths[1], info["limits"])
            except OperandError as exc:
                raise CliError(f"{exc} (nothing uploaded)", code=2) from None
        if info.get("capable_sessions") == 0:
            print(f"warning: {NO_WORKER}", file=sys.stderr)
        status = _check(
            client.post(
                "/api/work",
                params=params,
                content=_npy_stream(paths),
                headers={"Content-Type": "application/x-npy", "Content-Length": str(size)},
            )
        )
        print(status["id"], flush=True)
        print(_progress(status), file=sys.stderr)
        if not args.wait:
            if args.output:
                print("--output needs --wait (or use 'work result')", file=sys.stderr)
            return 0
        progress = Progress(sys.stderr, interval=args.progress_interval)
        deadline = time.monotonic() + args.timeout
        try:
            while status["state"] not in ("done", "failed"):
                if time.monotonic() > deadline:
                    raise CliError(f"gave up after {args.timeout:g} s: {_progress(status)}")
                time.sleep(args.poll)
                status = _status(client, status["id"])
                progress.show(status, final=status["state"] in ("done", "failed"))
        finally:
            progress.end()
        if status["state"] == "failed":
            raise CliError(f"work {status['id']} failed: {status.get('error')}")
        if args.output:
            _fetch_result(client, status["id"], Path(args.output))
            print(f"wrote {args.output}", file=sys.stderr)
    return 0


def status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = _status(client, args.id)
    print(json.dumps(answer, indent=2))
    if answer.get("capable_sessions") == 0 and answer.get("state") not in ("done", "failed"):
        print(f"warning: {NO_WORKER}", file=sys.stderr)
    return 0


def result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _fetch_result(client, args.id, Path(args.output))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def operand(args: argparse.Namespace) -> int:
    """``work operand add|list|rm``: registered operands B of this customer."""
    with _client(args) as client:
        if args.operand_command == "add":
            path = Path(args.b)
            if not path.is_file():
                raise CliError(f"{path}: B is not a readable file (nothing uploaded)", code=2)
            try:
                check_operand_file(path, "B")
            except OperandError as exc:
                raise CliError(f"{exc} (nothing uploaded)", code=2) from None
            answer = _check(
                client.post(
                    "/api/work/operands",
                    content=_npy_stream([path]),
                    headers={
                        "Content-Type": "application/x-npy",
                        "Content-Length": str(path.stat().st_size),
                    },
                )
            )
            print(answer["id"], flush=True)
        elif args.operand_command == "list":
            print(json.dumps(_check(client.get("/api/work/operands")), indent=2))
        else:
            _check(client.delete(f"/api/work/operands/{args.id}"))
            print(f"deleted {args.id}", file=sys.stderr)
    return 0


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {args.api}: {exc}", file=sys.stderr)
            return 1

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        default=DEFAULT_API,
        help=f"base URL of the pool's HTTP API (default {DEFAULT_API})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="API token (default: $MATMINE_TOKEN; none for a loopback pool without tokens)",
    )
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=300.0,
        help="seconds one HTTP request may take (default 300)",
    )


def add_work_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``work submit|status|result`` to the pool CLI's ``subparsers``."""
    work = subparsers.add_parser(
        "work",
        help="submit useful work (matrix products) to a pool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = work.add_subparsers(dest="work_command", required=True)

    p = sub.add_parser("submit", help="submit C = A·B (A m×k, B k×n int8 .npy, in [-64, 64])")
    p.add_argument("a", help="A as .npy (int8, m×k)")
    p.add_argument("b", nargs="?", help="B as .npy (int8, k×n); or --b-operand")
    p.add_argument(
        "--b-operand", default=None, help="id of a registered B (work operand add) instead of B"
    )
    p.add_argument("--wait", action="store_true", help="poll until the product is done")
    p.add_argument("-o", "--output", help="with --wait: write C (int32 .npy, m×n) here")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="upload without checking A and B here first (the pool judges them)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="with --wait and stderr not a terminal: seconds between progress lines (default 5)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=24 * 3600.0,
        help="with --wait: give up after this many seconds (default one day)",
    )
    _common(p)
    p.set_defaults(func=_run(submit))

    p = sub.add_parser("status", help="show the state and progress of a work item")
    p.add_argument("id", help="work id printed by submit")
    _common(p)
    p.set_defaults(func=_run(status))

    p = sub.add_parser("result", help="download the product of a finished work item")
    p.add_argument("id", help="work id printed by submit")
    p.add_argument("-o", "--output", required=True, help="where to write C (int32 .npy)")
    _common(p)
    p.set_defaults(func=_run(result))

    p = sub.add_parser("operand", help="register, list or delete operands B kept by the pool")
    ops = p.add_subparsers(dest="operand_command", required=True)
    q = ops.add_parser("add", help="register B (int8 k×n .npy); prints its id")
    q.add_argument("b", help="B as .npy (int8, k×n)")
    _common(q)
    q.set_defaults(func=_run(operand))
    q = ops.add_parser("list", help="list this customer's registered operands")
    _common(q)
    q.set_defaults(func=_run(operand))
    q = ops.add_parser("rm", help="delete a registered operand (queued products go on)")
    q.add_argument("id", help="operand id printed by add")
    _common(q)
    q.set_defaults(func=_run(operand))
    add_infer_parser(sub, _common, _run)
    return work


def main(argv: list[str] | None = None) -> int:
    """Run ``work …`` on its own (the pool CLI mounts the same subcommands)."""
    parser = argparse.ArgumentParser(prog="matmine-pool")
    add_work_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
