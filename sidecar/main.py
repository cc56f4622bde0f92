"""The `health-sidecar` command line: `run`, `check`, `config`, `fleet`, `drain` and `undrain`."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from collections.abc import Sequence

from sidecar import __version__

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status. A closed
    stdout (`health-sidecar config | head -1`) ends any command quietly with 0."""
    standard_descriptors()
    try:
        try:
            return command(argv)
        finally:
            # Written out here, inside the `try`, not at exit where the error is only printed.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe: whatever is still buffered goes to /dev/null at exit, unprinted.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def standard_descriptors() -> None:
    """Open /dev/null on any of descriptors 0, 1 and 2 the process started without (`>&-`):
    otherwise the first socket takes that number, and uvloop aborts the process when it closes
    it. Python has already made sys.stdout None for a closed stdout: logs then count every line
    as dropped."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def command(argv: Sequence[str] | None = None) -> int:
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
    fleet = commands.add_parser(
        "fleet", help="every live instance as Convex sees it; exit 0 when all are ready"
    )
    fleet.add_argument("--json", action="store_true", help="JSON for scripts")
    for name, what in (("drain", "take instances out of the pool"), ("undrain", "undo a drain")):
        cmd = commands.add_parser(name, help=f"{what}, through Convex (audited)")
        required = cmd.add_argument_group("required arguments")
        targets = required.add_mutually_exclusive_group(required=True)
        targets.add_argument(
            "--instance", action="append", default=[], help="an instance's name (repeatable)"
        )
        targets.add_argument("--all", action="store_true", help="every live instance (with --yes)")
        if name == "drain":
            required.add_argument(
                "--reason", required=True, help="why (shows in /ready and the audit trail)"
            )
        cmd.add_argument("--yes", action="store_true", help="confirm --all")
        if name == "drain":
            cmd.add_argument(
                "--for",
                dest="duration",
                help="how long, with a unit: 90s, 15m, 2h, 1d (at most 30d)",
            )
        cmd.add_argument(
            "--timeout",
            help="how long to wait for the instances to take it, with a unit (default 10s)",
        )
        cmd.add_argument("--no-wait", action="store_true", help="return at once, without waiting")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check_command(ready=args.ready, port=args.port, timeout=args.timeout)
    # A signal before the daemon listens is remembered, not fatal: the daemon then drains as
    # for any other (installed first, before the imports and the settings take their time).
    early: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _: early.append(received))
    # Start-up builds a few hundred thousand objects that live as long as the process (modules,
    # models, the registry): collecting while they are being built is wasted work (about 35 ms
    # of the start, most of it one full collection). The daemon freezes them out of the
    # collector's way and turns it back on once it listens.
    gc.disable()
    # Imported here, not at the top: `check` (Docker's HEALTHCHECK, every few seconds) needs
    # none of it, and `run` reaches its listening socket sooner the less it imports.
    from sidecar.config import effective, load_settings
    from sidecar.config_errors import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"health-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        print(json.dumps(effective(settings), indent=2))
        return 0
    if args.command in ("fleet", "drain", "undrain"):
        from sidecar import fleetcli

        if args.command == "fleet":
            return fleetcli.fleet(settings, as_json=args.json)
        return fleetcli.drain(
            settings,
            undo=args.command == "undrain",
            instances=args.instance,
            every=args.all,
            yes=args.yes,
            reason=getattr(args, "reason", None),
            duration=getattr(args, "duration", None),
            timeout=fleetcli.DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
            wait=not args.no_wait,
        )
    from sidecar import daemon, logs

    logs.configure(level=settings.log_level, instance=settings.instance)
    try:
        return daemon.run(settings, early_signals=early)
    finally:
        # Bounded: a writer stuck on a stdout nobody reads is left behind, not waited for.
        logs.shutdown()


def check_command(*, ready: bool, port: int | None, timeout: float) -> int:
    """Docker's HEALTHCHECK without curl: liveness by default, which follows no dependency."""
    import urllib.error
    import urllib.request

    port = port or int(os.environ.get("SIDECAR_PORT") or 8099)
    url = f"http://127.0.0.1:{port}/{'ready' if ready else 'live'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"health-sidecar check: {url}: {exc}", file=sys.stderr)
        return 1
