"""toolkit.settings: TOML files and flags onto dataclasses, help and bounds on the fields;
the pool, worker and node configurations built on it."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest

from node.chain import NodeConfig
from node.cli import NodeSettings, load_settings
from pool.config import PoolConfig, UsefulSection, VardiffSection, default_config_text
from pool.useful import UsefulConfig
from pool.vardiff import VardiffConfig
from toolkit.settings import (
    PYTHON_TYPE_NAMES,
    ConfigError,
    Style,
    add_flags,
    check_bounds,
    cli_help,
    from_dict,
    help_table,
    load_toml,
    override,
    section,
    setting,
    toml_text,
    walk,
)
from worker.config import WorkerConfig


@dataclass
class Http:
    port: int = setting(8080, "HTTP port", min=0, max=65535)
    ratio: float = setting(0.5, "a ratio", positive=True)
    mode: str = setting("fast", "how", choices=("fast", "slow"))
    on: bool = setting(True, "serve it")
    names: tuple[str, ...] = setting(("a",), "some names")
    tokens: dict[str, Any] = setting({}, "free-form table", example=("# token = name",))


@dataclass(frozen=True)
class Limits:
    burst: int = setting(10, "burst size", min=1)


@dataclass
class App:
    name: str = setting("app", "the name")
    http: Http = section(Http)
    limits: Limits = section(Limits)


def test_a_real_toml_file_over_the_defaults(tmp_path):
    path = tmp_path / "app.toml"
    path.write_text(
        'name = "x"\n[http]\nport = 9000\nratio = 2\nnames = ["b", "c"]\n'
        '[http.tokens]\nabc = "alice"\n[limits]\nburst = 3\n'
    )
    app = load_toml(App, path)
    assert app == App(
        name="x",
        http=Http(port=9000, ratio=2.0, names=("b", "c"), tokens={"abc": "alice"}),
        limits=Limits(burst=3),
    )
    assert isinstance(app.http.ratio, float)  # an integer is a number
    assert load_toml(App, None) == App()
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(App, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_toml(App, tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("data", "style", "message"),
    [
        ({"http": {"port": "80"}}, Style(), "http.port must be an integer, got '80'"),
        (
            {"http": {"port": "80"}},
            Style(sections=True),
            "[http] port must be an integer, got '80'",
        ),
        ({"http": {"port": True}}, Style(), "http.port must be an integer, got True"),
        ({"http": {"on": 1}}, Style(), "http.on must be true or false, got 1"),
        ({"http": {"ratio": "x"}}, Style(), "http.ratio must be a number"),
        ({"http": {"names": "b"}}, Style(), "http.names must be a list of strings"),
        ({"http": {"tokens": 3}}, Style(), "http.tokens must be a table"),
        ({"name": 3}, Style(type_names=PYTHON_TYPE_NAMES), "name must be str, got 3"),
        ({"http": 3}, Style(), "[http] must be a table"),
        ({"http": {"prot": 1}}, Style(), "unknown key http.prot (did you mean 'http.port'?)"),
        (
            {"http": {"prot": 1}},
            Style(sections=True),
            "unknown key 'prot' in [http] (did you mean 'port'?)",
        ),
        ({"htp": {}}, Style(sections=True), "unknown section [htp] (did you mean 'http'?)"),
        ({"zzz": 1}, Style(), "unknown key 'zzz' (known: name, http, limits)"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(data, style, message):
    with pytest.raises(ConfigError) as info:
        from_dict(App, data, style=style)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_overrides_typed_or_from_text_leave_the_original_alone():
    app = App()
    changed = override(app, {"http.port": 9000, "limits.burst": 2, "name": "y"})
    assert (changed.http.port, changed.limits.burst, changed.name) == (9000, 2, "y")
    assert app == App()
    text = override(app, {"http.on": "false", "http.ratio": "1.5", "http.names": "p,q"}, text=True)
    assert (text.http.on, text.http.ratio, text.http.names) == (False, 1.5, ("p", "q"))
    with pytest.raises(
        ConfigError,
        match=r"unknown setting 'http\.prot' \(did you mean "
        r"'http\.port'\?\)",
    ):
        override(app, {"http.prot": 1})
    with pytest.raises(ConfigError, match="unknown setting 'http'"):
        override(app, {"http": 1})
    with pytest.raises(ConfigError, match=r"\[http\] port must be an integer"):
        override(app, {"http.port": "x"}, style=Style(sections=True))
    with pytest.raises(ConfigError, match=r"http\.port: not an integer"):
        override(app, {"http.port": "x"}, text=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"http.port": 70000}, "http.port must be in 0..65535, got 70000"),
        ({"http.ratio": 0.0}, "http.ratio must be positive, got 0.0"),
        ({"http.mode": "medium"}, "http.mode must be one of fast, slow, got 'medium'"),
        ({"limits.burst": 0}, "limits.burst must be at least 1, got 0"),
    ],
)
def test_bounds_on_the_fields(values, message):
    check_bounds(App())
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_bounds(override(App(), values))


def test_generated_file_has_every_help_and_loads_back_to_the_defaults():
    app = App(http=Http(tokens={"k": "v", "a b.c": "w"}))
    text = toml_text(app, ("My app.",))
    assert text.startswith("# My app.\n\n")
    for path, f, _ in walk(app):
        assert f"# {f.metadata['help']}" in text, path
    assert "# token = name" in text
    assert from_dict(App, tomllib.loads(text)) == app
    assert help_table(App)["http"]["port"] == "HTTP port"


def test_flags_and_help_from_the_fields():
    parser = argparse.ArgumentParser()
    add_flags(parser, App)
    args = parser.parse_args(["--name", "z"])
    assert args.name == "z"
    assert "--http" not in parser.format_help()  # sections get no flag
    assert cli_help(App, "http.port") == "HTTP port (config: [http] port; default 8080)"


# --- the programs' configurations -----------------------------------------------------


@pytest.mark.parametrize("cls", [PoolConfig, WorkerConfig, NodeSettings])
def test_every_setting_has_help(cls):
    for path, f, _ in walk(cls()):
        if path != ("pools",):  # [[pool]] tables, documented in worker/config.py
            assert f.metadata.get("help"), path


def test_init_config_is_generated_and_loads_back():
    text = default_config_text()
    assert from_dict(PoolConfig, tomllib.loads(text), style=Style(sections=True)) == PoolConfig()


def test_pool_sections_take_their_defaults_from_the_modules_configs():
    vardiff, defaults = VardiffSection(), VardiffConfig()
    for f in dataclasses.fields(VardiffConfig):
        assert hasattr(vardiff, f.name), f.name
        if f.name != "min_difficulty":  # the pool's floor: 0.001 (SPEC, tests rely on it)
            assert getattr(vardiff, f.name) == getattr(defaults, f.name), f.name
    assert vardiff.min_difficulty == 0.001
    assert vardiff.vardiff_config().min_difficulty == 0.001
    useful = UsefulSection().useful_config()
    assert useful == UsefulConfig()


def test_node_settings_cover_the_chain_config(tmp_path):
    settings, chain = NodeSettings(), NodeConfig()
    for f in dataclasses.fields(NodeConfig):
        if f.name != "workload_cache":  # not a setting of matmine-node
            assert getattr(settings, f.name) == getattr(chain, f.name), f.name
    assert settings.node_config() == chain
    path = tmp_path / "node.toml"
    path.write_text("[node]\nmaturity = 3\nstart_difficulty = 5\n")
    loaded = load_settings(path, {"maturity": 4, "port": None})
    assert (loaded.maturity, loaded.start_difficulty, loaded.port) == (4, 5.0, settings.port)
    path.write_text("maturity = 'ten'\n")
    with pytest.raises(ConfigError, match=f"{path}: maturity must be int, got 'ten'"):
        load_settings(path, {})
