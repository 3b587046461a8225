"""What the rig owner sees: a status line in the log every few seconds, and a live
``rich`` table when stdout is a terminal."""

from __future__ import annotations

import logging
import sys

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .stats import WorkerStats

log = logging.getLogger(__name__)

_UNITS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def format_rate(macs_per_s: float) -> str:
    """``1.23 GMAC/s``."""
    for scale, prefix in _UNITS:
        if macs_per_s >= scale:
            return f"{macs_per_s / scale:.2f} {prefix}MAC/s"
    return f"{macs_per_s:.0f} MAC/s"


def format_duration(seconds: float) -> str:
    """``3d 04:05:06`` or ``04:05:06``."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def format_ping(stats: WorkerStats) -> str:
    ping = stats.ping
    return "-" if ping is None else f"{ping * 1000:.0f} ms"


def format_useful(stats: WorkerStats) -> str:
    """``useful 73.5%`` of the scanned MACs (``useful -`` before any scan)."""
    fraction = stats.useful_fraction
    return "useful -" if fraction is None else f"useful {fraction:.1%}"


def status_line(stats: WorkerStats) -> str:
    """One line: pool, its ping, hashrate 10s/60s/15m and peak, the useful fraction of the
    scanned MACs, shares A/R/S, hardware errors, best share, blocks, uptime."""
    s = stats.shares
    pool = stats.pool if stats.pool_connected else "no pool"
    rates = "/".join(format_rate(stats.hashrate(w)) for w in (10, 60, 900))
    return (
        f"{pool} | ping {format_ping(stats)} | {rates} (10s/60s/15m), peak "
        f"{format_rate(stats.peak)} | {format_useful(stats)} | accepted {s['accepted']} rejected "
        f"{s['rejected']} stale {s['stale']} lost {s['lost']} | hw errors "
        f"{stats.hw_errors} | best share {stats.best.difficulty:.4g} | blocks {stats.blocks}"
        f" | up {format_duration(stats.uptime)}"
    )


def _shares_cell(shares: dict[str, int]) -> Text:
    """``accepted/rejected/stale``, green, red and yellow (xmrig's colours)."""
    return Text.assemble(
        (str(shares["accepted"]), "green"),
        "/",
        (str(shares["rejected"]), "red" if shares["rejected"] else ""),
        "/",
        (str(shares["stale"]), "yellow" if shares["stale"] else ""),
    )


def status_table(stats: WorkerStats) -> Group:
    """The live view: one row per device (hashrate, peak, shares A/R/S, candidates, hardware
    errors, restarts) and a total, then the status line."""
    table = Table(title="matmine worker", expand=False)
    for column in (
        "device",
        "10s",
        "60s",
        "15m",
        "peak",
        "A/R/S",
        "candidates",
        "hw errors",
        "restarts",
    ):
        table.add_column(column, justify="left" if column == "device" else "right")
    for name, dev in stats.devices.items():
        table.add_row(
            name + (" [red](stalled)[/red]" if dev.stalled else ""),
            *(format_rate(stats.hashrate(w, name)) for w in (10, 60, 900)),
            format_rate(dev.peak),
            _shares_cell(dev.shares),
            str(dev.candidates),
            Text(str(dev.hw_errors), "red" if dev.hw_errors else ""),
            str(dev.restarts),
        )
    table.add_row(
        "[bold]total[/bold]",
        *(format_rate(stats.hashrate(w)) for w in (10, 60, 900)),
        format_rate(stats.peak),
        _shares_cell(stats.shares),
        "",
        Text(str(stats.hw_errors), "red" if stats.hw_errors else ""),
        "",
    )
    return Group(table, Text(status_line(stats)))


def live_view(setting: str) -> bool:
    """Whether ``console.live`` ("auto" | "on" | "off") asks for the live table now:
    "auto" means when stdout is a terminal."""
    return setting == "on" or (setting == "auto" and sys.stdout.isatty())


class StatusConsole:
    """Logs ``status_line`` every ``interval`` s; drives a ``rich.live.Live`` if ``live``."""

    def __init__(
        self,
        stats: WorkerStats,
        interval: float,
        live: str = "auto",
        console: Console | None = None,
    ) -> None:
        self.stats = stats
        self.interval = interval
        self.live = live_view(live)
        self.console = console or Console()

    async def run(self) -> None:
        if not self.live:
            while True:
                await trio.sleep(self.interval)
                log.info("%s", status_line(self.stats))
        # auto_refresh=False: rich would start its own refresh thread; trio drives it instead
        with Live(
            status_table(self.stats), console=self.console, auto_refresh=False, transient=False
        ) as live:
            next_line = trio.current_time() + self.interval
            while True:
                await trio.sleep(1.0)
                live.update(status_table(self.stats), refresh=True)
                if trio.current_time() >= next_line:
                    next_line += self.interval
                    log.info("%s", status_line(self.stats))
