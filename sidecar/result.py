"""What a probe returns: a verdict, a short output, how long it took and when."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from sidecar.limits import MAX_OUTPUT

Verdict = Literal["pass", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One probe run. `latency` is in seconds; `observed_at` is wall-clock epoch seconds."""

    status: Verdict
    output: str
    latency: float
    observed_at: float


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 code units (how Convex, in JavaScript, measures a
    string's length), ending in "..." when cut; a lone surrogate (from undecodable bytes)
    becomes U+FFFD, so the text always encodes as UTF-8."""
    units = text.encode("utf-16-le", errors="surrogatepass")
    if len(units) <= 2 * limit:
        return units.decode("utf-16-le", errors="replace")
    return units[: 2 * (limit - 3)].decode("utf-16-le", errors="ignore") + "..."


class Stopwatch:
    """Times one probe run and builds its result."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._start = time.monotonic()

    def result(self, status: Verdict, output: str) -> CheckResult:
        """The result of the run, timed from the stopwatch's creation."""
        text = clip(output, MAX_OUTPUT)
        return CheckResult(
            status=status,
            output=text,
            latency=time.monotonic() - self._start,
            observed_at=self._wall,
        )
