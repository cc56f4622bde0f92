"""Secrets that come back inside error texts: a Convex error message that quotes the arguments
it got (the secret among them), and a malformed request that carries the details token. The
daemon must not pass either on to its logs or its pages."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import faults, rawhttp
from tests.support.daemon import start_daemon
from tests.support.leaks import find, make_secret

ECHOED_SECRET = make_secret("echo")
TOKEN = make_secret("mtok")


def convex_quote(args: dict[str, Any]) -> str:
    """An object as Convex's validator errors print it: `{key: value, ...}`."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in sorted(args.items())) + "}"


@pytest.fixture
async def quoting_convex() -> AsyncIterator[str]:
    """A Convex deployment whose functions are another version than the sidecar expects (an
    upgrade in progress): `/version` answers, every function call fails argument validation,
    and the message quotes the arguments received, as Convex does, e.g.
    `ArgumentValidationError: Object contains extra field `instance` that is not in the
    validator.\\n\\nObject: {instance: "...", now: ..., secret: "..."}\\nValidator: ...`."""

    async def version(_: web.Request) -> web.Response:
        return web.Response(text="1.31.0")

    async def function(request: web.Request) -> web.Response:
        body = await request.json()
        args = body.get("args", {})
        args = args[0] if isinstance(args, list) and args else args
        message = (
            "[Request ID: 8c0ffee] Server Error\nArgumentValidationError: Object contains extra "
            "field `instance` that is not in the validator.\n\n"
            f"Object: {convex_quote(args)}\n"
            "Validator: v.object({now: v.float64(), secret: v.string()})"
        )
        return web.json_response({"status": "error", "errorMessage": message, "errorData": None})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_post("/api/{kind}", function)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_store_error_quoting_the_arguments_never_reveals_the_secret(
    quoting_convex: str, tmp_path: Path
) -> None:
    """Convex answers every store call with a validation error that quotes its arguments (the
    secret is one of them). The store turns `error` (visible in `/health?verbose`), and yet the
    secret appears in no log line and in no form of `/health`, `/ready` or `/metrics`."""
    env = {
        "CONVEX_URL": quoting_convex,
        "HEALTH_SIDECAR_SECRET": ECHOED_SECRET,
        "SIDECAR_INSTANCE": "secrets-echo",
        "SIDECAR_INTERVAL": "0.5",
        "SIDECAR_TIMEOUT": "0.4",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    daemon = await asyncio.to_thread(start_daemon, env, tmp_path / "daemon.log")
    collected: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                async with session.get(daemon.url + "/health?verbose") as resp:
                    doc = json.loads(await resp.read())
                if doc["store"]["status"] == "error" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert doc["store"]["status"] == "error", doc
            for path, headers in [
                ("/health?verbose", {}),
                ("/health?verbose", {"Accept": "application/health+json"}),
                ("/health", {}),
                ("/ready", {}),
                ("/metrics", {}),
            ]:
                async with session.get(daemon.url + path, headers=headers) as resp:
                    collected[f"{path} {sorted(headers)}"] = await resp.text()
        daemon.popen.send_signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.popen.wait, 15)
    finally:
        daemon.stop()
        collected["daemon log"] = daemon.output()
    assert "store failing" in collected["daemon log"]
    leaks = find(collected, ECHOED_SECRET)
    assert not leaks, "found in:\n" + "\n".join(leaks)


def test_malformed_request_carrying_the_token_is_never_logged(tmp_path: Path) -> None:
    """Requests from loopback that carry the details token and are malformed - the
    Authorization line too long, a control byte after the token, the token in a query with a
    control byte, a well-formed Authorization line followed by a broken header - each get a 400,
    and the token appears nowhere in the daemon's output."""
    env = {
        "CONVEX_URL": faults.refused_url(),
        "HEALTH_SIDECAR_SECRET": make_secret("unused"),
        "SIDECAR_DETAILS_TOKEN": TOKEN,
        "SIDECAR_INSTANCE": "secrets-malformed",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    daemon = start_daemon(env, tmp_path / "daemon.log")
    host, port = "127.0.0.1", int(daemon.url.rpartition(":")[2])
    head = "GET /health?verbose HTTP/1.1\r\nHost: sidecar\r\n"
    malformed = {
        "long authorization": f"{head}Authorization: Bearer {TOKEN} {'x' * 9000}\r\n\r\n",
        "control byte": f"{head}Authorization: Bearer {TOKEN}\x01\r\n\r\n",
        "query": f"GET /health?verbose&token={TOKEN}\x01 HTTP/1.1\r\nHost: sidecar\r\n\r\n",
        "another header": f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-A: \x01\r\n\r\n",
    }
    try:
        for name, data in malformed.items():
            answer = rawhttp.exchange(host, port, data.encode("latin-1"))
            assert answer.statuses == [400], (name, answer.statuses)
        assert rawhttp.get(host, port, "/live").status == 200
    finally:
        daemon.stop()
    leaks = find({"daemon log": daemon.output()}, TOKEN)
    assert not leaks, "found in:\n" + "\n".join(leaks)
