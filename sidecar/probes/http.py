"""http: any URL, with a method, the expected statuses and an optional body regex."""

from __future__ import annotations

import re

import aiohttp

from sidecar.checks import HttpCheck
from sidecar.probes.common import Outcome, fetch, guarded
from sidecar.result import CheckResult


async def probe(session: aiohttp.ClientSession, check: HttpCheck) -> CheckResult:
    """Pass when the status is expected (default any 2xx) and the body matches the regex."""
    return await guarded(check.limit, _request(session, check))


async def _request(session: aiohttp.ClientSession, check: HttpCheck) -> Outcome:
    resp = await fetch(session, check.method, check.target, headers=check.headers)
    expected = check.expect_status or range(200, 300)
    if resp.status not in expected:
        return "fail", f"HTTP {resp.status}"
    if check.body_regex is not None and not re.search(check.body_regex, resp.text):
        return "fail", f"body does not match {check.body_regex!r}"
    return "pass", f"HTTP {resp.status}"
