"""A real pool and a real worker as processes, for benchmarks and end-to-end tests.

:class:`PoolProcess` runs ``python -m pool.cli serve --config FILE`` (the TOML from
:func:`pool_toml`), :class:`WorkerProcess` runs ``python -m worker.cli mine``; both log
to a file and are stopped with SIGTERM (then SIGKILL) on leaving their ``async with``.
:func:`scrape` reads a Prometheus ``/metrics`` into ``{(name, labels): value}``;
:func:`cpu_seconds` reads a process's user+system CPU time from ``/proc``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def pool_toml(sections: dict[str, dict[str, Any]]) -> str:
    """``{"stratum": {"port": 1}}`` → TOML text (one level of tables, dotted names kept)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scrape(client: httpx.AsyncClient, url: str) -> Metrics:
    """The samples of a ``/metrics`` page, keyed by name and sorted labels."""
    response = await client.get(url)
    response.raise_for_status()
    out: Metrics = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: Metrics, name: str, **labels: str) -> float:
    """One sample's value (0.0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class _Process:
    """A child process with its log in a file; stopped on leaving ``async with``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.process: trio.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, ready: str, timeout: float) -> None:
        """Start it; return once ``ready`` (a regex) is in its log."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                self.args, cwd=REPO, stdout=log, stderr=log, env=env
            )
        try:
            with trio.fail_after(timeout):
                while not re.search(ready, self.log.read_text(errors="replace")):
                    if self.process.poll() is not None:
                        raise RuntimeError(f"{self.args[2]} exited:\n{self.log_tail()}")
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            await self.stop()
            raise RuntimeError(
                f"{self.args[2]} not ready after {timeout:g} s:\n{self.log_tail()}"
            ) from None
        except BaseException:  # interrupted while it starts: no __aexit__ will stop it
            with trio.CancelScope(shield=True):
                await self.stop()
            raise

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20) as scope:
            await self.process.wait()
        if scope.cancelled_caught:
            self.process.kill()
            with trio.CancelScope(shield=True):
                await self.process.wait()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.stop()


class PoolProcess(_Process):
    """``python -m pool.cli serve`` on ``config`` (a TOML file)."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__([sys.executable, "-m", "pool.cli", "serve", "--config", str(config)], log)

    async def __aenter__(self) -> PoolProcess:
        await self.start(r"pool ready", timeout=120)
        return self


class WorkerProcess(_Process):
    """``python -m worker.cli mine`` on the BLAS backend, metrics on ``metrics_port``; with
    ``models``, its model files (``[model] cache_dir``, through a config file) go there."""

    def __init__(
        self,
        pool: str,
        login: str,
        metrics_port: int,
        cache: Path,
        log: Path,
        models: Path | None = None,
    ) -> None:
        extra = []
        if models is not None:
            config = log.with_name(log.stem + ".toml")
            config.write_text(pool_toml({"model": {"cache_dir": str(models)}}))
            extra = ["--config", str(config)]
        super().__init__(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "mine",
                "--pool",
                pool,
                "--login",
                login,
                "--backend",
                "blas",
                "--metrics-port",
                str(metrics_port),
                "--blob-cache",
                str(cache),
                "--log-level",
                "INFO",
                *extra,
            ],
            log,
        )

    async def __aenter__(self) -> WorkerProcess:
        await self.start(r"metrics and /api/summary on", timeout=60)
        return self
