"""The one gate every outbound URL goes through (webhooks, replication targets, pull-through upstreams,
vulnerability database sources, the OIDC issuer): which addresses a URL may reach.

Two levels of trust:
- `UNTRUSTED`: URLs that users below registry admin can set (namespace webhooks). Refused when the host
  resolves to a loopback, private, link-local, unique-local, multicast, reserved or cloud-metadata address,
  unless the operator allows private targets (`webhooks.allow_private_targets`, for tests and closed
  networks).
- `TRUSTED`: URLs of registry admins and of the settings file. They may reach private and loopback
  addresses (an upstream on the cluster network), but never link-local or metadata addresses, which is
  where cloud credentials live.

The check runs after DNS resolution on every address the name resolves to, and again on each redirect.
`GuardedResolver` makes aiohttp connect only to addresses that passed, so a name cannot resolve to a
public address for the check and to a private one for the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})


class Trust(StrEnum):
    UNTRUSTED = "untrusted"
    TRUSTED = "trusted"


class UrlRefusedError(ValueError):
    """The URL may not be fetched; the message says why, for the person who set it."""


class AddressRefusedError(OSError):
    """The resolver's refusal: an OSError, so that aiohttp reports it as a connection error to its caller."""


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    trust: Trust
    allow_private: bool = False
    """UNTRUSTED only: also allow loopback and private addresses (never link-local or metadata)."""


def _plain(address: Address) -> Address:
    """An IPv4 address carried in IPv6 (::ffff:a.b.c.d, 6to4 and friends) is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def refusal(address: Address, policy: UrlPolicy) -> str | None:
    """Why `address` may not be reached under `policy` (None: it may). Pure."""
    ip = _plain(address)
    if ip in METADATA_ADDRESSES or address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_unspecified or ip.is_multicast or (ip.is_reserved and not ip.is_private):
        return f"{address} is not a unicast address"
    if policy.trust is Trust.TRUSTED or policy.allow_private:
        return None
    if ip.is_loopback:
        return f"{address} is a loopback address"
    if ip.is_private or not ip.is_global:
        return f"{address} is a private address"
    return None


def check_url_syntax(url: str, policy: UrlPolicy) -> tuple[str, int]:
    """(host, port) of an http(s) URL, refusing other schemes, credentials in the URL and metadata names."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefusedError(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise UrlRefusedError("the URL has no host")
    if parts.username or parts.password:
        raise UrlRefusedError("credentials do not belong in the URL")
    host = parts.hostname.rstrip(".").lower()
    if host in METADATA_HOSTS:
        raise UrlRefusedError(f"{host} is a cloud metadata host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefusedError("the URL's port is invalid") from None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return host, port
    reason = refusal(literal, policy)
    if reason is not None:
        raise UrlRefusedError(f"{url[:200]} is refused: {reason}")
    return host, port


async def _resolve(host: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefusedError(f"{host} does not resolve: {exc.strerror}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_url(url: str, policy: UrlPolicy) -> list[Address]:
    """Refuse `url` (UrlRefusedError) unless every address its host resolves to may be reached; returns
    them. Call it again for each redirect's Location."""
    host, port = check_url_syntax(url, policy)
    addresses = await _resolve(host, port)
    for address in addresses:
        reason = refusal(address, policy)
        if reason is not None:
            raise UrlRefusedError(f"{url[:200]} is refused: {host} resolves to {reason}")
    return addresses


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that answers only addresses `policy` allows: use it in the connector of every
    session that fetches outbound URLs (`aiohttp.TCPConnector(resolver=GuardedResolver(policy))`), so
    the address connected to is the one that was checked, redirects included."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(f"{host} does not resolve: {exc.strerror}") from None
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = refusal(address, self._policy)
            if reason is not None:
                raise AddressRefusedError(f"{host} resolves to {reason}")
            results.append(ResolveResult(hostname=host, host=str(sockaddr[0]), port=int(sockaddr[1]), family=fam,
                                         proto=proto, flags=socket.AI_NUMERICHOST))
        return results

    async def close(self) -> None:
        return None


def guarded_connector(policy: UrlPolicy, **kwargs: Any) -> Any:
    """An aiohttp TCPConnector whose every connection passes `policy`."""
    import aiohttp

    return aiohttp.TCPConnector(resolver=GuardedResolver(policy), **kwargs)


async def guarded_request(session: Any, method: str, url: str, *, policy: UrlPolicy, max_redirects: int = 10,
                          **kwargs: Any) -> Any:
    """`session.request` that checks `url` and every redirect's target under `policy` before following it
    (literal IP addresses never reach a resolver, so the resolver alone cannot stop them). Returns the final
    aiohttp response; the caller releases it. A redirect keeps the method only for 307/308, as browsers do."""
    from yarl import URL

    current = url
    for _ in range(max_redirects + 1):
        await check_url(current, policy)
        response = await session.request(method, current, allow_redirects=False, **kwargs)
        if response.status not in (301, 302, 303, 307, 308) or "Location" not in response.headers:
            return response
        target = str(URL(current).join(URL(response.headers["Location"])))
        response.release()
        if response.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in ("data", "json")}
        current = target
    raise UrlRefusedError(f"more than {max_redirects} redirects from {url[:200]}")
