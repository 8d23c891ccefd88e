"""The SSRF guard: which addresses each trust level may reach, URL syntax, DNS, redirects, rebinding."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.core.ssrf import (
    GuardedResolver,
    Trust,
    UrlPolicy,
    UrlRefusedError,
    check_url,
    check_url_syntax,
    guarded_request,
    refusal,
)

UNTRUSTED = UrlPolicy(Trust.UNTRUSTED)
PRIVATE_OK = UrlPolicy(Trust.UNTRUSTED, allow_private=True)
TRUSTED = UrlPolicy(Trust.TRUSTED)


@pytest.mark.parametrize(("address", "untrusted", "private_ok", "trusted"), [
    ("8.8.8.8", None, None, None),
    ("2606:4700:4700::1111", None, None, None),
    ("127.0.0.1", "loopback", None, None),
    ("::1", "loopback", None, None),
    ("10.1.2.3", "private", None, None),
    ("172.16.0.1", "private", None, None),
    ("192.168.1.1", "private", None, None),
    ("100.64.0.1", "private", None, None),  # carrier-grade NAT
    ("fd12:3456::1", "private", None, None),
    ("::ffff:127.0.0.1", "loopback", None, None),  # IPv4 in IPv6 is judged as IPv4
    ("169.254.169.254", "metadata", "metadata", "metadata"),
    ("169.254.170.2", "metadata", "metadata", "metadata"),
    ("fd00:ec2::254", "metadata", "metadata", "metadata"),
    ("169.254.1.1", "link-local", "link-local", "link-local"),
    ("fe80::1", "link-local", "link-local", "link-local"),
    ("::ffff:169.254.169.254", "metadata", "metadata", "metadata"),
    ("0.0.0.0", "unicast", "unicast", "unicast"),
    ("224.0.0.1", "unicast", "unicast", "unicast"),
])
def test_who_may_reach_what(address: str, untrusted: str | None, private_ok: str | None, trusted: str | None) -> None:
    ip = ipaddress.ip_address(address)
    for policy, expected in ((UNTRUSTED, untrusted), (PRIVATE_OK, private_ok), (TRUSTED, trusted)):
        reason = refusal(ip, policy)
        if expected is None:
            assert reason is None, (address, policy)
        else:
            assert reason is not None and expected in reason, (address, policy, reason)


@pytest.mark.parametrize(("url", "fragment"), [
    ("ftp://example.com/x", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata host"),
    ("http://169.254.169.254/latest/meta-data/", "metadata address"),
    ("http://[::1]:8080/", "loopback"),
    ("http:///nohost", "no host"),
    ("http://example.com:99999/", "port"),
])
def test_bad_urls_are_refused_before_any_lookup(url: str, fragment: str) -> None:
    with pytest.raises(UrlRefusedError, match=fragment):
        check_url_syntax(url, UNTRUSTED)


async def test_names_are_checked_after_resolution() -> None:
    with pytest.raises(UrlRefusedError, match=r"localhost resolves to .*loopback"):
        await check_url("http://localhost:5000/hook", UNTRUSTED)
    assert await check_url("http://localhost:5000/hook", PRIVATE_OK)
    assert await check_url("http://localhost:5000/hook", TRUSTED)
    with pytest.raises(UrlRefusedError, match="does not resolve"):
        await check_url("http://no-such-host.invalid/", TRUSTED)


async def test_redirects_are_checked_hop_by_hop() -> None:
    async def to_metadata(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/")

    async def to_ok(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    app = web.Application()
    app.router.add_get("/bad", to_metadata)
    app.router.add_get("/good", to_ok)
    app.router.add_get("/ok", ok)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(UrlRefusedError, match="metadata"):
            await guarded_request(session, "GET", f"{base}/bad", policy=TRUSTED)
        response = await guarded_request(session, "GET", f"{base}/good", policy=TRUSTED)
        assert response.status == 200 and await response.text() == "fine"
        response.release()
        with pytest.raises(UrlRefusedError, match="loopback"):
            await guarded_request(session, "GET", f"{base}/good", policy=UNTRUSTED)


async def test_the_resolver_connects_only_to_checked_addresses() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    app = web.Application()
    app.router.add_get("/", ok)
    async with TestServer(app) as server:
        for policy, allowed in ((UNTRUSTED, False), (TRUSTED, True)):
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy))
            async with aiohttp.ClientSession(connector=connector) as session:
                if allowed:
                    async with session.get(f"http://localhost:{server.port}/") as response:
                        assert await response.text() == "fine"
                else:
                    with pytest.raises((UrlRefusedError, aiohttp.ClientConnectorError)):
                        await session.get(f"http://localhost:{server.port}/")
