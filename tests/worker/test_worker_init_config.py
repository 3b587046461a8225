"""``matmine-worker init-config``: every setting with its help and default, a file that loads
back to the defaults and that ``mine --config`` accepts (its [[pool]] example too)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

from protocol.address import new_address
from tests.support import REPO
from toolkit.settings import help_of, toml_value
from worker.config import PoolEndpoint, WorkerConfig, load_config

WORKER = [sys.executable, "-m", "worker.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def settings(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
    """(table, key, help, default as TOML) of every setting of ``obj``, sections walked."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += settings(value, (*path, f.name))
        elif f.name != "pools":
            found.append((".".join(path), f.name, help_of(f), toml_value(value)))
    return found


def test_init_config_prints_every_setting_with_its_help_and_default(tmp_path: Path) -> None:
    done = run_cli("init-config")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    table = ""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("[") and not line.startswith("[["):
            table = line.strip("[]")
        elif " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            seen[(table, key)] = (lines[i - 1].removeprefix("# "), value)
    expected = settings(WorkerConfig())
    assert len(expected) > 20
    for table, key, help_text, default in expected:
        assert seen.pop((table, key)) == (help_text, default), (table, key)
    assert seen == {}  # nothing else
    assert "# [[pool]]" in text
    path = tmp_path / "worker.toml"
    path.write_text(text)
    assert load_config(path) == WorkerConfig()


def test_mine_accepts_the_printed_file_and_its_pool_example(tmp_path: Path) -> None:
    text = run_cli("init-config").stdout
    path = tmp_path / "worker.toml"
    path.write_text(text)
    # The defaults name no pool: mine says so in one line, after loading the file.
    done = run_cli("mine", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "matmine-worker mine: no pool given (--pool HOST:PORT or [[pool]] url in the config)"
    ]
    # With its [[pool]] example and a login filled in, it is a config mine runs with.
    address = new_address()
    edited = (
        text.replace("# [[pool]]\n", "[[pool]]\n")
        .replace('# url = "127.0.0.1:3333"', 'url = "tls://127.0.0.1:3333"')
        .replace("# priority = 0", "priority = 0")
        .replace('login = ""', f'login = "{address}.rig"')
    )
    path.write_text(edited)
    config = load_config(path).validate()
    assert config.pools == (PoolEndpoint("127.0.0.1", 3333, tls=True, priority=0),)
    assert config.login == f"{address}.rig"
    # A bad login in the same file: mine stops in one line before connecting anywhere.
    path.write_text(edited.replace(f'login = "{address}.rig"', 'login = "nobody.rig"'))
    done = run_cli("mine", "--config", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "login 'nobody.rig'" in lines[0], done.stderr


def test_help_lists_init_config() -> None:
    done = run_cli("--help")
    assert done.returncode == 0 and "init-config" in done.stdout
