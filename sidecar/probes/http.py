"""http: any URL, with a method, the expected statuses and an optional body regex."""

from __future__ import annotations

import asyncio

import aiohttp
import regex

from sidecar.checks import HttpCheck
from sidecar.probes.common import Outcome, ProbeFailed, fetch, guarded
from sidecar.result import CheckResult


async def probe(session: aiohttp.ClientSession, check: HttpCheck) -> CheckResult:
    """Pass when the status is expected (default any 2xx) and the body matches the regex."""
    return await guarded(check.timeout, _request(session, check))


async def _request(session: aiohttp.ClientSession, check: HttpCheck) -> Outcome:
    resp = await fetch(session, check.method, check.target, headers=check.headers)
    expected = check.expect_status or range(200, 300)
    if resp.status not in expected:
        return "fail", f"HTTP {resp.status}"
    if check.body_regex is not None and not await _matches(check, resp.text):
        return "fail", f"body does not match {check.body_regex!r}"
    return "pass", f"HTTP {resp.status}"


async def _matches(check: HttpCheck, text: str) -> bool:
    """`body_regex` searched off the event loop, for at most half the check's timeout (the
    request had the rest): a pathological pattern can backtrack for hours over 64 KiB, and
    `regex` (unlike `re`) releases the GIL while it matches and stops at its timeout."""
    pattern = check.body_regex
    assert pattern is not None
    budget = check.timeout / 2

    def search() -> bool:
        return regex.search(pattern, text, timeout=budget, concurrent=True) is not None

    try:
        return await asyncio.to_thread(search)
    except TimeoutError:
        raise ProbeFailed(f"body_regex: no verdict within {budget:g}s") from None
