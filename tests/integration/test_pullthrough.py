"""The pull-through cache against real upstreams on loopback: a second instance of this registry, and CNCF
Distribution (Debian's docker-registry) open and with htpasswd auth; real clients (crane, skopeo) pull
through it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.client import ClientOptions, Credentials, OciClient, RegistryOptions, RemoteRepository
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.settings import AuthSettings, Settings
from services.distribution.cache.records import CACHE
from services.distribution.keys import PULLTHROUGH
from tests.conftest import infra
from tests.integration.conftest import ASSEMBLIES, Assembly, distributed_settings, embedded_settings, running
from tests.integration.test_oci_client import (
    Image,
    bcrypt_hash,
    distribution,
    free_port,
    make_image,
    push_image,
    read_all,
)

pytestmark = pytest.mark.timeout(600)


def address(a: Assembly) -> str:
    return f"{a.client.host}:{a.client.port}"


def proxy(remotes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"remotes": remotes, "default_remote": remotes[0]["name"], **extra}


@contextlib.asynccontextmanager
async def cache_registry(kind: str, tmp: Path, remotes: list[dict[str, Any]], *, auth: bool = False,
                         **extra: Any) -> AsyncIterator[Assembly]:
    tmp.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:10]
    overrides: dict[str, Any] = {"proxy": proxy(remotes, **extra)}
    settings: Settings = (embedded_settings(tmp, **overrides) if kind == "embedded"
                          else distributed_settings(tmp, run_id, **overrides))
    if auth:
        settings = settings.model_copy(update={"auth": AuthSettings(
            mode="token", bootstrap_admin_key=SecretStr(generate_key().key))})
    async with running(settings, kind) as a:
        try:
            yield a
        finally:
            if kind != "embedded":
                await a.c.docs.drop_collection(CACHE)
                await a.c.docs.drop_collection("proxy_remotes")
                if auth:
                    from services.core.auth.store import AuthStore

                    await AuthStore(a.c.docs).drop_all()


@contextlib.asynccontextmanager
async def upstream_registry(tmp: Path) -> AsyncIterator[Assembly]:
    """A second instance of this registry (embedded, open) as an upstream."""
    tmp.mkdir(parents=True, exist_ok=True)
    async with running(embedded_settings(tmp, proxy={"enabled": False}), "embedded") as a:
        yield a


def remote(name: str, registry: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://{registry}", **extra}


async def pull_image(client: OciClient, repo: RemoteRepository, ref: str) -> tuple[bytes, list[bytes]]:
    manifest = await client.get_manifest(repo, ref)
    doc = manifest.json()
    blobs = [doc["config"], *doc["layers"]]
    data = [await read_all(client.pull_blob(repo, Digest.parse(b["digest"]), size=b["size"])) for b in blobs]
    return manifest.content, data


def metric(a: Assembly, name: str, **labels: str) -> float:
    total = 0.0
    for family in a.c.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ------------------------------------------------------------------------------------------ our registry


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_pull_through_our_registry(kind: str, tmp_path: Path) -> None:
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry(kind, tmp_path / "cache", [remote("up", address(up))]) as cache, \
            OciClient() as client:
        image = make_image(layer_sizes=(3000, 300_000))
        await push_image(client, RemoteRepository(address(up), "team/app"), image, tag="v1")  # type: ignore[arg-type]
        cached = RemoteRepository(address(cache), "cache/up/team/app")  # type: ignore[arg-type]
        manifest, blobs = await pull_image(client, cached, "v1")
        assert manifest == image.manifest
        assert blobs == [image.config, *image.layers]
        assert metric(cache, "hanzo_registry_cache_requests_total", kind="manifest", result="miss") == 1
        assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="miss") == 3
        # Again: from the cache, byte for byte.
        assert await pull_image(client, cached, "v1") == (manifest, blobs)
        assert await pull_image(client, cached, str(image.digest)) == (manifest, blobs)
        assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="hit") == 6
        assert metric(cache, "hanzo_registry_cache_bytes_total", source="upstream") >= sum(map(len, blobs))
        # Listings answer from the cache; pushes are refused.
        assert [t async for t in client.list_tags(cached)] == ["v1"]
        assert "cache/up/team/app" in [r async for r in client.catalog(address(cache))]
        resp = await cache.client.put(f"/v2/cache/up/team/app/manifests/v2", data=image.manifest,
                                      headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 405 and (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"
        resp = await cache.client.post("/v2/cache/up/team/app/blobs/uploads/")
        assert resp.status == 405
        # Content unknown upstream: 404, not 500.
        resp = await cache.client.get("/v2/cache/up/team/app/manifests/nope")
        assert resp.status == 404
        resp = await cache.client.get(f"/v2/cache/up/team/app/blobs/{Digest.of(b'nope')}")
        assert resp.status == 404
        resp = await cache.client.get("/v2/cache/nosuchremote-x/manifests/v1")
        assert resp.status == 404
