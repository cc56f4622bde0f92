"""Who is asking (`client_address`), pure: a request with forwarding headers came through a
proxy, and only a proxy named as trusted is believed about the client behind it."""

from __future__ import annotations

import pytest

from sidecar.peers import client_address, parse_networks

LOCAL = parse_networks("127.0.0.1")
PROXIES = parse_networks("10.0.0.0/8, 127.0.0.1")


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "client"),
    [
        ("127.0.0.1", {}, (), "127.0.0.1"),  # no proxy: the peer itself
        ("203.0.113.9", {}, LOCAL, "203.0.113.9"),
        # A proxy on this host forwarding someone: not loopback unless it is trusted.
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, (), None),
        ("127.0.0.1", {"X-Real-IP": "127.0.0.1"}, (), None),
        ("127.0.0.1", {"Forwarded": "for=127.0.0.1"}, (), None),
        # Trusted: the nearest untrusted address, or the first when all are trusted.
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, LOCAL, "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, LOCAL, "127.0.0.1"),
        (
            "127.0.0.1",
            {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.1.2.3"},
            PROXIES,
            "203.0.113.9",
        ),
        ("127.0.0.1", {"X-Real-IP": "::1"}, LOCAL, "::1"),
        ("127.0.0.1", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, LOCAL, "2001:db8::1"),
        ("127.0.0.1", {"Forwarded": "for=127.0.0.1:80, for=10.0.0.2"}, PROXIES, "127.0.0.1"),
        # A client cannot prepend its way in: the nearest untrusted one counts.
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}, LOCAL, "203.0.113.9"),
        # Garbage forwarding headers tell nothing: unknown.
        ("127.0.0.1", {"X-Forwarded-For": "unknown"}, LOCAL, None),
        ("127.0.0.1", {"Forwarded": "by=10.0.0.1"}, LOCAL, None),
        ("203.0.113.9", {"X-Forwarded-For": "127.0.0.1"}, LOCAL, None),  # an untrusted peer
    ],
)
def test_client_address(
    peer: str, headers: dict[str, str], trusted: tuple[object, ...], client: str | None
) -> None:
    assert client_address(peer, headers, trusted) == client  # type: ignore[arg-type]


def test_parse_networks_names_a_bad_entry() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.1 ,fd00::/8,")] == ["10.0.0.1/32", "fd00::/8"]
    with pytest.raises(ValueError, match="'proxy' is not an IP address or network"):
        parse_networks("10.0.0.1, proxy")
