"""Prometheus conventions every program keeps (on a registry of its own, no global state).

- :func:`add_program_metrics`: ``matmine_<program>_build_info{version}`` 1 and the process
  collector (``process_*``: CPU seconds, resident memory, open fds, start time);
- :func:`exposition`: the text a ``/metrics`` route answers, without ``*_created`` series
  (counters, histograms and summaries carry one each by default: noise for every scraper).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CREATED_TYPES = ("counter", "histogram", "summary", "gaugehistogram")


def add_program_metrics(registry: CollectorRegistry, program: str, version: str) -> None:
    """Register the build info (``program``: pool, worker, node) and ``process_*``."""
    info = Gauge(
        f"matmine_{program}_build_info",
        f"Build of matmine-{program}: always 1, the version as a label.",
        ["version"],
        registry=registry,
    )
    info.labels(version=version).set(1)
    ProcessCollector(registry=registry)


class _WithoutCreated(Collector):
    """``registry``'s metrics with their ``_created`` samples left out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.type in CREATED_TYPES:
                created = metric.name + "_created"
                metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


def exposition(registry: CollectorRegistry) -> bytes:
    """``registry`` in the Prometheus text format, without ``_created`` series."""
    return generate_latest(_WithoutCreated(registry))
