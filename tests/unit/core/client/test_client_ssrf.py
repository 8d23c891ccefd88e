"""The OCI client under a URL policy: registries, token realms and redirects pass the SSRF guard."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.core.client.errors import OciConnectionError
from services.core.client.oci import OciClient
from services.core.client.reference import RemoteRepository
from services.core.client.transport import ClientOptions, RegistryOptions
from services.core.ssrf import Trust, UrlPolicy


async def _serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_a_realm_on_a_metadata_address_is_never_fetched() -> None:
    async def challenge(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={
            "WWW-Authenticate": 'Bearer realm="http://169.254.169.254/latest/meta-data/",service="x"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", challenge)
    server = await _serve(app)
    try:
        registry = f"127.0.0.1:{server.port}"
        options = ClientOptions(registries={registry: RegistryOptions(plain_http=True)},
                                url_policy=UrlPolicy(Trust.TRUSTED))
        async with OciClient(options) as client:
            with pytest.raises(OciConnectionError, match="metadata"):
                [t async for t in client.list_tags(RemoteRepository(registry, "team/app"))]  # type: ignore[arg-type]
    finally:
        await server.close()


async def test_untrusted_urls_may_not_reach_loopback() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"name": "team/app", "tags": []})

    app = web.Application()
    app.router.add_get("/v2/team/app/tags/list", ok)
    server = await _serve(app)
    try:
        registry = f"localhost:{server.port}"
        for policy, allowed in ((UrlPolicy(Trust.TRUSTED), True), (UrlPolicy(Trust.UNTRUSTED), False)):
            options = ClientOptions(registries={registry: RegistryOptions(plain_http=True)}, url_policy=policy)
            async with OciClient(options) as client:
                if allowed:
                    assert [t async for t in client.list_tags(RemoteRepository(registry, "team/app"))] == []  # type: ignore[arg-type]
                else:
                    with pytest.raises(OciConnectionError):
                        [t async for t in client.list_tags(RemoteRepository(registry, "team/app"))]  # type: ignore[arg-type]
    finally:
        await server.close()
