"""The model registry: on disk, over HTTP on a real socket, and from the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from starlette.applications import Starlette

from pool.cli import main
from pool.http_api import serve_http
from pool.models.api import create_model_routes
from pool.models.registry import ModelRegistry, NameTaken, RegistryError
from protocol.model import load_model


def npz(seed: int = 0, **override: np.ndarray) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {
        "w0": rng.integers(-64, 65, (16, 8)).astype(np.int8),
        "b0": rng.integers(-100, 100, 8).astype(np.int32),
        "scale0": np.full(8, 1 << 20, np.int32),
        "shift0": np.full(8, 30, np.int32),
        "w1": rng.integers(-64, 65, (8, 4)).astype(np.int8),
        "b1": np.zeros(4, np.int32),
        "relu": np.array([True, False]),
    }
    arrays.update(override)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def stored_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "models").glob("*.npz"))


def test_add_list_load_and_idempotence(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    info, created = registry.add("mlp-1", npz())
    assert created and info.layers == 2 and info.input_width == 16 and info.output_width == 4
    assert info.int32_output and info.macs_per_row == 16 * 8 + 8 * 4
    assert info.model_id == load_model(npz()).model_id
    assert stored_files(tmp_path) == [f"{info.model_id.hex()}.npz"]
    again, created = registry.add("mlp-1", npz())
    assert not created and again == info
    alias, created = registry.add("alias", npz())  # same content, one file
    assert created and alias.model_id == info.model_id
    assert len(stored_files(tmp_path)) == 1
    assert [i.name for i in registry.list()] == ["alias", "mlp-1"]
    assert registry.load("mlp-1").model_id == info.model_id
    registry.close()
    reopened = ModelRegistry(tmp_path)  # names survive a restart
    assert reopened.get("mlp-1") == info
    reopened.close()


def test_refusals_store_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, max_bytes=1 << 16)
    registry.add("taken", npz(0))
    with pytest.raises(NameTaken, match="'taken' is taken by model"):
        registry.add("taken", npz(1))
    bad = npz(2, w1=np.zeros((7, 4), np.int8))
    with pytest.raises(RegistryError, match="w1 has 7 rows, layer 0 gives 8 outputs"):
        registry.add("bad", bad)
    for name in ("", "-x", "a/b", "x" * 65, "sp ace"):
        with pytest.raises(RegistryError, match=r"must be 1\.\.64 characters"):
            registry.add(name, npz(3))
    with pytest.raises(RegistryError, match="at most 65536"):
        registry.add("big", b"\0" * 70000)
    assert [i.name for i in registry.list()] == ["taken"]
    assert len(stored_files(tmp_path)) == 1
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.load("nope")
    registry.close()


def test_a_damaged_file_is_noticed_on_load(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    info, _ = registry.add("m", npz())
    path = registry.path(info.model_id)
    path.write_bytes(npz(9))  # another valid model under this id's name
    with pytest.raises(RegistryError, match="does not hash to its id"):
        registry.load("m")
    path.write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="cannot be read"):
        registry.load("m")
    registry.close()


async def test_http_api_on_a_real_socket(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, max_bytes=1 << 16)
    app = Starlette(routes=create_model_routes(registry, trio.CapacityLimiter(1)))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.post("/api/models", params={"name": "mlp"}, content=npz())
            assert r.status_code == 201, r.text
            model_id = r.json()["model_id"]
            assert r.json()["output_dtype"] == "int32"
            r = await client.post("/api/models", params={"name": "mlp"}, content=npz())
            assert r.status_code == 200 and r.json()["model_id"] == model_id
            r = await client.post("/api/models", params={"name": "mlp"}, content=npz(5))
            assert r.status_code == 409 and "is taken by model" in r.json()["error"]
            r = await client.post("/api/models", params={"name": "x"}, content=b"not a zip")
            assert r.status_code == 400 and "not a readable .npz" in r.json()["error"]
            r = await client.post("/api/models", content=npz())
            assert r.status_code == 400 and "model name" in r.json()["error"]
            r = await client.post("/api/models", params={"name": "big"}, content=b"\0" * 70000)
            assert r.status_code == 413

            async def chunked():  # no Content-Length: refused while streaming
                for _ in range(40):
                    yield b"\0" * 4096

            r = await client.post("/api/models", params={"name": "big"}, content=chunked())
            assert r.status_code == 413
            r = await client.get("/api/models")
            assert [m["name"] for m in r.json()["models"]] == ["mlp"]
            r = await client.get("/api/models/mlp")
            assert r.status_code == 200 and r.json()["model_id"] == model_id
            r = await client.get("/api/models/none")
            assert r.status_code == 404
        assert len(stored_files(tmp_path)) == 1
        nursery.cancel_scope.cancel()
    registry.close()


def test_cli_with_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "m.npz"
    model_file.write_bytes(npz())
    data_dir = tmp_path / "data"
    assert main(["model", "add", "mlp", str(model_file), "--data-dir", str(data_dir)]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["name"] == "mlp" and len(stored_files(data_dir)) == 1
    assert main(["model", "list", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mlp\t{added['model_id']}\t2 layers\t16 -> 4 int32")
    bad_file = tmp_path / "bad.npz"
    bad_file.write_bytes(npz(1, relu=np.array([1, 0], np.uint8)))
    assert main(["model", "add", "bad", str(bad_file), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "matmine-pool model: model: relu must be bool, got uint8"
    other = tmp_path / "other.npz"
    other.write_bytes(npz(7))
    assert main(["model", "add", "mlp", str(other), "--data-dir", str(data_dir)]) == 1
    assert "is taken by model" in capsys.readouterr().err
    missing = str(tmp_path / "missing.npz")
    assert main(["model", "add", "m", missing, "--data-dir", str(data_dir)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert len(stored_files(data_dir)) == 1


async def test_cli_through_the_http_api(tmp_path: Path) -> None:
    model_file = tmp_path / "m.npz"
    model_file.write_bytes(npz())
    registry = ModelRegistry(tmp_path / "data")
    app = Starlette(routes=create_model_routes(registry, trio.CapacityLimiter(1)))
    limiter = trio.CapacityLimiter(1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        api = f"http://127.0.0.1:{port}"
        add = ["model", "add", "mlp", str(model_file), "--api", api]
        assert await trio.to_thread.run_sync(main, add, limiter=limiter) == 0
        listing = ["model", "list", "--api", api]
        assert await trio.to_thread.run_sync(main, listing, limiter=limiter) == 0
        nursery.cancel_scope.cancel()
    assert registry.get("mlp") is not None
    registry.close()
    unreachable = ["model", "list", "--api", "http://127.0.0.1:9", "--http-timeout", "2"]
    assert main(unreachable) == 1
