"""The pull-through cache against CNCF Distribution with Docker token auth (issue 15, item 8): the cache's OCI
client answers Distribution's Bearer challenge at a token server with the remote's credentials and pulls with
the JWT it gets; wrong credentials are a clear 502 naming the token endpoint's answer, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.core.client import ClientOptions, Credentials, OciClient, RegistryOptions, RemoteRepository
from services.core.client.errors import OciAuthenticationError, OciResponseError
from services.core.oci.digest import Digest
from tests.integration.conftest import ASSEMBLIES
from tests.integration.test_oci_client import make_image, push_image
from tests.integration.test_pullthrough import address, cache_registry, metric, pull_image, remote
from tests.integration.token_upstream import SERVICE, TokenServer, token_distribution, token_server

pytestmark = pytest.mark.timeout(300)

PULL, PUSH = frozenset({"pull"}), frozenset({"pull", "push"})
USERS = {
    "ci": ("push-secret", {"*": PUSH}),
    "puller": ("pull-secret", {"team/app": PULL}),
    "stranger": ("stranger-secret", {}),
}


def requests_by(tokens: TokenServer, user: str | None) -> list[dict[str, Any]]:
    return [r for r in tokens.requests if r["user"] == user]


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_pull_through_distribution_with_token_auth(kind: str, tmp_path: Path) -> None:
    async with token_server(USERS) as tokens, token_distribution(tmp_path / "dist", tokens) as dist:
        image = make_image(layer_sizes=(5000, 700_000))
        upstream = RemoteRepository(dist, "team/app")  # type: ignore[arg-type]
        # Pushed through the token server too: Distribution only takes what its rootcertbundle vouches for.
        ci = ClientOptions(registries={dist: RegistryOptions(credentials=Credentials("ci", "push-secret"))})
        async with OciClient(ci) as client:
            await push_image(client, upstream, image, tag="v1")
            assert client.tokens.fetched >= 1
        async with OciClient() as anonymous:  # the upstream really is closed without a token
            with pytest.raises((OciAuthenticationError, OciResponseError)):
                await anonymous.get_manifest(upstream, "v1")

        remotes = [remote("dist", dist, username="puller", password="pull-secret", ttl=0)]
        async with cache_registry(kind, tmp_path / "cache", remotes) as cache, OciClient() as client:
            cached = RemoteRepository(address(cache), "cache/dist/team/app")  # type: ignore[arg-type]
            assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])
            asked = requests_by(tokens, "puller")
            assert asked, tokens.requests
            assert all(r["service"] == SERVICE and r["account"] == "puller" for r in asked)
            assert {s for r in asked for s in r["scopes"]} == {"repository:team/app:pull"}  # it asks for pull only
            assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="miss") == 3

            # ttl 0: the tag is revalidated by a HEAD with the token, then everything comes from the cache.
            assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])
            assert await pull_image(client, cached, str(image.digest)) == (image.manifest,
                                                                           [image.config, *image.layers])
            assert metric(cache, "hanzo_registry_cache_requests_total", kind="manifest", result="hit") == 2
            assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="hit") == 6
            assert metric(cache, "hanzo_registry_cache_upstream_errors_total") == 0
            stored = [await cache.c.blobs.stat(Digest.of(b)) for b in (image.config, *image.layers)]
            assert all(info is not None for info in stored)


async def test_wrong_credentials_for_a_token_auth_upstream_are_a_clear_502(tmp_path: Path) -> None:
    async with token_server(USERS) as tokens, token_distribution(tmp_path / "dist", tokens) as dist:
        image = make_image()
        ci = ClientOptions(registries={dist: RegistryOptions(credentials=Credentials("ci", "push-secret"))})
        async with OciClient(ci) as client:
            await push_image(client, RemoteRepository(dist, "team/app"), image, tag="v1")  # type: ignore[arg-type]
        layer = Digest.of(image.layers[0])
        remotes = [
            remote("wrong", dist, username="puller", password="not-the-password"),
            remote("anon", dist),
            remote("stranger", dist, username="stranger", password="stranger-secret"),  # no grant on team/app
        ]
        async with cache_registry("embedded", tmp_path / "cache", remotes) as cache:
            for name in ("wrong", "anon"):
                for path in ("manifests/v1", f"blobs/{layer}"):
                    resp = await cache.client.get(f"/v2/cache/{name}/team/app/{path}")
                    assert resp.status == 502, (name, path, resp.status, await resp.text())
                    error = (await resp.json())["errors"][0]
                    assert error["code"] == "UNAVAILABLE"
                    # Names the upstream, the token endpoint and what it said.
                    assert f"upstream {name} ({dist})" in error["message"]
                    assert "token endpoint" in error["message"] and "401" in error["message"]
                    assert "wrong user name or password" in error["message"]
                    assert "not-the-password" not in error["message"]
            assert requests_by(tokens, None), "the token server was never asked"

            # Right password, no grant: the token holds no access and Distribution refuses it.
            resp = await cache.client.get("/v2/cache/stranger/team/app/manifests/v1")
            assert resp.status == 502, await resp.text()
            message = (await resp.json())["errors"][0]["message"]
            assert "upstream stranger" in message and "401" in message
            assert requests_by(tokens, "stranger")

            assert metric(cache, "hanzo_registry_cache_upstream_errors_total", reason="auth") == 5
            assert await cache.c.meta.manifest("cache/wrong/team/app", image.digest) is None
            assert await cache.c.blobs.stat(layer) is None
