"""The core OCI client against real registries: ours (both assemblies, open and with token auth), CNCF
Distribution (open and with htpasswd Basic auth), and tiny aiohttp servers for what a healthy registry never
does (dropped connections, redirects to another host, revoked tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.client import (
    ClientOptions,
    Credentials,
    OciAuthenticationError,
    OciClient,
    OciConnectionError,
    OciDigestMismatchError,
    OciManifestTooLargeError,
    OciNotFoundError,
    OciResponseError,
    OciTooManyRequestsError,
    OciUnauthorizedError,
    RegistryOptions,
    RemoteRepository,
    referrers_tag,
)
from services.core.client import blobs as blob_client
from services.core.client.blobs import UploadSession
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest, Digester
from services.core.settings import AuthSettings
from tests.conftest import infra
from tests.integration.conftest import (
    ASSEMBLIES,
    Assembly,
    distributed_settings,
    embedded_settings,
    running,
)

ARTIFACT_TYPE = "application/vnd.example.sbom.v1+json"


def registry_of(a: Assembly) -> str:
    return f"{a.client.host}:{a.client.port}"


def admin_options(a: Assembly, **extra: object) -> ClientOptions:
    key = a.c.settings.auth.bootstrap_admin_key
    assert key is not None
    creds = Credentials("admin", key.get_secret_value())
    return ClientOptions(registries={registry_of(a): RegistryOptions(credentials=creds)}, **extra)  # type: ignore[arg-type]


async def chunks_of(data: bytes, size: int, *, pause: float = 0.0) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pause and start:
            await asyncio.sleep(pause)
        yield data[start : start + size]


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes
    digest: Digest


def make_image(arch: str = "amd64", *, layer_sizes: tuple[int, ...] = (2048, 4096), **extra: object) -> Image:
    config = json.dumps({"architecture": arch, "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layers = [os.urandom(n) for n in layer_sizes]
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR_GZIP, "digest": str(Digest.of(b)), "size": len(b)} for b in layers],
        **extra,
    }
    manifest = json.dumps(doc).encode()
    return Image(config, layers, manifest, Digest.of(manifest))


async def push_image(client: OciClient, repo: RemoteRepository, image: Image, tag: str | None = None) -> None:
    for blob in (image.config, *image.layers):
        await client.push_blob(repo, blob, digest=Digest.of(blob))
    await client.push_manifest(repo, image.manifest, reference=tag, media_type=mt.OCI_MANIFEST)


def artifact_for(subject: Image, *, note: str = "sbom") -> tuple[bytes, bytes]:
    """(blob, manifest) of an artifact whose subject is `subject`."""
    blob = json.dumps({"note": note, "nonce": os.urandom(4).hex()}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": mt.OCI_EMPTY,
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [{"mediaType": "application/json", "digest": str(Digest.of(blob)), "size": len(blob)}],
        "subject": {"mediaType": mt.OCI_MANIFEST, "digest": str(subject.digest), "size": len(subject.manifest)},
    }
    return blob, json.dumps(doc).encode()


async def push_artifact(client: OciClient, repo: RemoteRepository, subject: Image, *, note: str = "sbom") -> Digest:
    blob, manifest = artifact_for(subject, note=note)
    await client.push_blob(repo, b"{}", digest=Digest.of(b"{}"))
    await client.push_blob(repo, blob, digest=Digest.of(blob))
    return (await client.push_manifest(repo, manifest)).digest


# ------------------------------------------------------------------------------------------ scenarios shared
# by our registry and CNCF Distribution


async def roundtrip(client: OciClient, registry: str) -> None:
    """Every push method, resolve, pull, tags with pagination, catalog, mount and delete."""
    repo = RemoteRepository(registry, f"client/app-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
    image = make_image(layer_sizes=(3000, 70_000, 200_000))
    config, small, medium, large = image.config, *image.layers
    assert await client.push_blob(repo, config, digest=Digest.of(config), method="post") == "uploaded"
    assert await client.push_blob(repo, small, digest=Digest.of(small)) == "uploaded"  # post-put, bytes
    # A streamed monolithic PUT, and a chunked push whose chunks are re-cut to chunk_size.
    await client.push_blob(repo, chunks_of(medium, 7000), digest=Digest.of(medium), size=len(medium))
    await client.push_blob(
        repo, chunks_of(large, 30_000), digest=Digest.of(large), method="chunked", chunk_size=64 * 1024
    )
    assert await client.push_blob(repo, small, digest=Digest.of(small)) == "exists"
    assert await client.blob_size(repo, Digest.of(large)) == len(large)
    assert await client.blob_size(repo, Digest.of(b"nope")) is None

    pushed = await client.push_manifest(repo, image.manifest, reference="v1")
    assert pushed.digest == image.digest and pushed.media_type == mt.OCI_MANIFEST
    for ref in ("v1", str(image.digest)):
        desc = await client.resolve(repo, ref)
        assert (desc.digest, desc.media_type, desc.size) == (image.digest, mt.OCI_MANIFEST, len(image.manifest))
        fetched = await client.get_manifest(repo, ref)
        assert fetched.content == image.manifest and fetched.descriptor == desc
    for blob in (config, small, medium, large):
        assert await read_all(client.pull_blob(repo, Digest.of(blob), size=len(blob))) == blob

    # Errors are typed and carry the registry's code.
    with pytest.raises(OciNotFoundError) as caught:
        await client.resolve(repo, "missing")
    assert caught.value.status == 404
    with pytest.raises(OciNotFoundError) as caught:
        await read_all(client.pull_blob(repo, Digest.of(b"absent")))
    assert caught.value.code == "BLOB_UNKNOWN"
    with pytest.raises(OciDigestMismatchError):  # asked by the wrong size
        await read_all(client.pull_blob(repo, Digest.of(small), size=len(small) - 1))
    with pytest.raises(OciDigestMismatchError):  # the stream is not what the digest says
        await client.push_blob(repo, chunks_of(b"x" * 100, 10), digest=Digest.of(b"y" * 100), method="chunked")

    for tag in ("v2", "v3", "v4", "v5"):
        await client.push_manifest(repo, image.manifest, reference=tag)
    # Sorted here: Distribution 2.8 pages tags in storage order.
    assert sorted([t async for t in client.list_tags(repo, page_size=2)]) == ["v1", "v2", "v3", "v4", "v5"]
    assert str(repo.name) in [name async for name in client.catalog(registry, page_size=1)]

    other = RemoteRepository(registry, f"client/other-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
    assert await client.mount_blob(other, Digest.of(large), from_repo=str(repo.name))
    assert await client.push_blob(other, small, digest=Digest.of(small), mount_from=str(repo.name)) == "mounted"
    # A mount the registry refuses (unknown source) falls back to the session it opened.
    stray = os.urandom(500)
    assert await client.push_blob(other, stray, digest=Digest.of(stray), mount_from="client/none") == "uploaded"
    assert await read_all(client.pull_blob(other, Digest.of(stray))) == stray

    await client.delete_manifest(repo, image.digest)
    with pytest.raises(OciNotFoundError):
        await client.get_manifest(repo, image.digest)
    await client.delete_blob(other, Digest.of(stray))
    assert await client.blob_size(other, Digest.of(stray)) is None


async def multi_arch(client: OciClient, registry: str) -> None:
    repo = RemoteRepository(registry, "client/multi")  # type: ignore[arg-type]
    images = [make_image(arch) for arch in ("amd64", "arm64")]
    for image in images:
        await push_image(client, repo, image)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "digest": str(i.digest),
                    "size": len(i.manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for i, arch in zip(images, ("amd64", "arm64"), strict=True)
            ],
        }
    ).encode()
    await client.push_manifest(repo, index, reference="latest", media_type=mt.OCI_INDEX)
    desc = await client.resolve(repo, "latest")
    assert (desc.media_type, desc.digest, desc.size) == (mt.OCI_INDEX, Digest.of(index), len(index))
    children = (await client.get_manifest(repo, "latest")).json()["manifests"]
    for child, image in zip(children, images, strict=True):
        got = await client.get_manifest(repo, child["digest"])
        assert got.content == image.manifest and got.descriptor.media_type == mt.OCI_MANIFEST


async def referrers(client: OciClient, registry: str, *, api: bool) -> None:
    repo = RemoteRepository(registry, "client/signed")  # type: ignore[arg-type]
    subject = make_image()
    await push_image(client, repo, subject, tag="v1")
    assert await client.referrers(repo, subject.digest) == []
    first = await push_artifact(client, repo, subject, note="one")
    second = await push_artifact(client, repo, subject, note="two")
    found = await client.referrers(repo, subject.digest)
    assert {d.digest for d in found} == {first, second}
    assert all(d.artifact_type == ARTIFACT_TYPE for d in found)
    assert [d.digest for d in await client.referrers(repo, subject.digest, artifact_type="other/type")] == []
    assert len(await client.referrers(repo, subject.digest, artifact_type=ARTIFACT_TYPE)) == 2
    tag_index = [t async for t in client.list_tags(repo) if t == referrers_tag(subject.digest)]
    # The fallback keeps its index in a tag; a registry with the API needs none.
    assert bool(tag_index) is (not api)


# ------------------------------------------------------------------------------------------ our registry


async def test_roundtrip_on_our_registry(assembly: Assembly) -> None:
    async with OciClient() as client:
        await client.ping(registry_of(assembly))
        await roundtrip(client, registry_of(assembly))


async def test_multi_arch_and_referrers_api_on_our_registry(assembly: Assembly) -> None:
    async with OciClient() as client:
        await multi_arch(client, registry_of(assembly))
        await referrers(client, registry_of(assembly), api=True)


async def test_manifest_size_limit(assembly: Assembly) -> None:
    registry = registry_of(assembly)
    repo = RemoteRepository(registry, "client/big")  # type: ignore[arg-type]
    image = make_image(annotations={"pad": "x" * 3000})
    async with OciClient() as client:
        await push_image(client, repo, image, tag="v1")
    async with OciClient(ClientOptions(max_manifest_bytes=2048)) as small:
        with pytest.raises(OciManifestTooLargeError):
            await small.get_manifest(repo, "v1")


async def test_token_dance_with_scope_widening(auth_assembly: Assembly) -> None:
    registry = registry_of(auth_assembly)
    repo = RemoteRepository(registry, "ml/llama")  # type: ignore[arg-type]
    async with OciClient(admin_options(auth_assembly)) as client:
        # An authenticated GET of nothing: a pull token. (A first HEAD would be challenged for pull,push:
        # pushers look with HEAD first, and some clients keep the first token they get.)
        with pytest.raises(OciNotFoundError):
            await client.get_manifest(repo, "v1")
        assert client.tokens.fetched == 1
        assert client.tokens.find(registry, ["repository:ml/llama:pull,push"]) is None
        image = make_image()
        await push_image(client, repo, image, tag="v1")  # needs push: one wider token, then reused
        assert client.tokens.fetched == 2
        assert client.tokens.find(registry, ["repository:ml/llama:pull,push"]) is not None
        assert (await client.resolve(repo, "v1")).digest == image.digest
        assert await read_all(client.pull_blob(repo, Digest.of(image.layers[0]))) == image.layers[0]
        assert client.tokens.fetched == 2
        assert "ml/llama" in [r async for r in client.catalog(registry)]
        await client.delete_manifest(repo, image.digest)
        assert client.tokens.fetched == 4  # catalog and delete scopes

    async with OciClient() as anonymous:
        with pytest.raises(OciUnauthorizedError) as caught:
            await anonymous.get_manifest(repo, "v1")
        assert caught.value.code == "UNAUTHORIZED"  # HEAD answers have no body to read a code from
    bad = ClientOptions(registries={registry: RegistryOptions(credentials=Credentials("admin", "hzr_nope_nope"))})
    async with OciClient(bad) as client:
        with pytest.raises(OciAuthenticationError, match="refused user 'admin'"):
            await client.resolve(repo, "v1")


@pytest.fixture(params=ASSEMBLIES)
async def short_token_assembly(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Assembly]:
    """Token auth with 2-second tokens (below the settings' minimum, set past validation)."""
    from services.core.auth.store import AuthStore

    embedded = request.param == "embedded"
    settings = embedded_settings(tmp_path) if embedded else distributed_settings(tmp_path, uuid.uuid4().hex[:10])
    auth = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(generate_key().key))
    auth = auth.model_copy(update={"token_ttl_seconds": 2})
    async with running(settings.model_copy(update={"auth": auth}), request.param) as a:
        try:
            yield a
        finally:
            if not embedded:
                await AuthStore(a.c.docs).drop_all()


async def test_tokens_refreshed_during_a_long_chunked_push(short_token_assembly: Assembly) -> None:
    a = short_token_assembly
    repo = RemoteRepository(registry_of(a), "ml/slow")  # type: ignore[arg-type]
    data = os.urandom(5 * 70_000)
    async with OciClient(admin_options(a, chunk_size=70_000)) as client:
        source = chunks_of(data, 70_000, pause=1.1)  # ~4.4 s: outlives two tokens
        await client.push_blob(repo, source, digest=Digest.of(data), method="chunked")
        assert client.tokens.fetched >= 3  # refreshed at half-life, before each PATCH that needed it
        fetched = client.tokens.fetched
        await asyncio.sleep(1.2)
        assert await read_all(client.pull_blob(repo, Digest.of(data))) == data
        assert client.tokens.fetched == fetched + 1


class Killed(Exception):
    """Stands for the process dying mid-push: not an error the client resumes after."""


async def test_resumable_push_continues_an_earlier_session_and_outlives_tokens(
    short_token_assembly: Assembly,
) -> None:
    a = short_token_assembly
    repo = RemoteRepository(registry_of(a), "ml/resumable")  # type: ignore[arg-type]
    data = os.urandom(6 * 50_000)
    digest = Digest.of(data)
    saved: list[UploadSession] = []

    def dies_after_three(offset: int) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            async for chunk in chunks_of(data[offset:], 50_000):
                if saved and saved[-1].offset >= 150_000:
                    raise Killed  # after the registry acknowledged three chunks
                yield chunk

        return gen()

    async with OciClient(admin_options(a)) as client:
        with pytest.raises(Killed):
            await client.push_blob_resumable(repo, dies_after_three, digest=digest, size=len(data),
                                             chunk_size=50_000, on_session=saved.append)
    assert saved[-1].offset == 150_000

    async with OciClient(admin_options(a)) as client:  # a new process: only the saved session is known
        def slow(offset: int) -> AsyncIterator[bytes]:
            return chunks_of(data[offset:], 50_000, pause=1.1)  # ~3.3 s: outlives a 2-second token

        result = await client.push_blob_resumable(repo, slow, digest=digest, size=len(data), chunk_size=50_000,
                                                  session=saved[-1].location)
        assert (result.resumed_from, result.bytes_sent) == (150_000, 150_000)
        assert client.tokens.fetched >= 2
        # A pull from bytes already held asks for the rest only and checks the digest over the whole.
        held = Digester()
        held.update(data[:100_000])
        download = client.pull_blob(repo, digest, prefix=held)
        assert await read_all(download) == data[100_000:]
        assert download.size == len(data)
        wrong = Digester()
        wrong.update(b"x" * 100_000)
        with pytest.raises(OciDigestMismatchError):
            await read_all(client.pull_blob(repo, digest, prefix=wrong))

        # A session the registry no longer has (cancelled) starts again from zero.
        location, _ = await blob_client._start_session(client.transport, repo)
        (await client.transport.request(repo.registry, "DELETE", location)).release()
        other = os.urandom(70_000)
        again = await client.push_blob_resumable(
            repo, lambda offset: chunks_of(other[offset:], 30_000), digest=Digest.of(other), size=len(other),
            session=location)
        assert (again.resumed_from, again.bytes_sent) == (0, len(other))
        assert await read_all(client.pull_blob(repo, Digest.of(other))) == other


# ------------------------------------------------------------------------------------------ CNCF Distribution


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's libxcrypt does bcrypt; the only bcrypt in this environment

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    assert hashed and hashed.startswith("$2"), "no bcrypt in crypt(3)"
    return hashed


@contextlib.asynccontextmanager
async def distribution(tmp_path: Path, *, htpasswd: str | None = None) -> AsyncIterator[str]:
    """Debian's docker-registry (CNCF Distribution 2.8) on a free loopback port; yields `host:port`."""
    binary = infra("HANZO_TOOL_DOCKER_REGISTRY")
    port = free_port()
    auth = ""
    if htpasswd is not None:
        (tmp_path / "htpasswd").write_text(htpasswd)
        auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {tmp_path / 'htpasswd'}\n"
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    log = (tmp_path / "registry.log").open("wb")
    proc = await asyncio.create_subprocess_exec(binary, "serve", str(config), stdout=log, stderr=log, env=env)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if proc.returncode is not None:
                raise RuntimeError(f"docker-registry exited: {(tmp_path / 'registry.log').read_text()}")
            await asyncio.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()
        log.close()


async def test_roundtrip_on_distribution(tmp_path: Path) -> None:
    async with distribution(tmp_path) as registry, OciClient() as client:
        await client.ping(registry)
        await roundtrip(client, registry)
        await multi_arch(client, registry)


async def test_referrers_tag_fallback_on_distribution(tmp_path: Path) -> None:
    """Distribution 2.8 has no referrers API (404): pushes maintain, and reads use, the `sha256-<hex>` tag."""
    async with distribution(tmp_path) as registry, OciClient() as client:
        await referrers(client, registry, api=False)


async def test_basic_auth_on_distribution(tmp_path: Path) -> None:
    htpasswd = f"alice:{bcrypt_hash('s3cret')}\n"
    async with distribution(tmp_path, htpasswd=htpasswd) as registry:
        repo = RemoteRepository(registry, "alice/app")  # type: ignore[arg-type]
        good = ClientOptions(registries={registry: RegistryOptions(credentials=Credentials("alice", "s3cret"))})
        async with OciClient(good) as client:
            image = make_image()
            await push_image(client, repo, image, tag="v1")
            assert (await client.resolve(repo, "v1")).digest == image.digest
            data = os.urandom(100_000)
            await client.push_blob(
                repo, chunks_of(data, 10_000), digest=Digest.of(data), method="chunked", chunk_size=32_000
            )
            assert await read_all(client.pull_blob(repo, Digest.of(data))) == data
            assert client.tokens.fetched == 0  # Basic: no token endpoint
        bad = ClientOptions(registries={registry: RegistryOptions(credentials=Credentials("alice", "wrong"))})
        for options in (bad, ClientOptions()):
            async with OciClient(options) as client:
                with pytest.raises(OciUnauthorizedError):
                    await client.resolve(repo, "v1")


# ------------------------------------------------------------------------------------------ misbehaving servers


@dataclass
class Fake:
    """A tiny registry that serves one blob and misbehaves on request."""

    blob: bytes
    digest: str = ""
    drop_after: list[int] = field(default_factory=list)
    """Per GET, in order: close the connection after this many bytes."""
    ignore_range: bool = False
    redirect_to: str | None = None
    basic: tuple[str, str] | None = None
    bearer: bool = False
    tokens: list[str] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    token_scopes: dict[str, set[str]] = field(default_factory=dict)
    token_requests: list[list[str]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    chunk_min: int = 0
    manifest_head: tuple[int, dict[str, str]] | None = None
    """Status and headers of every manifest HEAD (e.g. a 429 with Retry-After)."""
    patches: list[tuple[str, str]] = field(default_factory=list)
    uploaded: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.digest = "sha256:" + hashlib.sha256(self.blob).hexdigest()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/v2/{tail:.*}", self.v2)
        return app

    async def token(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        self.token_requests.append(scopes)
        value = f"tok{len(self.tokens)}"
        self.tokens.append(value)
        self.valid_tokens.add(value)
        self.token_scopes[value] = set(scopes)
        return web.json_response({"token": value, "expires_in": 300})

    def _challenge(self, request: web.Request, scope: str, *, insufficient: bool = False) -> web.Response:
        if self.basic:
            header = 'Basic realm="fake"'
        else:
            header = f'Bearer realm="http://{request.host}/token",service="fake",scope="{scope}"'
            if insufficient:
                header += ',error="insufficient_scope"'
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authenticate"}]})
        return web.Response(status=401, text=body, headers={"WWW-Authenticate": header})

    async def v2(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, dict(request.headers)))
        scope = "repository:a/b:pull" if request.method in ("GET", "HEAD") else "repository:a/b:pull,push"
        auth = request.headers.get("Authorization", "")
        if self.basic:
            import base64

            user, password = self.basic
            if auth != "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                return self._challenge(request, scope)
        if self.bearer:
            token = auth.removeprefix("Bearer ")
            if token not in self.valid_tokens:
                return self._challenge(request, scope)
            if scope not in self.token_scopes[token] and "repository:a/b:pull,push" not in self.token_scopes[token]:
                return self._challenge(request, scope, insufficient=True)
        if request.path == "/v2/":
            return web.Response()
        if "/blobs/uploads/" in request.path:
            return await self.upload(request)
        if "/manifests/" in request.path:
            return self.manifest(request)
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(f"{self.redirect_to}/blob?X-Amz-Signature=secret")
        return await self.serve(request)

    async def upload(self, request: web.Request) -> web.Response:
        """An upload session that records PATCH ranges; Locations change on every answer."""
        headers = {"Location": f"/v2/a/b/blobs/uploads/1?state={len(self.patches)}"}
        if request.method == "POST":
            self.uploaded.clear()
            if self.chunk_min:
                headers["OCI-Chunk-Min-Length"] = str(self.chunk_min)
            return web.Response(status=202, headers=headers)
        body = await request.read()
        if request.method == "PATCH":
            self.patches.append((request.headers["Content-Range"], request.query.get("state", "")))
            self.uploaded += body
            return web.Response(status=202, headers={"Location": f"/v2/a/b/blobs/uploads/1?state={len(self.patches)}"})
        self.uploaded += body
        assert request.query["digest"] == "sha256:" + hashlib.sha256(self.uploaded).hexdigest()
        return web.Response(status=201, headers={"Location": f"/v2/a/b/blobs/{request.query['digest']}"})

    def manifest(self, request: web.Request) -> web.Response:
        """A manifest whose HEAD answer lacks Docker-Content-Digest (some registries' proxies strip it)."""
        headers = {"Content-Type": mt.OCI_MANIFEST}
        if request.method == "HEAD" and self.manifest_head is not None:
            return web.Response(status=self.manifest_head[0], headers=self.manifest_head[1])
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(self.blob))})
        return web.Response(body=self.blob, headers=headers)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        start = 0
        header = request.headers.get("Range")
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").rstrip("-"))
        status = 206 if start else 200
        body = self.blob[start:]
        headers = {"Content-Length": str(len(body)), "Docker-Content-Digest": self.digest}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(self.blob) - 1}/{len(self.blob)}"
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        cut = self.drop_after.pop(0) if self.drop_after else None
        if cut is not None:
            await resp.write(body[:cut])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def serving(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


FAKE_REPO = "a/b"


async def test_pull_resumes_with_range_after_dropped_connections() -> None:
    blob = os.urandom(3 * 1024 * 1024)
    fake = Fake(blob, drop_after=[1024 * 1024, 512 * 1024])  # two drops, then the rest
    async with serving(fake.app()) as registry, OciClient(ClientOptions(resume_delay=0)) as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        received = bytearray()
        async for chunk in client.pull_blob(repo, Digest.parse(fake.digest), size=len(blob)):
            assert len(chunk) <= client.options.read_chunk_size  # streamed, never the whole blob
            received += chunk
        assert bytes(received) == blob
        ranges = [headers.get("Range") for method, headers in fake.requests if method == "GET"]
        assert ranges[0] is None and ranges[1] == "bytes=1048576-" and ranges[2] == f"bytes={1024 * 1024 + 512 * 1024}-"


async def test_pull_skips_what_it_has_when_range_is_ignored_and_gives_up_eventually() -> None:
    blob = os.urandom(600_000)
    fake = Fake(blob, drop_after=[200_000], ignore_range=True)
    async with serving(fake.app()) as registry, OciClient(ClientOptions(resume_delay=0)) as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        assert await read_all(client.pull_blob(repo, Digest.parse(fake.digest))) == blob
    fake = Fake(blob, drop_after=[1000] * 10)
    async with serving(fake.app()) as registry, OciClient(ClientOptions(resume_delay=0, max_resumes=2)) as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        with pytest.raises(OciConnectionError, match="gave up after 2 resumes"):
            await read_all(client.pull_blob(repo, Digest.parse(fake.digest)))
    fake = Fake(blob)
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        with pytest.raises(OciDigestMismatchError):
            await read_all(client.pull_blob(repo, Digest.of(b"something else")))


async def test_redirect_to_another_host_drops_credentials() -> None:
    blob = os.urandom(100_000)
    storage = Fake(blob)  # plays the presigned S3 URL: open, records what it is sent

    async def presigned(request: web.Request) -> web.StreamResponse:
        storage.requests.append((request.method, dict(request.headers)))
        return await storage.serve(request)

    storage_app = web.Application()
    storage_app.router.add_get("/blob", presigned)
    async with serving(storage_app) as storage_host:
        fake = Fake(blob, basic=("u", "p"), redirect_to=f"http://{storage_host}")
        async with serving(fake.app()) as registry:
            options = ClientOptions(registries={registry: RegistryOptions(credentials=Credentials("u", "p"))})
            async with OciClient(options) as client:
                repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
                assert await read_all(client.pull_blob(repo, Digest.parse(fake.digest))) == blob
    assert fake.requests[-1][1].get("Authorization", "").startswith("Basic ")
    [(_, sent)] = storage.requests
    assert "Authorization" not in sent and "traceparent" not in sent


async def test_revoked_token_and_insufficient_scope_are_answered_once() -> None:
    fake = Fake(os.urandom(1000), bearer=True)
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        digest = Digest.parse(fake.digest)
        assert await client.blob_size(repo, digest) == 1000
        assert fake.token_requests == [["repository:a/b:pull"]]
        fake.valid_tokens.clear()  # e.g. expired early, or the signing key rotated
        assert await read_all(client.pull_blob(repo, digest)) == fake.blob
        assert len(fake.token_requests) == 2
        # A request that needs push with a pull token: insufficient_scope; one token for the union.
        await client.mount_blob(repo, digest, from_repo="a/b")
        assert fake.token_requests[-1] == ["repository:a/b:pull,push"]


class RefusingFake(Fake):
    """A token endpoint that hands out tokens the registry never accepts."""

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(request.query.getall("scope", []))
        return web.json_response({"token": "useless"})


async def test_a_registry_that_keeps_refusing_gets_one_retry() -> None:
    fake = RefusingFake(b"x", bearer=True)
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        with pytest.raises(OciUnauthorizedError):
            await client.blob_size(repo, Digest.parse(fake.digest))
        assert len(fake.token_requests) == 1
        assert len(fake.requests) == 2


async def test_chunked_push_honours_chunk_min_length_and_locations() -> None:
    fake = Fake(b"", chunk_min=40_000)
    data = os.urandom(100_000)
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        await client.push_blob(
            repo,
            chunks_of(data, 1000),
            digest=Digest.of(data),
            method="chunked",
            chunk_size=10_000,
            skip_existing=False,
        )
    # Chunks of the registry's minimum (not our 10 000), each sent to the Location of the previous answer.
    assert fake.patches == [("0-39999", "0"), ("40000-79999", "1"), ("80000-99999", "2")]
    assert bytes(fake.uploaded) == data


async def test_resolve_falls_back_to_get_and_requests_carry_trace_context() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    manifest = make_image().manifest
    fake = Fake(manifest)
    tracer = TracerProvider().get_tracer("test")
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        with tracer.start_as_current_span("replicate") as span:
            desc = await client.resolve(repo, "v1")
    assert (desc.digest, desc.size, desc.media_type) == (Digest.of(manifest), len(manifest), mt.OCI_MANIFEST)
    assert [method for method, _ in fake.requests] == ["HEAD", "GET"]
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert all(trace_id in headers["traceparent"] for _, headers in fake.requests)


async def test_resolve_does_not_turn_a_refused_head_into_a_pull() -> None:
    """A 429 or 5xx HEAD is raised with its Retry-After (a GET would count as a pull and meet the same limit);
    only a registry without HEAD (405) is asked with GET."""
    manifest = make_image().manifest
    fake = Fake(manifest, manifest_head=(429, {"Retry-After": "7"}))
    async with serving(fake.app()) as registry, OciClient() as client:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        with pytest.raises(OciTooManyRequestsError) as limited:
            await client.resolve(repo, "v1")
        assert limited.value.retry_after == 7.0 and limited.value.headers["Retry-After"] == "7"
        fake.manifest_head = (503, {})
        with pytest.raises(OciResponseError) as failed:
            await client.resolve(repo, "v1")
        assert failed.value.status == 503 and failed.value.retry_after is None
        assert [method for method, _ in fake.requests] == ["HEAD", "HEAD"]
        fake.manifest_head = (405, {})
        assert (await client.resolve(repo, "v1")).digest == Digest.of(manifest)
        assert [method for method, _ in fake.requests][2:] == ["HEAD", "GET"]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_https_with_a_ca_file_or_insecure(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    fake = Fake(os.urandom(1000))
    async with serving(fake.app(), ssl_context=context) as registry:
        repo = RemoteRepository(registry, FAKE_REPO)  # type: ignore[arg-type]
        digest = Digest.parse(fake.digest)
        for options, works in [
            (RegistryOptions(plain_http=False, ca_file=str(cert_file)), True),
            (RegistryOptions(plain_http=False, insecure=True), True),
            (RegistryOptions(plain_http=False), False),  # not a CA we trust
            (RegistryOptions(), False),  # loopback: plain HTTP unless told
        ]:
            async with OciClient(ClientOptions(registries={registry: options}, connect_timeout=5)) as client:
                if works:
                    assert await client.blob_size(repo, digest) == 1000
                else:
                    with pytest.raises(OciConnectionError):
                        await client.blob_size(repo, digest)


async def test_connection_errors_are_typed() -> None:
    async with OciClient(ClientOptions(connect_timeout=2)) as client:
        repo = RemoteRepository(f"127.0.0.1:{free_port()}", "a/b")  # type: ignore[arg-type]
        with pytest.raises(OciConnectionError):
            await client.resolve(repo, "v1")
        with pytest.raises(OciResponseError):
            raise OciNotFoundError(method="GET", url="u", status=404, errors=())
