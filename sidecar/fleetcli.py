"""`health-sidecar fleet`, `drain` and `undrain`: the fleet as Convex sees it, with the daemon's
own settings (CONVEX_URL), signed with the operator key (HEALTH_SIDECAR_OPERATOR_SECRET in this
command's environment, never a sidecar's), and its central drain.

Exit status: 0 done (and, for `fleet`, every instance ready); 1 not ready, or Convex refused or
failed; 2 bad usage, an unknown instance, or no operator key; 3 this host's clock is more than
30 s from the deployment's (`clock_skew`: nothing was done)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import aiohttp

from sidecar import __version__
from sidecar.config import Settings
from sidecar.fleet import DRAINED, MIN_SHARED_FAILING
from sidecar.limits import INSTANCE, MAX_DRAIN_MS, MIN_DRAIN_MS, REASON
from sidecar.result import clip
from sidecar.store import ClockSkew, ConvexClient, FunctionError, HealthStore, StoreError
from sidecar.store.messages import DrainAnswer, FleetReport, Member

T = TypeVar("T")
EXIT_OK, EXIT_NOT_READY, EXIT_USAGE, EXIT_CLOCK_SKEW = 0, 1, 2, 3
MAX_PAGES = 50  # pages of `fleet` (100 instances each) one command reads, at most
OPERATOR_ENV = "HEALTH_SIDECAR_OPERATOR_SECRET"
CALLER = "health-sidecar-cli"  # the `instance` a CLI call is signed as
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
# How long `drain` and `undrain` wait for the instances to take the change (--timeout).
DEFAULT_TIMEOUT = "10s"
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 3600.0
ACK_POLL = 0.3  # seconds between two reads of health:fleet while waiting for acknowledgements


class UsageError(Exception):
    """A bad argument: the message names the option; nothing was changed."""


def parse_duration(
    text: str,
    *,
    option: str = "--for",
    low: float = MIN_DRAIN_MS / 1000,
    high: float = MAX_DRAIN_MS / 1000,
) -> float:
    """A number with its unit (`90s`, `15m`, `2h`, `1d`; a bare number is refused: minutes
    or seconds?), from `low` to `high` (default: 1 s to 30 days, a drain's bounds); seconds.
    A UsageError names `option` otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise UsageError(f"{option}: {text!r} is not a duration (e.g. 90s, 15m, 2h, 1d)")
    if not match.group(2):
        raise UsageError(f"{option}: {text!r} needs a unit: s, m, h or d (e.g. {text}s)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not low <= seconds <= high:
        raise UsageError(f"{option}: {text!r} is not between {_span(low)} and {_span(high)}")
    return seconds


def _span(seconds: float) -> str:
    """`1 s`, `1 h`, `30 days`: a bound as the messages say it."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def caller() -> str:
    """Who drains: user@host of this command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:INSTANCE]


def fleet(settings: Settings, *, as_json: bool) -> int:
    """Print every live instance; exit 0 when each is ready, 1 otherwise (or none is live)."""
    report = _run(settings, all_pages)
    if isinstance(report, int):
        return report
    if report.cursor is not None:
        print(f"health-sidecar: fleet: stopped after {MAX_PAGES} pages", file=sys.stderr)
    if as_json:
        print(json.dumps(fleet_document(report, settings.panic_threshold), indent=2))
    else:
        print(fleet_table(report, settings.panic_threshold))
    ready = [m.ready for m in report.members]
    complete = report.cursor is None
    return EXIT_OK if complete and ready and all(ready) else EXIT_NOT_READY


async def all_pages(store: HealthStore) -> FleetReport:
    """`health:fleet` page after page (at most MAX_PAGES): the instances of every page, the
    counts of the first. A report whose `cursor` is set was cut short."""
    first = report = await store.fleet()
    members = list(first.members)
    for _ in range(MAX_PAGES - 1):
        if report.cursor is None:
            break
        report = await store.fleet(report.cursor)
        members.extend(report.members)
    return replace(first, members=tuple(members), cursor=report.cursor)


def drain(
    settings: Settings,
    *,
    undo: bool,
    instances: Sequence[str],
    every: bool,
    yes: bool,
    reason: str | None,
    duration: str | None,
    timeout: str = DEFAULT_TIMEOUT,
    wait: bool = True,
) -> int:
    """Drain (or undrain) the named instances, or every live one with `--all --yes`; then,
    unless `wait` is False, wait at most `timeout` for each to take the change (its `/ready`
    reasons, as it reports them to Convex, name the drain; or no longer do), printing each as
    it acknowledges. Exit 1 naming those that did not."""
    try:
        targets = _targets(instances, every=every, yes=yes)
        for_ms = None if duration is None else 1000 * parse_duration(duration)
        limit = parse_duration(timeout, option="--timeout", low=MIN_TIMEOUT, high=MAX_TIMEOUT)
        if not undo and not reason:
            raise UsageError("--reason: required to drain (it shows in /ready and the audit)")
        if undo and (reason is not None or duration is not None):
            raise UsageError("--reason and --for: only for drain")
        if reason is not None and not 1 <= len(reason.encode("utf-16-le")) // 2 <= REASON:
            raise UsageError(f"--reason: 1 to {REASON} characters")
    except UsageError as exc:
        return _usage(exc)
    verb = "undrained" if undo else "drained"

    async def apply(store: HealthStore) -> tuple[str, ...]:
        done = await store.drain(
            drain=not undo, instances=targets, reason=reason, by=caller(), for_ms=for_ms
        )
        print(f"{verb}: {', '.join(done) or '(none live)'}", flush=True)
        if not wait:
            return ()
        return await _await_acks(store, done, reason=None if undo else reason, within=limit)

    missing = _run(settings, apply)
    if isinstance(missing, int):
        return missing
    if missing:
        print(
            f"health-sidecar: not acknowledged within {timeout}: {', '.join(missing)} "
            f"(Convex recorded the change; each takes it at its next sync or subscription "
            f"update: `health-sidecar fleet` shows where they are)",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    return EXIT_OK


def acknowledged(member: Member, reason: str | None) -> bool:
    """True when `member` reports having taken the change: for a drain (`reason` given), its
    `/ready` reasons name it as the daemon words it; for an undrain, no reason names a drain."""
    if reason is None:
        return not any(r.startswith(DRAINED) for r in member.reasons)
    return clip(f"{DRAINED}{reason}", REASON) in member.reasons


async def _await_acks(
    store: HealthStore, names: Sequence[str], *, reason: str | None, within: float
) -> tuple[str, ...]:
    """Read `health:fleet` (every page) every ACK_POLL seconds, at most `within` seconds in
    all, until each named instance has acknowledged; print each as it does. The names that
    did not, sorted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    waiting = set(names)
    while waiting:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(left):
                report = await all_pages(store)
        except (StoreError, TimeoutError):
            report = None  # a missed poll: the next one may answer
        for member in () if report is None else report.members:
            if member.instance in waiting and acknowledged(member, reason):
                waiting.discard(member.instance)
                print(f"acknowledged: {member.instance}", flush=True)
        if waiting:
            await asyncio.sleep(min(ACK_POLL, max(0.0, deadline - loop.time())))
    return tuple(sorted(waiting))


def fleet_table(report: FleetReport, threshold: float) -> str:
    """The fleet as a table: one line per instance."""
    header = ("INSTANCE", "READY", "DRAINING", "FAILING", "SHARED OUTAGES", "LAST SEEN", "VERSION")
    rows = [header]
    for m in report.members:
        doc = _member_document(m, report, threshold)
        rows.append(
            (
                m.instance,
                {True: "yes", False: "no", None: "?"}[m.ready],
                "-" if m.drain is None else f"yes: {m.drain.reason} ({_signer(m.drain)})",
                ", ".join(m.failing) or "-",
                ", ".join(doc["shared_outages"]) or "-",
                f"{m.seen_age_ms / 1000:.0f}s ago",
                m.version,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if not report.members:
        lines.append("(no live instance)")
    if report.live is not None:
        lines.append(f"live instances (as last counted): {report.live}")
    if report.joins_last_hour is not None:
        lines.append(f"new instance names in the last hour: {report.joins_last_hour}")
    return "\n".join(line.rstrip() for line in lines)


def _signer(drain: DrainAnswer) -> str:
    """Who drained: the name the caller gave (a claim) and the key that signed the call."""
    return f"by {drain.by} (claimed), signed with the {drain.key or 'unrecorded'} key"


def fleet_document(report: FleetReport, threshold: float) -> dict[str, Any]:
    """The fleet for scripts (`--json`)."""
    return {
        "instances": [_member_document(m, report, threshold) for m in report.members],
        "outages": {
            check: {"failing": failing, "live": live, "shared": _shared(failing, live, threshold)}
            for check, (failing, live) in report.outages.items()
        },
        "ready": bool(report.members) and all(m.ready for m in report.members),
        "live": report.live,
        "joins_last_hour": report.joins_last_hour,
        "complete": report.cursor is None,
    }


def _member_document(m: Member, report: FleetReport, threshold: float) -> dict[str, Any]:
    counts = {check: report.outages[check] for check in m.failing if check in report.outages}
    outages = [
        f"{check} ({failing}/{live})"
        for check, (failing, live) in counts.items()
        if _shared(failing, live, threshold)
    ]
    return {
        "instance": m.instance,
        "ready": m.ready,
        "reasons": list(m.reasons),
        "draining": _drain_document(m.drain),
        "failing": list(m.failing),
        "shared_outages": outages,
        "last_seen_seconds": round(m.seen_age_ms / 1000, 1),
        "version": m.version,
    }


def _drain_document(drain: DrainAnswer | None) -> dict[str, Any] | None:
    if drain is None:
        return None
    remaining = None if drain.remaining_ms is None else round(drain.remaining_ms / 1000)
    return {
        "reason": drain.reason,
        "by": drain.by,  # the caller's claim, recorded as sent
        "signed_with": drain.key,  # "operator" (None: recorded before the operator key)
        "remaining_seconds": remaining,
    }


def _shared(failing: int, live: int, threshold: float) -> bool:
    return failing >= MIN_SHARED_FAILING and failing / live >= threshold


def _targets(instances: Sequence[str], *, every: bool, yes: bool) -> list[str] | None:
    if every and instances:
        raise UsageError("--all and --instance: one or the other")
    if every and not yes:
        raise UsageError("--all: applies to every live instance; add --yes to confirm")
    if not every and not instances:
        raise UsageError("--instance: name at least one instance (or --all --yes)")
    for name in instances:
        if not 1 <= len(name) <= INSTANCE:
            raise UsageError(f"--instance: names are 1 to {INSTANCE} characters")
    return None if every else sorted(set(instances))


def _usage(exc: Exception) -> int:
    print(f"health-sidecar: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _run(settings: Settings, call: Callable[[HealthStore], Awaitable[T]]) -> T | int:
    """Run one signed call with the daemon's settings and the operator key; an exit status
    when it failed."""
    operator = os.environ.get(OPERATOR_ENV, "")
    if not operator:
        return _usage(
            UsageError(
                f"{OPERATOR_ENV} is not set: fleet, drain and undrain are signed with the "
                "operator key (the deployment's HEALTH_SIDECAR_OPERATOR_SECRET, never given "
                "to a sidecar)"
            )
        )

    async def run() -> T:
        async with aiohttp.ClientSession(
            headers={"User-Agent": f"health-sidecar/{__version__}"}
        ) as session:
            client = ConvexClient(session, url=settings.convex_url, timeout=settings.store_timeout)
            store = HealthStore(
                client,
                secret=settings.secret.get_secret_value(),
                operator_secret=operator,
                instance=CALLER,
                version=__version__,
                ttl_seconds=settings.ttl,
            )
            return await call(store)

    try:
        return asyncio.run(run())
    except ClockSkew as exc:
        print(f"health-sidecar: Convex: {exc}", file=sys.stderr)
        return EXIT_CLOCK_SKEW
    except FunctionError as exc:
        # The functions' own refusal of an argument (an unknown instance): nothing changed.
        status = EXIT_USAGE if exc.code == "invalid_argument" else EXIT_NOT_READY
        print(f"health-sidecar: {exc}", file=sys.stderr)
        return status
    except StoreError as exc:
        print(f"health-sidecar: Convex: {exc}", file=sys.stderr)
        return EXIT_NOT_READY
