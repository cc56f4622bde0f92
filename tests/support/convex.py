"""What dev/convex-local holds and counted, through its dev-only routes (no real deployment
serves `/_dev/`)."""

from __future__ import annotations

from typing import Any

import aiohttp


async def documents(url: str, table: str) -> list[dict[str, Any]]:
    """Every document of `table` in the stand-in at `url`."""
    return list(await _get_json(f"{url}/_dev/tables/{table}"))


async def instance_results(url: str, instance: str) -> list[dict[str, Any]]:
    """The stored results of one instance, sorted by check."""
    rows = [r for r in await documents(url, "sidecarResults") if r["instance"] == instance]
    return sorted(rows, key=lambda r: str(r["check"]))


async def stats(url: str) -> dict[str, dict[str, float]]:
    """Calls, documents and bytes read and written, by function path, since the last reset."""
    body = await _get_json(f"{url}/_dev/stats")
    functions: dict[str, dict[str, float]] = body["functions"]
    return functions


async def reset_stats(url: str) -> None:
    """Start counting from zero."""
    async with aiohttp.ClientSession() as session, session.post(f"{url}/_dev/stats/reset") as r:
        r.raise_for_status()


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def sync_sockets(url: str) -> int:
    """How many sync-protocol sockets the stand-in at `url` has open."""
    body = await _get_json(f"{url}/_dev/sync")
    return int(body["sockets"])


async def sync_fault(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /_dev/sync/<route>` (`drop`, `silence`, `send`): a fault of the sync protocol."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/_dev/sync/{route}", json=body) as resp,
    ):
        resp.raise_for_status()
        answer: dict[str, Any] = await resp.json()
        return answer
