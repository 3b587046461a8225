"""deploy/ stays true to the code: every metric an alert or a dashboard panel names exists,
and every flag a unit file or the compose file passes is one the program accepts."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from pool.metrics import PoolMetrics
from pool.useful import UsefulMetrics
from worker.metrics import register_metrics
from worker.stats import WorkerStats

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bmatmine_[a-z0-9_]+")
PROGRAMS = {
    "matmine-pool": "pool.cli",
    "matmine-worker": "worker.cli",
    "matmine-node": "pool.node.cli",
}


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    PoolMetrics(registry)
    UsefulMetrics(registry)
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
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    for service in compose["services"].values():
        if "command" in service:
            commands.append(shlex.split(service["command"]))
    return commands


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
