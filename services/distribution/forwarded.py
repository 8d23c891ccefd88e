"""X-Forwarded-For/-Proto/-Host, believed only from the reverse proxies in `server.trusted_proxies`.

The middleware runs first and hands every later middleware and handler a request whose `remote`, `scheme`
and `host` are the client's as the trusted proxy saw them, so rate limits, the audit log, the token realm and
`Location` headers need no knowledge of proxies. From any other peer the headers are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from services.distribution.middleware import Handler

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A Host header value: a name or an IPv4 address, or an IPv6 address in brackets, with an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9.\-_]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, networks: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_address(peer: str | None, forwarded_for: Sequence[str], networks: Sequence[Network]) -> str | None:
    """The client's address: `peer` unless it is a trusted proxy; then, walking X-Forwarded-For from the right
    (the hop the trusted proxy itself added), the first address that is not a trusted proxy. None keeps `peer`
    (an untrusted peer, no header, or a malformed entry, which a proxy we trust would not have written)."""
    if not networks or not _trusted(_address(peer or ""), networks):
        return None
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    chosen: Address | None = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        chosen = address
        if not _trusted(address, networks):
            break
    return str(chosen) if chosen is not None else None


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


def forwarded_middleware(cidrs: Sequence[str]) -> Any:
    """The middleware for `server.trusted_proxies` (None when the list is empty: nothing to believe)."""
    networks = parse_networks(cidrs)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _trusted(_address(request.remote or ""), networks):
            return await handler(request)
        client = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), networks)
        scheme = _first(request.headers.get("X-Forwarded-Proto")).lower()
        host = _first(request.headers.get("X-Forwarded-Host"))
        cloned = request.clone(
            remote=client if client is not None else (request.remote or ""),
            scheme=scheme if scheme in ("http", "https") else request.scheme,
            host=host if host and _HOST.fullmatch(host) else request.host,
        )
        return await handler(cloned)

    return middleware
