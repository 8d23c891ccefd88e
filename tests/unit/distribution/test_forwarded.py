"""X-Forwarded-* headers are believed from trusted proxies only; the client is the right-most untrusted hop."""

from __future__ import annotations

import pytest

from services.distribution.forwarded import client_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], None),  # an untrusted peer's header is ignored
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client may write anything on the left
        ("10.0.0.2", ["198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # a chain of trusted proxies
        ("10.0.0.2", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # repeated headers are one list
        ("10.0.0.2", ["10.0.0.7, 10.0.0.3"], "10.0.0.7"),  # every hop trusted: the left-most
        ("10.0.0.2", [], None),
        ("10.0.0.2", ["garbage"], None),
        ("10.0.0.2", ["198.51.100.1:4711"], "198.51.100.1"),
        ("::1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),  # an IPv4 peer on a dual-stack socket
        (None, ["198.51.100.1"], None),
    ],
)
def test_client_address(peer: str | None, header: list[str], expected: str | None) -> None:
    assert client_address(peer, header, PROXIES) == expected


def test_nothing_is_trusted_without_proxies() -> None:
    assert client_address("10.0.0.2", ["198.51.100.1"], ()) is None
