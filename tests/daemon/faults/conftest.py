"""The fault matrix prints its figures (state reached, times, p99) after the run."""

from __future__ import annotations

from typing import Any

from tests.support.matrix import RESULTS


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A table of every cell that ran: state, time to it, time to recover, p99 per endpoint."""
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault matrix")
    write(
        f"{'cell':40} {'expect':6} {'got':5} {'to state':>9} {'recover':>8} "
        f"{'p99 live/ready/health ms':>25} {'worst':>6} {'rss KiB':>8} {'fds':>4}  output / store"
    )
    for r in RESULTS:
        p99 = "/".join(
            f"{r.p99[p] * 1000:.1f}" for p in ("/live", "/ready", "/health") if p in r.p99
        )
        extra = r.output
        if r.huge_sent is not None:
            extra += f" [huge body: {r.huge_sent / 2**20:.1f} MiB sent at most per request]"
        if r.store:
            extra += f" [store {r.store}]"
        if r.note:
            extra += f" [{r.note}]"
        rss = "-" if r.rss_growth is None else f"{r.rss_growth // 1024:+d}"
        fds = "-" if r.fd_growth is None else f"{r.fd_growth:+d}"
        write(
            f"{r.cell.id:40} {r.cell.expect:6} {r.state:5} {_ms(r.to_state):>9} "
            f"{_ms(r.to_recover):>8} {p99:>25} {_ms(r.worst):>6} {rss:>8} {fds:>4}  {extra}"
        )
