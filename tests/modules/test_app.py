"""`build_app` in process, as the daemon wires it (settings, Metrics, Monitor, scheduler, store
sync, warm start), served by pytest-aiohttp's `aiohttp_client`: no subprocess, no stand-in.
The store's Convex URL is a loopback port nobody listens on."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import AliasChoices

from sidecar.app import build_app
from sidecar.config import Settings

ClientFactory = Callable[[web.Application], Coroutine[Any, Any, TestClient[Any, Any]]]
SECRET = "test-secret-0123456789"


def closed_port() -> int:
    """A loopback port that refuses connections (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from explicit values only: no setting of the caller's environment leaks in."""
    names = {"SIDECAR_CONFIG", "HOSTNAME"}
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(choice).upper() for choice in field.validation_alias.choices)
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    return Settings(
        CONVEX_URL=f"http://127.0.0.1:{closed_port()}",
        HEALTH_SIDECAR_SECRET=SECRET,
        SIDECAR_INSTANCE="in-process-1",
        SIDECAR_STORE_TIMEOUT=0.5,
    )


async def get_json(client: TestClient[Any, Any], path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status, json.loads(await resp.read())


async def test_wired_app_serves_every_endpoint(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """The wired app is live at once; its convex check (the store's deployment, down) fails
    within its first round, so /ready and /health answer 503 naming it; the store's refused
    sync shows in /health's store service and in /metrics, which the same app serves."""
    client = await aiohttp_client(build_app(settings))
    assert (await client.get("/live")).status == 200
    async with asyncio.timeout(5):
        while True:
            status, body = await get_json(client, "/health")
            if body["services"]["convex"] == "error":
                break
            await asyncio.sleep(0.02)
    assert status == 503
    assert body["status"] == "error"
    assert body["services"]["store"] == "error"
    status, ready = await get_json(client, "/ready")
    assert status == 503
    assert ready["ready"] is False
    assert any("convex" in reason for reason in ready["reasons"])
    status, live = await get_json(client, "/live")
    assert (status, live) == (200, {"live": True})
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert 'sidecar_check_up{check="convex"} 0.0' in text
    assert "sidecar_ready 0.0" in text
    assert "sidecar_live 1.0" in text
    assert 'sidecar_store_requests_total{op="sync",result="unavailable"}' in text
    assert 'sidecar_store_requests_total{op="sync",result="unavailable"} 0.0' not in text
