"""Scanned MACs by kind and useful bytes by direction (worker/stats.py, worker/console.py,
worker/metrics.py): what the rig did, as xmrig/SRBMiner users expect to see it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from worker.console import status_line
from worker.metrics import register_metrics
from worker.stats import WorkerStats


def test_scanned_macs_are_counted_by_kind_and_add_up():
    stats = WorkerStats()
    assert stats.useful_fraction is None and "useful -" in status_line(stats)
    stats.add_scan("gpu0", 3_000, True, "useful")
    stats.add_scan("gpu0", 1_000, False, "synthetic")
    stats.add_scan("gpu1", 4_000, True)  # synthetic unless said
    assert stats.scanned_macs == {"useful": 3_000, "synthetic": 5_000}
    assert sum(stats.scanned_macs.values()) == sum(d.macs for d in stats.devices.values())
    assert stats.useful_fraction == pytest.approx(3 / 8)
    assert "| useful 37.5% |" in status_line(stats)
    with pytest.raises(ValueError, match="unknown scan kind"):
        stats.add_scan("gpu0", 1, True, "bonus")
    assert stats.scanned_macs == {"useful": 3_000, "synthetic": 5_000}
    stats.useful_bytes["in"] += 4096
    stats.useful_bytes["out"] += 1024
    summary = stats.summary()["useful"]
    assert summary["scanned_macs"] == {"useful": 3_000, "synthetic": 5_000}
    assert summary["useful_fraction"] == pytest.approx(3 / 8)
    assert summary["bytes"] == {"in": 4096, "out": 1024}
    registry = CollectorRegistry()
    register_metrics(registry, stats)
    text = generate_latest(registry).decode()
    assert 'matmine_worker_scanned_macs_total{kind="useful"} 3000.0' in text
    assert 'matmine_worker_scanned_macs_total{kind="synthetic"} 5000.0' in text
    assert 'matmine_worker_useful_bytes_total{direction="in"} 4096.0' in text
    assert 'matmine_worker_useful_bytes_total{direction="out"} 1024.0' in text
