"""The pull-through cache against real upstreams on loopback: a second instance of this registry, and CNCF
Distribution (Debian's docker-registry) open and with htpasswd auth; real clients (crane, skopeo) pull
through it."""

from __future__ import annotations

import asyncio
import base64
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
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.client import ClientOptions, Credentials, OciClient, RegistryOptions, RemoteRepository
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.settings import AuthSettings, Settings
from services.distribution.cache.records import CACHE
from services.distribution.keys import PULLTHROUGH
from tests.conftest import infra
from tests.integration.conftest import ASSEMBLIES, Assembly, distributed_settings, embedded_settings, running
from tests.integration.test_oci_client import (
    Image,
    bcrypt_hash,
    distribution,
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
                         settings_overrides: dict[str, Any] | None = None, **extra: Any) -> AsyncIterator[Assembly]:
    tmp.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:10]
    overrides: dict[str, Any] = {"proxy": proxy(remotes, **extra), **(settings_overrides or {})}
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


def made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
        resp = await cache.client.put("/v2/cache/up/team/app/manifests/v2", data=image.manifest,
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
        # A request that found the blob uncached just before a fetch of it ended: it is served from storage,
        # not fetched again.
        service = cache.client.app[PULLTHROUGH]
        started = service.fetches.started
        layer = Digest.of(image.layers[1])
        racing = make_mocked_request("GET", f"/v2/cache/up/team/app/blobs/{layer}", app=cache.client.app)
        repo = RepositoryName.parse("cache/up/team/app")
        assert await service.serve_blob(racing, repo, layer, lambda n: None) is None
        assert service.fetches.started == started


async def tool(name: str, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(infra(name), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{name} {' '.join(args)}: {err.decode()[-2000:]}"
    return out


async def push_index(client: OciClient, repo: RemoteRepository, tag: str) -> tuple[bytes, list[Image]]:
    images = [make_image(arch) for arch in ("amd64", "arm64")]
    for image in images:
        await push_image(client, repo, image)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": str(i.digest), "size": len(i.manifest),
         "platform": {"architecture": arch, "os": "linux"}} for i, arch in zip(images, ("amd64", "arm64"), strict=True)
    ]}).encode()
    await client.push_manifest(repo, index, reference=tag, media_type=mt.OCI_INDEX)
    return index, images


async def test_real_clients_multi_arch_index_byte_exact(tmp_path: Path) -> None:
    """crane and skopeo pull an index and its platform images through the cache, byte for byte."""
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry("embedded", tmp_path / "cache", [remote("up", address(up))]) as cache, \
            OciClient() as client:
        index, images = await push_index(client, RemoteRepository(address(up), "team/multi"), "v1")  # type: ignore[arg-type]
        ref = f"{address(cache)}/cache/up/team/multi"
        assert await tool("HANZO_TOOL_CRANE", "manifest", "--insecure", f"{ref}:v1") == index
        for image in images:
            assert await tool("HANZO_TOOL_CRANE", "manifest", "--insecure", f"{ref}@{image.digest}") == image.manifest
            for blob in (image.config, *image.layers):
                assert await tool("HANZO_TOOL_CRANE", "blob", "--insecure", f"{ref}@{Digest.of(blob)}") == blob
        layout = tmp_path / "layout"
        await tool("HANZO_TOOL_SKOPEO", "copy", "--all", "--preserve-digests", "--src-tls-verify=false", f"docker://{ref}:v1",
                   f"oci:{layout}:v1")
        for image in images:
            for data in (image.manifest, image.config, *image.layers):
                assert (layout / "blobs" / "sha256" / Digest.of(data).hex).read_bytes() == data
        assert (layout / "blobs" / "sha256" / Digest.of(index).hex).read_bytes() == index


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_upstream_down_serves_cached_content_stale(kind: str, tmp_path: Path) -> None:
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry(kind, tmp_path / "cache", [remote("up", address(up), ttl=0)],
                           timeout_seconds=2) as cache, OciClient() as client:
        image = make_image()
        await push_image(client, RemoteRepository(address(up), "team/app"), image, tag="v1")  # type: ignore[arg-type]
        cached = RemoteRepository(address(cache), "cache/up/team/app")  # type: ignore[arg-type]
        first = await pull_image(client, cached, "v1")
        resp = await cache.client.get("/v2/cache/up/team/app/manifests/v1")
        assert resp.status == 200 and "Warning" not in resp.headers  # ttl 0: revalidated, still the same
        await up.client.close()  # the upstream goes away
        assert await pull_image(client, cached, "v1") == first
        resp = await cache.client.get("/v2/cache/up/team/app/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200 and resp.headers["Warning"] == '110 - "stale"'
        assert await resp.read() == image.manifest
        assert metric(cache, "hanzo_registry_cache_requests_total", result="stale") >= 2
        assert metric(cache, "hanzo_registry_cache_upstream_errors_total", remote="up", reason="unreachable") >= 2
        # Nothing cached: a clear 502 naming the upstream, never a 500.
        resp = await cache.client.get("/v2/cache/up/team/other/manifests/v1")
        assert resp.status == 502
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE" and "upstream up" in body["errors"][0]["message"]
        resp = await cache.client.get(f"/v2/cache/up/team/app/blobs/{Digest.of(b'not cached')}")
        assert resp.status == 502


async def test_moved_tag_is_refetched_after_the_ttl_not_before(tmp_path: Path) -> None:
    ttl = 2.0
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry("embedded", tmp_path / "cache", [remote("up", address(up), ttl=ttl)]) as cache, \
            OciClient() as client:
        upstream = RemoteRepository(address(up), "team/app")  # type: ignore[arg-type]
        cached = RemoteRepository(address(cache), "cache/up/team/app")  # type: ignore[arg-type]
        old, new = make_image(), make_image()
        await push_image(client, upstream, old, tag="v1")
        assert (await client.get_manifest(cached, "v1")).descriptor.digest == old.digest
        await push_image(client, upstream, new, tag="v1")  # the tag moves upstream
        assert (await client.get_manifest(cached, "v1")).descriptor.digest == old.digest  # within the ttl
        upstream_gets = metric(up, "hanzo_registry_http_requests_total", route="manifest", method="GET")
        await asyncio.sleep(ttl + 0.2)
        assert (await client.get_manifest(cached, "v1")).descriptor.digest == new.digest
        assert (await pull_image(client, cached, "v1"))[1] == [new.config, *new.layers]
        # Revalidation is a HEAD; the moved tag costs exactly one GET.
        assert metric(up, "hanzo_registry_http_requests_total", route="manifest", method="GET") == upstream_gets + 1
        assert metric(up, "hanzo_registry_http_requests_total", route="manifest", method="HEAD") >= 1
        await asyncio.sleep(ttl + 0.2)
        heads = metric(up, "hanzo_registry_http_requests_total", route="manifest", method="HEAD")
        assert (await client.get_manifest(cached, "v1")).descriptor.digest == new.digest  # unchanged: HEAD only
        assert metric(up, "hanzo_registry_http_requests_total", route="manifest", method="GET") == upstream_gets + 1
        assert metric(up, "hanzo_registry_http_requests_total", route="manifest", method="HEAD") == heads + 1


async def chunks(seed: bytes, count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield seed[i % 7 :] + seed[: i % 7]


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_concurrent_pulls_of_one_uncached_blob_fetch_once(kind: str, tmp_path: Path) -> None:
    mib = int(os.environ.get("HANZO_TEST_PULLTHROUGH_BLOB_MIB", "256"))
    seed = os.urandom(1 << 20)
    digester = hashlib_sha256()
    async for chunk in chunks(seed, mib):
        digester.update(chunk)
    digest = Digest.parse("sha256:" + digester.hexdigest())
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry(kind, tmp_path / "cache", [remote("up", address(up))]) as cache, \
            OciClient(ClientOptions(read_timeout=120)) as client:
        await client.push_blob(RemoteRepository(address(up), "team/big"), chunks(seed, mib), digest=digest,  # type: ignore[arg-type]
                               size=mib << 20)
        cached = RemoteRepository(address(cache), "cache/up/team/big")  # type: ignore[arg-type]
        before = metric(up, "hanzo_registry_http_requests_total", route="blob", method="GET")

        async def pull() -> str:
            h = hashlib_sha256()
            async for chunk in client.pull_blob(cached, digest, size=mib << 20):
                h.update(chunk)
            return h.hexdigest()  # type: ignore[no-any-return]

        results = await asyncio.gather(*(pull() for _ in range(16)))
        assert set(results) == {digest.hex}
        assert metric(up, "hanzo_registry_http_requests_total", route="blob", method="GET") == before + 1
        fetches = cache.client.app[PULLTHROUGH].fetches
        assert fetches.started == 1
        # One pull started the fetch (a miss); the others joined it or read what it stored: hits, never misses.
        assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="miss") == 1
        assert metric(cache, "hanzo_registry_cache_requests_total", kind="blob", result="hit") == 15
        await fetches.idle()  # a spooling fetch (S3) may still be storing what its clients already have
        assert (await cache.c.blobs.stat(digest)) is not None


def hashlib_sha256() -> Any:
    import hashlib

    return hashlib.sha256()


# ------------------------------------------------------------------------------------------ CNCF Distribution


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_distribution_upstream_open(kind: str, tmp_path: Path) -> None:
    async with distribution(made(tmp_path / "dist")) as dist, \
            cache_registry(kind, tmp_path / "cache", [remote("dist", dist, ttl=0)], timeout_seconds=2) as cache, \
            OciClient() as client:
        image = make_image(layer_sizes=(5000, 1_500_000))
        await push_image(client, RemoteRepository(dist, "team/app"), image, tag="v1")  # type: ignore[arg-type]
        # The default remote with a one-component path: Docker Hub's library/ convention.
        await push_image(client, RemoteRepository(dist, "library/alpine"), image, tag="3")  # type: ignore[arg-type]
        cached = RemoteRepository(address(cache), "cache/dist/team/app")  # type: ignore[arg-type]
        assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])
        short = RemoteRepository(address(cache), "cache/alpine")  # type: ignore[arg-type]
        assert (await pull_image(client, short, "3"))[0] == image.manifest
    # Distribution is gone: what was cached is still served.
    async with cache_registry(kind, tmp_path / "cache", [remote("dist", dist, ttl=0)], timeout_seconds=2) as cache, \
            OciClient() as client:
        if kind == "embedded":
            cached = RemoteRepository(address(cache), "cache/dist/team/app")  # type: ignore[arg-type]
            assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])


async def admin_call(a: Assembly, method: str, path: str, body: Any = None, *, user: str = "admin",
                     key: str | None = None) -> aiohttp.ClientResponse:
    secret = key or a.c.settings.auth.bootstrap_admin_key.get_secret_value()  # type: ignore[union-attr]
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return await a.client.request(method, f"/v1/registry{path}", json=body,
                                  headers={"Authorization": f"Basic {token}"})


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_authenticated_upstream_and_access_on_our_side(kind: str, tmp_path: Path) -> None:
    """Remotes PUT over the management API (password sealed, never returned) to Distribution with htpasswd;
    a reader of the cache namespace pulls through it, an anonymous caller is challenged."""
    master = {"signer": {"master_key": "m" * 32}}
    async with distribution(made(tmp_path / "dist"), htpasswd=f"alice:{bcrypt_hash('s3cret')}\n") as dist, \
            cache_registry(kind, tmp_path / "cache", [remote("docker-hub", "registry-1.docker.io:443")], auth=True,
                           settings_overrides=master) as cache:
        alice = ClientOptions(registries={dist: RegistryOptions(credentials=Credentials("alice", "s3cret"))})
        image = make_image()
        async with OciClient(alice) as client:
            await push_image(client, RemoteRepository(dist, "alice/app"), image, tag="v1")  # type: ignore[arg-type]
        resp = await admin_call(cache, "GET", "/admin/proxy/remotes")
        assert resp.status == 200 and (await resp.json())["source"] == "settings"
        body = {"remotes": [{"name": "dist", "url": f"http://{dist}", "username": "alice", "password": "s3cret",
                             "ttl": 60}]}
        resp = await admin_call(cache, "PUT", "/admin/proxy/remotes", body)
        assert resp.status == 200, await resp.text()
        shown = await resp.json()
        assert shown["source"] == "api" and shown["remotes"][0]["password_set"] is True
        assert "s3cret" not in json.dumps(shown)
        stored = await cache.c.docs.get("proxy_remotes", "remotes")
        assert stored is not None and "s3cret" not in json.dumps(stored)
        # A PUT without the password keeps it (same user); a bad URL is refused.
        del body["remotes"][0]["password"]
        assert (await admin_call(cache, "PUT", "/admin/proxy/remotes", body)).status == 200
        bad = {"remotes": [{"name": "meta", "url": "http://169.254.169.254"}]}
        assert (await admin_call(cache, "PUT", "/admin/proxy/remotes", bad)).status == 400

        # Anonymous: challenged.
        resp = await cache.client.get("/v2/cache/dist/alice/app/manifests/v1")
        assert resp.status == 401 and "WWW-Authenticate" in resp.headers
        # A reader of the cache namespace pulls through.
        assert (await admin_call(cache, "POST", "/users", {"name": "reader"})).status == 201
        resp = await admin_call(cache, "POST", "/users/reader/keys", {"name": "ci"})
        reader_key = (await resp.json())["key"]
        resp = await admin_call(cache, "POST", "/namespaces/cache/permissions", {"user": "reader", "role": "reader"})
        assert resp.status == 201, await resp.text()
        assert (await admin_call(cache, "GET", "/admin/proxy/remotes", user="reader", key=reader_key)).status == 403
        options = ClientOptions(registries={address(cache): RegistryOptions(credentials=Credentials("reader",
                                                                                                    reader_key))})
        async with OciClient(options) as client:
            cached = RemoteRepository(address(cache), "cache/dist/alice/app")  # type: ignore[arg-type]
            assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])


# ------------------------------------------------------------------------------------------ expiry


@pytest.mark.parametrize("kind", ASSEMBLIES)
async def test_gc_collects_cache_entries_not_pulled_within_retention(kind: str, tmp_path: Path) -> None:
    from services.gc.sweep import RunOptions
    from tests.integration.gc_support import collector, drop_gc_collections

    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry(kind, tmp_path / "cache", [remote("up", address(up))], retention=6) as cache, \
            OciClient() as client:
        old, fresh = make_image(), make_image()
        await push_image(client, RemoteRepository(address(up), "team/old"), old, tag="v1")  # type: ignore[arg-type]
        await push_image(client, RemoteRepository(address(up), "team/fresh"), fresh, tag="v1")  # type: ignore[arg-type]
        cached_old = RemoteRepository(address(cache), "cache/up/team/old")  # type: ignore[arg-type]
        cached_fresh = RemoteRepository(address(cache), "cache/up/team/fresh")  # type: ignore[arg-type]
        await pull_image(client, cached_old, "v1")
        await asyncio.sleep(4.8)
        await pull_image(client, cached_fresh, "v1")
        # old: last pulled 6.3 s ago, past the retention; fresh: 1.5 s ago, a margin of 4.5 s for a run that
        # starts late on a loaded machine (with 1.8 s, a distributed run once started after fresh expired)
        await asyncio.sleep(1.5)
        pulled = cache.client.app[PULLTHROUGH]
        await pulled.records.flush()
        try:
            result = await collector(cache.c, grace=0).run(RunOptions(run_id=uuid.uuid4().hex, grace_seconds=0))
            assert not result.errors
            deleted = {(d.kind, d.repository) for d in result.deleted}
            assert ("manifest", "cache/up/team/old") in deleted
            assert not any(repo == "cache/up/team/fresh" for _, repo in deleted), result.deleted
            assert await cache.c.meta.manifest("cache/up/team/old", old.digest) is None
            assert await cache.c.meta.tag("cache/up/team/old", "v1") is None
            assert await cache.c.blobs.stat(Digest.of(old.layers[0])) is None
            assert await cache.c.meta.manifest("cache/up/team/fresh", fresh.digest) is not None
            # Pulled again: refetched from upstream.
            assert await pull_image(client, cached_old, "v1") == (old.manifest, [old.config, *old.layers])
        finally:
            if kind != "embedded":
                await drop_gc_collections(cache.c)


# ------------------------------------------------------------------------------------------ 429, mirror mode


@contextlib.asynccontextmanager
async def limited_upstream(image: Image) -> AsyncIterator[tuple[str, dict[str, bool]]]:
    """An upstream serving one image at team/app:v1 that answers 429 (Retry-After: 17) when told to."""
    from aiohttp import web

    state = {"limited": False}
    blobs = {str(Digest.of(b)): b for b in (image.config, *image.layers)}

    async def handle(request: web.Request) -> web.StreamResponse:
        if state["limited"]:
            return web.json_response({"errors": [{"code": "TOOMANYREQUESTS", "message": "pull limit"}]},
                                     status=429, headers={"Retry-After": "17"})
        path = request.path
        if path.endswith("/manifests/v1") or path.endswith(f"/manifests/{image.digest}"):
            headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": str(image.digest)}
            return web.Response(body=None if request.method == "HEAD" else image.manifest, headers=headers)
        digest = path.rsplit("/", 1)[-1]
        if "/blobs/" in path and digest in blobs:
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(blobs[digest]))})
            return web.Response(body=blobs[digest])
        return web.json_response({"errors": [{"code": "NOT_FOUND", "message": "no"}]}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def test_upstream_429_stale_serve_or_429_with_retry_after(tmp_path: Path) -> None:
    image = make_image()
    async with limited_upstream(image) as (upstream, state), \
            cache_registry("embedded", tmp_path / "cache", [remote("hub", upstream, ttl=0)]) as cache, \
            OciClient() as client:
        cached = RemoteRepository(address(cache), "cache/hub/team/app")  # type: ignore[arg-type]
        assert (await pull_image(client, cached, "v1"))[0] == image.manifest
        state["limited"] = True
        resp = await cache.client.get("/v2/cache/hub/team/app/manifests/v1")
        assert resp.status == 200 and resp.headers["Warning"] == '110 - "stale"'
        assert await resp.read() == image.manifest
        resp = await cache.client.get("/v2/cache/hub/team/other/manifests/v1")
        assert resp.status == 429 and resp.headers["Retry-After"] == "17"
        assert "pull limit" in (await resp.json())["errors"][0]["message"]
        resp = await cache.client.get(f"/v2/cache/hub/team/app/blobs/{Digest.of(b'other')}")
        assert resp.status == 429 and resp.headers["Retry-After"] == "17"
        assert metric(cache, "hanzo_registry_cache_upstream_errors_total", remote="hub", reason="429") == 3


async def test_containerd_mirror_requests_map_ns_to_a_remote(tmp_path: Path) -> None:
    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry("embedded", tmp_path / "cache", [remote("up", address(up))]) as cache, \
            OciClient() as client:
        image = make_image()
        await push_image(client, RemoteRepository(address(up), "team/app"), image, tag="v1")  # type: ignore[arg-type]
        resp = await cache.client.get("/v2/team/app/manifests/v1", params={"ns": address(up)},
                                      headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200 and await resp.read() == image.manifest
        layer = Digest.of(image.layers[0])
        resp = await cache.client.get(f"/v2/team/app/blobs/{layer}", params={"ns": address(up)})
        assert resp.status == 200 and await resp.read() == image.layers[0]
        assert await cache.c.meta.manifest("cache/up/team/app", image.digest) is not None
        # Without ns, or with a host no remote has, the path is a local repository.
        assert (await cache.client.get("/v2/team/app/manifests/v1")).status == 404
        assert (await cache.client.get("/v2/team/app/manifests/v1", params={"ns": "quay.io"})).status == 404


# ------------------------------------------------------------------------------------------ bad and slow upstreams


@contextlib.asynccontextmanager
async def faulty_upstream(image: Image) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """An upstream serving one image at team/app:v1 that, when told, serves a layer whose bytes do not match its
    digest (same length), or answers manifests only after `delay` seconds."""
    from aiohttp import web

    state: dict[str, Any] = {"corrupt": False, "delay": 0.0}
    blobs = {str(Digest.of(b)): b for b in (image.config, *image.layers)}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if "/manifests/" in path:
            await asyncio.sleep(state["delay"])
            headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": str(image.digest)}
            return web.Response(body=None if request.method == "HEAD" else image.manifest, headers=headers)
        digest = path.rsplit("/", 1)[-1]
        if "/blobs/" in path and digest in blobs:
            data = blobs[digest]
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(data))})
            if state["corrupt"]:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            return web.Response(body=data)
        return web.json_response({"errors": [{"code": "NOT_FOUND", "message": "no"}]}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def test_a_blob_whose_digest_does_not_verify_fails_the_pull_and_is_not_cached(tmp_path: Path) -> None:
    image = make_image(layer_sizes=(200_000,))
    layer = Digest.of(image.layers[0])
    async with faulty_upstream(image) as (upstream, state), \
            cache_registry("embedded", tmp_path / "cache", [remote("bad", upstream)]) as cache:
        state["corrupt"] = True
        resp = await cache.client.get(f"/v2/cache/bad/team/app/blobs/{layer}")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # ends short of its Content-Length: an error for any client
        assert await cache.c.blobs.stat(layer) is None
        assert await cache.c.meta.blob_link("cache/bad/team/app", layer) is None
        assert metric(cache, "hanzo_registry_cache_upstream_errors_total", remote="bad", reason="digest") == 1
        # The upstream serves the right bytes again: fetched anew, verified, cached.
        state["corrupt"] = False
        resp = await cache.client.get(f"/v2/cache/bad/team/app/blobs/{layer}")
        assert resp.status == 200 and await resp.read() == image.layers[0]
        assert await cache.c.blobs.stat(layer) is not None


async def test_a_slow_upstream_serves_cached_content_stale_or_fails_with_502(tmp_path: Path) -> None:
    image = make_image()
    async with faulty_upstream(image) as (upstream, state), \
            cache_registry("embedded", tmp_path / "cache", [remote("slow", upstream, ttl=0)],
                           timeout_seconds=0.5) as cache:
        resp = await cache.client.get("/v2/cache/slow/team/app/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200 and "Warning" not in resp.headers
        state["delay"] = 3.0  # slower than proxy.timeout_seconds
        resp = await cache.client.get("/v2/cache/slow/team/app/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200 and resp.headers["Warning"] == '110 - "stale"'
        assert await resp.read() == image.manifest
        resp = await cache.client.get("/v2/cache/slow/team/other/manifests/v1")
        assert resp.status == 502
        assert "no answer in time" in (await resp.json())["errors"][0]["message"]
        assert metric(cache, "hanzo_registry_cache_upstream_errors_total", remote="slow", reason="timeout") == 2


async def test_token_auth_upstream_of_our_own_kind(tmp_path: Path) -> None:
    """The upstream is this registry with token auth on: the cache's OCI client does the token dance with the
    remote's configured credentials."""
    key = generate_key().key
    settings = embedded_settings(tmp_path / "up", proxy={"enabled": False}).model_copy(
        update={"auth": AuthSettings(mode="token", bootstrap_admin_key=SecretStr(key))})
    (tmp_path / "up").mkdir(parents=True, exist_ok=True)
    async with running(settings, "embedded") as up:
        image = make_image()
        options = ClientOptions(registries={address(up): RegistryOptions(credentials=Credentials("admin", key))})
        async with OciClient(options) as client:
            await push_image(client, RemoteRepository(address(up), "team/app"), image, tag="v1")  # type: ignore[arg-type]
        async with cache_registry("embedded", tmp_path / "cache",
                                  [remote("up", address(up), username="admin", password=key)]) as cache, \
                OciClient() as client:
            cached = RemoteRepository(address(cache), "cache/up/team/app")  # type: ignore[arg-type]
            assert await pull_image(client, cached, "v1") == (image.manifest, [image.config, *image.layers])
            assert metric(up, "hanzo_registry_http_requests_total", route="token") >= 1
        # Without the credentials the upstream refuses, and the client is told so (502 naming the answer).
        async with cache_registry("embedded", tmp_path / "anon", [remote("up", address(up))]) as cache:
            resp = await cache.client.get("/v2/cache/up/team/app/manifests/v1")
            assert resp.status == 502 and "401" in (await resp.json())["errors"][0]["message"]


async def test_a_grant_on_one_cached_repository_pulls_through_that_one_only(tmp_path: Path) -> None:
    from services.core.client.errors import OciAuthenticationError, OciResponseError

    async with upstream_registry(tmp_path / "up") as up, \
            cache_registry("embedded", tmp_path / "cache", [remote("up", address(up))], auth=True) as cache, \
            OciClient() as client:
        image = make_image()
        for name in ("team/app", "team/other"):
            await push_image(client, RemoteRepository(address(up), name), image, tag="v1")  # type: ignore[arg-type]
        assert (await admin_call(cache, "POST", "/users", {"name": "bob"})).status == 201
        key = (await (await admin_call(cache, "POST", "/users/bob/keys", {"name": "ci"})).json())["key"]
        grant = {"user": "bob", "role": "reader", "repository": "cache/up/team/app"}
        resp = await admin_call(cache, "POST", "/namespaces/cache/permissions", grant)
        assert resp.status == 201, await resp.text()
        options = ClientOptions(registries={address(cache): RegistryOptions(credentials=Credentials("bob", key))})
        async with OciClient(options) as bob:
            allowed = RemoteRepository(address(cache), "cache/up/team/app")  # type: ignore[arg-type]
            assert await pull_image(bob, allowed, "v1") == (image.manifest, [image.config, *image.layers])
            other = RemoteRepository(address(cache), "cache/up/team/other")  # type: ignore[arg-type]
            with pytest.raises((OciAuthenticationError, OciResponseError)):
                await bob.get_manifest(other, "v1")
        assert await cache.c.meta.manifest("cache/up/team/other", image.digest) is None  # nothing fetched for bob
