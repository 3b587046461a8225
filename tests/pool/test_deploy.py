"""deploy/ and the README stay true to the code: every metric an alert, a dashboard panel or
the README names exists, and every flag a unit file, the compose file or a README command
passes is one the program accepts."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from pool.metrics import ModelMetrics, PoolMetrics
from pool.useful import UsefulMetrics
from tests.support import REPO
from worker.metrics import register_metrics
from worker.stats import WorkerStats

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bmatmine_[a-z0-9_]+")
PROGRAMS = {
    "matmine-pool": "pool.cli",
    "matmine-worker": "worker.cli",
    "matmine-node": "node.cli",
}


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    PoolMetrics(registry)
    UsefulMetrics(registry)
    ModelMetrics(registry)
    stats = WorkerStats()
    stats.device("blas")
    register_metrics(registry, stats)
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def referenced_metric_names() -> set[str]:
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = [r["expr"] for g in yaml.safe_load(alerts)["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "matmine-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_every_referenced_metric_is_exported():
    exported = exported_metric_names()
    referenced = referenced_metric_names()
    assert len(referenced) >= 10
    missing = sorted(referenced - exported)
    assert not missing, f"deploy/ names metrics the programs do not export: {missing}"


def deploy_commands() -> list[list[str]]:
    commands = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                commands.append(shlex.split(line.removeprefix("ExecStart=")))
    for service in compose_services().values():
        if "command" in service and "build" in service:
            commands.append(shlex.split(service["command"]))
    return commands


def readme_commands() -> list[list[str]]:
    """The README's ``.venv/bin/matmine-* SUBCOMMAND ...`` lines, comments dropped."""
    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(".venv/bin/matmine-"):
            argv = shlex.split(line.split("#")[0])
            commands.append([Path(argv[0]).name, *argv[1:]])
    return commands


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a[:3]))
def test_readme_commands_are_real(argv):
    program, subcommand = argv[0], argv[1]
    assert program in PROGRAMS, argv
    words = [subcommand] + ([argv[2]] if subcommand == "work" else [])
    done = subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("-")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout), (argv, flag)


def test_readme_metric_names_are_exported():
    named = set(METRIC.findall((REPO / "README.md").read_text()))
    assert "matmine_pool_hashrate_macs_per_second" in named
    exported = exported_metric_names() | {
        f"matmine_{p}_build_info" for p in ("pool", "worker", "node")
    }
    assert sorted(named - exported) == []


def compose_services() -> dict[str, dict]:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())["services"]


@pytest.mark.parametrize("argv", deploy_commands(), ids=lambda a: " ".join(a[:2]))
def test_deploy_commands_use_real_flags(argv):
    program = Path(argv[0]).name
    assert program in PROGRAMS, argv
    subcommand = argv[1]
    help_text = subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    assert flags
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"{program} {subcommand} has no {flag}"
        )


def real_tool(name: str) -> str:
    """The path of a Debian tool the deploy checks run; skip without it, fail under CI."""
    exe = shutil.which(name)
    if exe is None:
        message = f"{name} not found (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def test_systemd_units_verify_against_the_installed_programs(tmp_path):
    """``systemd-analyze verify`` on each unit, its ExecStart pointed at this install's
    programs: no error and no warning (an unknown key is only a warning)."""
    tool = real_tool("systemd-analyze")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "matmine-pool").exists(), "the package is not installed in this venv"
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) == 3
    for unit in units:
        text = unit.read_text().replace("/opt/matmine/.venv/bin", str(bin_dir))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        [tool, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


@pytest.mark.parametrize(
    "unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.stem
)
def test_systemd_units_run_unprivileged_with_their_own_state(unit):
    text = unit.read_text()
    assert "\nUser=matmine\n" in text
    assert "Wants=network-online.target" in text and "After=network-online.target" in text
    assert re.search(r"^(StateDirectory|CacheDirectory)=matmine/", text, re.M)
    assert "ProtectSystem=strict" in text
    if unit.stem == "matmine-worker":
        groups = re.search(r"^SupplementaryGroups=(.*)$", text, re.M)
        assert groups and {"video", "render"} <= set(groups.group(1).split())
    sysusers = (DEPLOY / "systemd" / "matmine.sysusers.conf").read_text()
    assert re.search(r"^u matmine ", sysusers, re.M)


def test_dockerfile_runs_as_a_user_with_a_healthcheck():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", base), f"base image not pinned: {base}"
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", dockerfile, re.M)
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_compose_is_pinned_healthy_and_keeps_the_node_private():
    services = compose_services()
    for name, service in services.items():
        if "build" not in service:
            image = service["image"]
            assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", image), f"{name}: image not pinned"
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert "healthcheck" in service or name == "pool", f"{name}: no healthcheck"
    node = services["node"]
    assert "0.0.0.0" not in node["command"] and "ports" not in node
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    assert compose["networks"][node["networks"][0]].get("internal") is True
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"] and "alertmanager" in services


def test_alertmanager_config_is_valid():
    tool = real_tool("amtool")
    done = subprocess.run(
        [tool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
