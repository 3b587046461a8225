"""The alert rules in deploy/prometheus/ are valid and fire when they should, checked by the
real ``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it).

Without promtool these tests skip, except under CI (``CI`` set), where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.support import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found (apt-get install -y prometheus)")
        pytest.skip("promtool not found (apt-get install -y prometheus)")
    return subprocess.run([exe, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_rules_and_scrape_config_are_valid():
    for args in (("check", "rules", RULES.name), ("check", "config", "prometheus.yml")):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass():
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_where_it_fires():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    untested = sorted(alert_names() - fired)
    assert not untested, f"alerts with no promtool case where they fire: {untested}"
