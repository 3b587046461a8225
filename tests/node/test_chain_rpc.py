"""The node's RPC server and ``RpcChain`` over real loopback sockets, and the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from node.chain import Chain
from node.rpc_server import NodeRpcServer
from pool.chain.base import ChainAdapter
from pool.chain.rpc import RpcChain
from protocol.address import validate_address
from protocol.chain import (
    ERR_MALFORMED,
    ERR_UNKNOWN_METHOD,
    ChainError,
    ChainUnavailable,
    InsufficientFunds,
    PaymentKeyConflict,
)
from protocol.framing import FrameDecoder, encode_frame
from protocol.hashing import H
from tests.support.node_data import (
    ALICE,
    POOL,
    REWARD,
    blob_sub,
    blob_workload,
    config,
    mine,
    synthetic,
    synthetic_sub,
)

NODE = [sys.executable, "-m", "node.cli"]


@asynccontextmanager
async def node_server(path: Path, port: int = 0, **changes: object) -> AsyncIterator[int]:
    """A node on 127.0.0.1 for the duration of the block; yields its port."""
    chain = Chain.open(path, config(**changes))
    try:
        async with trio.open_nursery() as nursery:
            server = NodeRpcServer(chain, max_frame_size=1 << 20)
            listeners = await nursery.start(partial(server.serve, "127.0.0.1", port))
            yield listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        chain.close()


async def raw_exchange(port: int, payload: bytes, frames: int) -> tuple[list[dict], bool]:
    """Send raw bytes; read ``frames`` answers; report whether the server then hung up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    decoder = FrameDecoder()
    got: list[dict] = []
    async with stream:
        await stream.send_all(payload)
        with trio.fail_after(10):
            while len(got) < frames:
                data = await stream.receive_some(65536)
                assert data, f"server closed after {got}"
                got += decoder.feed(data)
            await stream.send_all(encode_frame({"id": 99, "method": "node.tip", "params": {}}))
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
    closed = not data
    if not closed:
        assert decoder.feed(data)[0]["id"] == 99
    return got, closed


async def test_rpc_chain_end_to_end(tmp_path: Path) -> None:
    async with (
        node_server(tmp_path) as port,
        RpcChain("127.0.0.1", port, wallet_address=POOL) as node,
    ):
        assert isinstance(node, ChainAdapter)
        assert (await node.info())["network"] == "devnet"
        template = await node.template()
        assert template.height == 1 and template.reward == REWARD
        sub = synthetic_sub(mine(template, synthetic()))
        result = await node.submit_block(sub)
        assert result.accepted and result.block_hash == H(sub.header)
        assert (await node.submit_block(sub)).reason == "duplicate"
        assert await node.tip() == (1, H(sub.header))
        status = await node.block_status(H(sub.header))
        assert (status.state, status.confirmations, status.height) == ("pending", 0, 1)
        assert (await node.block_status(H(b"?"))).state == "unknown"
        assert await node.balances(POOL) == (0, REWARD)
        with pytest.raises(InsufficientFunds, match="immature"):
            await node.send_many("k1", {ALICE: 5})
        assert len(await node.devnet_advance(3)) == 3
        assert (await node.block_status(H(sub.header))).state == "confirmed"
        assert await node.balance(POOL) == REWARD
        txid = await node.send_many("k1", {ALICE: 5})
        assert await node.send_many("k1", {ALICE: 5}) == txid
        assert await node.payment("k1") == txid
        assert await node.payment("k2") is None
        with pytest.raises(PaymentKeyConflict):
            await node.send_many("k1", {ALICE: 6})
        assert await node.balance(ALICE) == 5
        with pytest.raises(ChainError) as bad:
            await node.balance("not-an-address")
        assert bad.value.code == ERR_MALFORMED
        validate_address(await node.new_address())


async def test_malformed_frame_gets_an_error_and_the_server_lives(tmp_path: Path) -> None:
    async with node_server(tmp_path) as port:
        # A frame whose body is not a msgpack map: error with id None, then hang up.
        answers, closed = await raw_exchange(port, b"\x00\x00\x00\x03abc", 1)
        assert answers[0]["id"] is None and answers[0]["error"]["code"] == ERR_MALFORMED
        assert "malformed frame" in answers[0]["error"]["message"]
        assert closed
        # An oversized frame header is refused before its body arrives.
        answers, closed = await raw_exchange(port, b"\x7f\xff\xff\xff", 1)
        assert "exceeds" in answers[0]["error"]["message"] and closed
        # The server still serves new connections.
        async with RpcChain("127.0.0.1", port) as node:
            assert (await node.tip())[0] == 0


async def test_bad_requests_get_clear_errors_and_keep_the_connection(tmp_path: Path) -> None:
    requests = [
        {"id": 1, "method": "node.mine_me_a_block", "params": {}},
        {"id": 2, "method": "node.block_status", "params": {"hash": "zz"}},
        {"id": 3, "method": "node.submit_block", "params": {"header": b"x"}},
        {"id": 4, "params": {}},
        {"id": 5, "method": "node.tip", "params": [1, 2]},
        {"id": "six", "method": "node.tip", "params": {}},
        {
            "id": 7,
            "method": "node.send_many",
            "params": {"key": "k", "outputs": {ALICE: 1}, "from_address": POOL},
        },
        {"method": "node.tip", "params": {}},  # a notification: no answer
        {"id": 8, "method": "node.tip"},  # params may be left out
    ]
    async with node_server(tmp_path) as port:
        payload = b"".join(encode_frame(r) for r in requests)
        answers, closed = await raw_exchange(port, payload, 8)
    assert not closed
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["error"]["code"] == ERR_UNKNOWN_METHOD
    assert "node.mine_me_a_block" in by_id[1]["error"]["message"]
    assert "node.template" in by_id[1]["error"]["message"]  # it lists the known ones
    assert by_id[2]["error"]["code"] == ERR_MALFORMED and "hash" in by_id[2]["error"]["message"]
    assert by_id[3]["error"]["code"] == ERR_MALFORMED
    assert by_id[4]["error"]["code"] == ERR_MALFORMED and "method" in by_id[4]["error"]["message"]
    assert by_id[5]["error"]["code"] == ERR_MALFORMED and "map" in by_id[5]["error"]["message"]
    assert by_id[None]["error"]["code"] == ERR_MALFORMED  # the string id
    assert by_id[7]["error"]["code"] == InsufficientFunds.code
    assert by_id[8]["result"]["height"] == 0
    assert len(answers) == 8


async def test_rpc_chain_reconnects_after_a_node_restart(tmp_path: Path) -> None:
    node = RpcChain("127.0.0.1", 0, retries=4, retry_delay=0.05)
    async with node_server(tmp_path) as port:
        node.port = port
        await node.devnet_advance(2)
        assert (await node.tip())[0] == 2
    # Same data dir, same port: the client finds the restarted node and its chain.
    async with node_server(tmp_path, port=port):
        assert (await node.tip())[0] == 2
    await node.aclose()


async def test_rpc_chain_gives_up_with_chain_unavailable(tmp_path: Path) -> None:
    async with node_server(tmp_path) as port:
        pass  # the port is free again now
    node = RpcChain("127.0.0.1", port, retries=1, retry_delay=0.01, wallet_address=POOL)
    with pytest.raises(ChainUnavailable, match=r"did not answer node\.tip after 2 tries"):
        await node.tip()
    no_wallet = RpcChain("127.0.0.1", port)
    with pytest.raises(ChainError, match="wallet_address"):
        await no_wallet.send_many("k", {ALICE: 1})


async def test_blob_block_over_rpc(tmp_path: Path) -> None:
    async with node_server(tmp_path) as port, RpcChain("127.0.0.1", port) as node:
        w = blob_workload()
        found = mine(await node.template(), w)
        sub = blob_sub(found, w)
        assert found.loser is not None
        assert (await node.submit_block(blob_sub(found, w, found.loser))).reason == "high-hash"
        assert (await node.submit_block(sub)).accepted
        assert await node.tip() == (1, H(sub.header))


async def lossy_proxy(upstream_port: int, *, task_status: trio.TaskStatus[int]) -> None:
    """Forwards to the node, but hangs up instead of passing on the first answer it sees."""
    dropped = False

    async def handle(client: trio.SocketStream) -> None:
        nonlocal dropped
        upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
        async with client, upstream, trio.open_nursery() as nursery:

            async def up() -> None:
                while data := await client.receive_some(65536):
                    await upstream.send_all(data)

            nursery.start_soon(up)
            decoder = FrameDecoder()
            while data := await upstream.receive_some(65536):
                if not dropped and decoder.feed(data):
                    dropped = True
                    break  # the node answered; the client never hears it
                await client.send_all(data)
            nursery.cancel_scope.cancel()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_submit_whose_answer_was_lost_is_reported_accepted(tmp_path: Path) -> None:
    async with node_server(tmp_path) as port, trio.open_nursery() as nursery:
        proxy_port = await nursery.start(lossy_proxy, port)
        async with RpcChain("127.0.0.1", port) as direct:
            template = await direct.template()
        async with RpcChain("127.0.0.1", proxy_port, retry_delay=0.01) as node:
            sub = synthetic_sub(mine(template, synthetic()))
            # First try: the node accepts, the answer is lost; the retry hears "duplicate".
            result = await node.submit_block(sub)
            assert (result.accepted, result.reason) == (True, "accepted")
            assert result.block_hash == H(sub.header)
            assert await node.tip() == (1, H(sub.header))
            assert (await node.submit_block(sub)).reason == "duplicate"  # no retry this time
        nursery.cancel_scope.cancel()


# --- the matmine-node command ----------------------------------------------------------


def test_new_address_command() -> None:
    out = subprocess.run(
        [*NODE, "new-address"], capture_output=True, text=True, timeout=60, check=True
    )
    address = out.stdout.strip()
    assert validate_address(address) == address


def test_help_explains_every_setting() -> None:
    top = subprocess.run(
        [*NODE, "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "serve" in top and "new-address" in top
    serve = subprocess.run(
        [*NODE, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for flag in (
        "--config",
        "--host",
        "--port",
        "--data-dir",
        "--start-difficulty",
        "--block-time",
        "--maturity",
        "--log-level",
        "--orphan-probability",
    ):
        assert flag in serve
    assert "18444" in serve


def test_bad_config_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text("maturity = 'ten'\n")
    out = subprocess.run(
        [*NODE, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "maturity must be int" in out.stderr


async def start_node_process(nursery: trio.Nursery, args: list[str]) -> tuple[trio.Process, int]:
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*NODE, "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    assert proc.stderr is not None
    seen = b""
    with trio.fail_after(60):
        while (found := re.search(rb"listening on 127\.0\.0\.1:(\d+)", seen)) is None:
            chunk = await proc.stderr.receive_some(4096)
            assert chunk, f"matmine-node exited early: {seen.decode()}"
            seen += chunk
    return proc, int(found.group(1))


@pytest.mark.timeout(120)
@pytest.mark.slow
async def test_serve_as_its_own_process_keeps_its_chain(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text("[node]\nstart_difficulty = 0.001\nmin_difficulty = 1e-6\nmaturity = 3\n")
    args = ["--config", str(conf), "--data-dir", str(tmp_path / "data"), "--maturity", "4"]
    async with trio.open_nursery() as nursery:
        proc, port = await start_node_process(nursery, args)
        async with RpcChain("127.0.0.1", port, wallet_address=POOL) as node:
            info = await node.info()
            assert info["maturity"] == 4  # the flag beat the file
            assert info["next_difficulty"] == pytest.approx(0.001, rel=1e-4)
            result = await node.submit_block(
                synthetic_sub(mine(await node.template(), synthetic()))
            )
            assert result.accepted
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await proc.wait() == 0

    async with trio.open_nursery() as nursery:
        proc, port = await start_node_process(nursery, args)
        async with RpcChain("127.0.0.1", port) as node:
            assert await node.tip() == (1, result.block_hash)
            assert await node.balances(POOL) == (0, REWARD)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await proc.wait() == 0
