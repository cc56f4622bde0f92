"""The `health-sidecar` command line: `run`, `check` and `config`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from sidecar import __version__, logs
from sidecar.config import ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="health-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=f"health-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the daemon (the default)")
    check = commands.add_parser(
        "check", help="exit 0 if a running daemon is live (or ready with --ready), else 1"
    )
    check.add_argument("--ready", action="store_true", help="ask /ready instead of /live")
    check.add_argument("--port", type=int, help="the daemon's port (default: SIDECAR_PORT or 8099)")
    check.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    commands.add_parser("config", help="print the effective settings, secrets masked")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check_command(ready=args.ready, port=args.port, timeout=args.timeout)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"health-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        print(json.dumps(effective(settings), indent=2))
        return 0
    logs.configure(level=settings.log_level, instance=settings.instance)
    from sidecar.daemon import serve

    return asyncio.run(serve(settings))


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, with the resolved checks and every secret masked."""
    doc = settings.model_dump(mode="json", exclude={"checks"})
    doc["checks"] = [c.model_dump(mode="json") for c in settings.resolved_checks()]
    return doc


def check_command(*, ready: bool, port: int | None, timeout: float) -> int:
    """Docker's HEALTHCHECK without curl: liveness by default, which follows no dependency."""
    port = port or int(os.environ.get("SIDECAR_PORT") or 8099)
    url = f"http://127.0.0.1:{port}/{'ready' if ready else 'live'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"health-sidecar check: {url}: {exc}", file=sys.stderr)
        return 1
