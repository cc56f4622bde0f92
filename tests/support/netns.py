"""A network namespace of the test's own, joined to this one by a veth pair on a 10.200.x.y/30
that exists only on this machine: a peer address outside loopback for the endpoint tests.

Needs root (`ip netns add`); `available()` says why not when it cannot be done here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Namespace:
    """A namespace `name`; `host_ip` is this side of the veth pair, `peer_ip` the inside."""

    name: str
    host_ip: str
    peer_ip: str

    def run(
        self, argv: Sequence[str], *, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)


def available() -> str | None:
    """None when a namespace can be made here, else the reason it cannot."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    probe = f"sbiprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """Make the namespace and the veth pair; remove both afterwards, whatever happened."""
    tag = os.getpid() % 100000
    name, host_if, peer_if = f"sbi{tag}", f"sbih{tag}", f"sbin{tag}"
    third = tag % 250 + 1
    made_ns = made_link = False
    try:
        for attempt in range(8):
            fourth = ((tag // 250 + attempt) % 63) * 4
            host_ip, peer_ip = f"10.200.{third}.{fourth + 1}", f"10.200.{third}.{fourth + 2}"
            if _ip("-o", "addr", "show", "to", f"10.200.{third}.{fourth}/30").stdout.strip():
                continue  # taken (another run of these tests?)
            break
        else:
            raise RuntimeError("no free 10.200.x.y/30 found")
        _check(_ip("netns", "add", name))
        made_ns = True
        _check(_ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if))
        made_link = True
        _check(_ip("link", "set", peer_if, "netns", name))
        _check(_ip("addr", "add", f"{host_ip}/30", "dev", host_if))
        _check(_ip("link", "set", host_if, "up"))
        ns = Namespace(name=name, host_ip=host_ip, peer_ip=peer_ip)
        for args in (
            ["ip", "addr", "add", f"{peer_ip}/30", "dev", peer_if],
            ["ip", "link", "set", peer_if, "up"],
            ["ip", "link", "set", "lo", "up"],
        ):
            _check(ns.run(args))
        yield ns
    finally:
        if made_link:
            _ip("link", "del", host_if)  # removes both ends
        if made_ns:
            _ip("netns", "del", name)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{done.args}: {done.stderr.strip()}")


def gone(ns: Namespace) -> bool:
    """True when the namespace and its veth pair no longer exist."""
    names = _ip("netns", "list").stdout.split()
    link = _ip("-o", "link", "show").stdout
    tag = ns.name.removeprefix("sbi")
    return ns.name not in names and f"sbih{tag}" not in link
