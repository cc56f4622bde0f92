"""Who is asking: the address `/health?verbose`'s loopback rule judges. A request that carries
forwarding headers came through a proxy, so the connection's peer says nothing about the
client; only a proxy the user named as trusted is believed about who the client is. And who
the other instances are: a Peer, as a sync answer names it, and the URLs one may have."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDING = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
MAX_PEER_URL = 500


@dataclass(frozen=True, slots=True)
class Peer:
    """Another live instance, and the base URL where its sidecar answers witness questions."""

    instance: str
    url: str


def peer_url(url: str) -> bool:
    """True for a URL a peer may be reached at: http(s) with a host, no credentials, query or
    fragment, printable ASCII, at most MAX_PEER_URL characters."""
    if not 0 < len(url) <= MAX_PEER_URL or not url.isascii() or not url.isprintable():
        return False
    if any(c in url for c in "@?# "):
        return False
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: the peer itself without forwarding headers; behind trusted
    proxies, the nearest address in X-Forwarded-For (or X-Real-IP, or Forwarded's `for=`)
    that is not one of them (the first one when all are); None when it cannot be told (an
    untrusted peer that forwards, or headers that do not parse)."""
    if not any(name in headers for name in FORWARDING):
        return peer
    if not _within(peer, trusted):
        return None
    addresses = _forwarded_for(headers)
    if not addresses or None in addresses:
        return None
    for address in reversed(addresses):
        if not _within(address, trusted):
            return address
    return addresses[0]


def parse_networks(text: str | Sequence[str]) -> tuple[Network, ...]:
    """`10.0.0.1, 10.1.0.0/16` (or a list of them) as networks; ValueError naming a bad one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _forwarded_for(headers: Mapping[str, str]) -> list[str | None]:
    """The addresses the proxies appended, nearest last (None for one that does not parse)."""
    if "X-Forwarded-For" in headers:
        return [_address(part) for part in headers["X-Forwarded-For"].split(",")]
    if "X-Real-IP" in headers:
        return [_address(headers["X-Real-IP"])]
    addresses: list[str | None] = []
    for element in headers.get("Forwarded", "").split(","):
        pairs = [p.strip().split("=", 1) for p in element.split(";") if "=" in p]
        found = [value for key, value in pairs if key.strip().lower() == "for"]
        addresses.append(_address(found[0]) if found else None)
    return addresses


def _address(text: str) -> str | None:
    """An IP address from `1.2.3.4`, `"[::1]:8080"` or `1.2.3.4:80`; None otherwise."""
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _within(address: str | None, networks: Sequence[Network]) -> bool:
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
