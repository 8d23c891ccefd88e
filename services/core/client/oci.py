"""The OCI client: one async client for every registry the services talk to (replication targets,
pull-through upstreams, the CLI, tests). Manifests, tags, catalog, deletes and referrers live here; blob
transfers in `blobs.py`, authentication and HTTP in `transport.py`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import aiohttp
from yarl import URL

from services.core.client import blobs
from services.core.client.auth import TokenCache, repository_scope
from services.core.client.errors import (
    OciDigestMismatchError,
    OciManifestTooLargeError,
    OciNotFoundError,
    OciProtocolError,
)
from services.core.client.reference import RemoteRepository
from services.core.client.transport import ClientOptions, Transport, shown
from services.core.errors import RegistryError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest, Digester
from services.core.oci.manifest import Descriptor, ReferrerDescriptor, parse_manifest
from services.core.oci.names import Tag, parse_reference
from services.core.ssrf import guarded_connector

OCI_ARTIFACT_MANIFEST: Final = "application/vnd.oci.artifact.manifest.v1+json"
"""The withdrawn OCI artifact manifest (image-spec 1.1 rc): still served by some registries."""

MANIFEST_ACCEPT: Final = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST, OCI_ARTIFACT_MANIFEST]
)

Reference = str | Tag | Digest

_HEAD_UNSUPPORTED: Final = frozenset({405, 501})
"""HEAD answers that mean "ask with GET" rather than "no" or "not now"."""


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest's exact bytes and its descriptor (media type, digest of the bytes, size)."""

    descriptor: Descriptor
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def _reference(reference: Reference) -> Tag | Digest:
    return parse_reference(reference) if isinstance(reference, str) else reference


def _pull(repo: RemoteRepository) -> tuple[str]:
    return (repository_scope(str(repo.name), "pull"),)


def _push(repo: RemoteRepository) -> tuple[str]:
    return (repository_scope(str(repo.name), "pull", "push"),)


def referrers_tag(digest: Digest) -> str:
    """The tag of the referrers tag schema (distribution-spec 1.1): `<alg>-<hex>`, truncated as the spec says."""
    return f"{digest.algorithm[:32]}-{digest.hex[:64]}"


def _media_type_of(content: bytes, header: str | None) -> str:
    media_type = mt.base_media_type(header or "")
    if media_type and media_type not in mt.GENERIC_CONTENT_TYPES:
        return media_type
    try:
        declared = json.loads(content).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    if isinstance(declared, str) and declared:
        return declared
    raise OciProtocolError("manifest has no media type (no Content-Type and no mediaType field)")


class OciClient:
    """Async client for the OCI distribution API. Use as `async with OciClient(options) as client:`; it owns
    its aiohttp session unless one is passed in. Repositories are `RemoteRepository(registry, name)`.

    Every method raises OciResponseError subclasses for error answers (OciNotFoundError, OciDeniedError,
    OciUnauthorizedError, ...), OciConnectionError when the registry cannot be reached, and
    OciDigestMismatchError when content does not match the digest it was asked by.
    """

    def __init__(
        self,
        options: ClientOptions | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        tokens: TokenCache | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        self._own_session = session is None
        self._session = session
        self.tokens = tokens or TokenCache(refresh_margin=self.options.token_refresh_margin)
        self._transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            if self._session is None:
                policy = self.options.url_policy
                connector = guarded_connector(policy) if policy is not None else None
                self._session = aiohttp.ClientSession(auto_decompress=False, connector=connector)
            self._transport = Transport(self.options, self._session, self.tokens)
        return self._transport

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session, self._transport = None, None

    async def __aenter__(self) -> OciClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ registry

    async def ping(self, registry: str) -> None:
        """GET /v2/, authenticating if asked: checks that the registry speaks the API and takes our
        credentials (OciAuthenticationError / OciUnauthorizedError when it does not)."""
        async with self.transport.expect(registry, "GET", "/v2/", ok=(200,)):
            return

    async def catalog(self, registry: str, *, page_size: int | None = None) -> AsyncIterator[str]:
        """Repository names, following `Link` pagination."""
        async for page in self._pages(registry, URL("/v2/_catalog"), ("registry:catalog:*",), page_size):
            for name in page.get("repositories") or ():
                yield str(name)

    # ------------------------------------------------------------------------------------ manifests

    async def resolve(self, repo: RemoteRepository, reference: Reference) -> Descriptor:
        """The descriptor (media type, digest, size) of a tag or digest: HEAD, or GET when the HEAD answer
        lacks what we need or the registry does not serve HEAD (405, 501). Any other error answer is raised
        as it is, a 429 or 5xx included: a GET then would count as a pull (Docker Hub's rate limit) and meet
        the same limit. Raises OciNotFoundError when there is no such manifest."""
        ref = _reference(reference)
        resp = await self.transport.request(
            repo.registry,
            "HEAD",
            f"/v2/{repo.name}/manifests/{ref}",
            scopes=_pull(repo),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        try:
            if resp.status != 200 and resp.status not in _HEAD_UNSUPPORTED:
                raise await self.transport.raise_for(resp, method="HEAD")
            header_digest = resp.headers.get("Docker-Content-Digest")
            media_type = mt.base_media_type(resp.headers.get("Content-Type", ""))
            length = resp.headers.get("Content-Length")
            if resp.status == 200 and media_type and media_type not in mt.GENERIC_CONTENT_TYPES and length:
                digest = ref if isinstance(ref, Digest) else self._parse_digest(header_digest)
                if digest is not None:
                    return Descriptor(media_type, digest, int(length))
        finally:
            resp.release()
        return (await self.get_manifest(repo, ref)).descriptor

    @staticmethod
    def _parse_digest(text: str | None) -> Digest | None:
        try:
            return Digest.parse(text) if text else None
        except RegistryError:
            return None

    async def get_manifest(self, repo: RemoteRepository, reference: Reference) -> FetchedManifest:
        """A manifest's bytes (at most `max_manifest_bytes`), verified against the digest it was asked by
        (or, for a tag, against the registry's Docker-Content-Digest)."""
        ref = _reference(reference)
        limit = self.options.max_manifest_bytes
        async with self.transport.expect(
            repo.registry,
            "GET",
            f"/v2/{repo.name}/manifests/{ref}",
            ok=(200,),
            scopes=_pull(repo),
            headers={"Accept": MANIFEST_ACCEPT},
        ) as resp:
            if resp.content_length is not None and resp.content_length > limit:
                raise OciManifestTooLargeError(
                    f"manifest {repo}@{ref} is {resp.content_length} bytes; the limit is {limit}"
                )
            content = await resp.content.read(limit + 1)
            if len(content) > limit:
                raise OciManifestTooLargeError(f"manifest {repo}@{ref} is larger than the limit of {limit} bytes")
            header_digest = self._parse_digest(resp.headers.get("Docker-Content-Digest"))
            content_type = resp.headers.get("Content-Type")
        expected = ref if isinstance(ref, Digest) else header_digest
        digest = Digest.of(content, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise OciDigestMismatchError(f"manifest {repo}@{ref}: content has digest {digest}, not {expected}")
        return FetchedManifest(Descriptor(_media_type_of(content, content_type), digest, len(content)), content)

    async def push_manifest(
        self,
        repo: RemoteRepository,
        content: bytes,
        *,
        reference: Reference | None = None,
        media_type: str | None = None,
        update_referrers_tag: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """PUT a manifest by tag or (default) by its digest, with its media type as Content-Type (default: its
        `mediaType` field) and any extra `headers` (e.g. the registry's own `X-Hanzo-Force`). A manifest with a
        `subject` pushed to a registry without the referrers API (no `OCI-Subject` in the answer) is also added
        to the subject's referrers tag (`sha256-<hex>`), unless `update_referrers_tag` is False."""
        media_type = media_type or _media_type_of(content, None)
        descriptor = Descriptor(media_type, Digest.of(content), len(content))
        ref = _reference(reference) if reference is not None else descriptor.digest
        async with self.transport.expect(
            repo.registry,
            "PUT",
            f"/v2/{repo.name}/manifests/{ref}",
            ok=(201,),
            scopes=_push(repo),
            headers={**(headers or {}), "Content-Type": media_type},
            body=content,
        ) as resp:
            answered = self._parse_digest(resp.headers.get("Docker-Content-Digest"))
            has_subject_api = "OCI-Subject" in resp.headers
        if answered is not None and answered.algorithm == "sha256" and answered != descriptor.digest:
            raise OciProtocolError(f"registry stored manifest {repo}@{ref} as {answered}, not {descriptor.digest}")
        if update_referrers_tag and not has_subject_api:
            subject = self._subject_of(content, media_type)
            if subject is not None:
                await self._add_to_referrers_tag(repo, subject, content, media_type)
        return descriptor

    def _subject_of(self, content: bytes, media_type: str) -> Digest | None:
        try:
            parsed = parse_manifest(content, media_type, max_bytes=self.options.max_manifest_bytes)
        except RegistryError:
            return None
        return parsed.subject.digest if parsed.subject is not None else None

    async def delete_manifest(self, repo: RemoteRepository, reference: Reference) -> None:
        """DELETE a manifest (by digest) or a tag (where the registry allows it)."""
        ref = _reference(reference)
        scopes = (repository_scope(str(repo.name), "delete"),)
        async with self.transport.expect(
            repo.registry, "DELETE", f"/v2/{repo.name}/manifests/{ref}", ok=(200, 202, 204), scopes=scopes
        ):
            return

    async def list_tags(self, repo: RemoteRepository, *, page_size: int | None = None) -> AsyncIterator[str]:
        """The repository's tags, following `Link` pagination."""
        async for page in self._pages(repo.registry, URL(f"/v2/{repo.name}/tags/list"), _pull(repo), page_size):
            for tag in page.get("tags") or ():
                yield str(tag)

    async def _pages(
        self, registry: str, url: URL, scopes: tuple[str, ...], page_size: int | None
    ) -> AsyncIterator[dict[str, Any]]:
        params = {"n": str(page_size)} if page_size else None
        next_url: URL | None = url
        seen: set[str] = set()
        while next_url is not None:
            async with self.transport.expect(
                registry, "GET", next_url, ok=(200,), scopes=scopes, params=params
            ) as resp:
                document = await resp.json(content_type=None)
                link = resp.links.get("next")
                next_url = URL(str(link["url"])) if link and "url" in link else None
            params = None
            if not isinstance(document, dict):
                raise OciProtocolError(f"GET {shown(url)}: expected a JSON object")
            yield document
            if next_url is not None:
                if str(next_url) in seen:
                    raise OciProtocolError(f"GET {shown(url)}: pagination loops at {shown(next_url)}")
                seen.add(str(next_url))

    # ------------------------------------------------------------------------------------ blobs

    async def blob_size(self, repo: RemoteRepository, digest: Digest) -> int | None:
        """The blob's size if the repository has it (HEAD), else None."""
        return await blobs.blob_size(self.transport, repo, digest)

    def pull_blob(
        self, repo: RemoteRepository, digest: Digest, *, size: int | None = None, prefix: Digester | None = None
    ) -> blobs.BlobDownload:
        """The blob as an async iterator of chunks, verified and resumed (from `prefix`, bytes the caller
        already holds, when given); its `size` is known once the first chunk arrived. See `blobs.pull_blob`."""
        return blobs.BlobDownload(self.transport, repo, digest, size=size, prefix=prefix)

    async def push_blob_resumable(
        self,
        repo: RemoteRepository,
        open_at: blobs.SourceAt,
        *,
        digest: Digest,
        size: int,
        chunk_size: int | None = None,
        session: URL | None = None,
        on_session: Callable[[blobs.UploadSession], None] | None = None,
    ) -> blobs.ResumableResult:
        """A chunked push that continues `session` (an earlier run's) from the registry's offset and resumes
        after lost connections; see `blobs.push_blob_resumable`."""
        return await blobs.push_blob_resumable(
            self.transport,
            repo,
            open_at,
            digest=digest,
            size=size,
            chunk_size=chunk_size,
            session=session,
            on_session=on_session,
        )

    async def push_blob(
        self,
        repo: RemoteRepository,
        source: bytes | AsyncIterable[bytes],
        *,
        digest: Digest,
        size: int | None = None,
        method: blobs.UploadMethod = "post-put",
        chunk_size: int | None = None,
        mount_from: str | None = None,
        skip_existing: bool = True,
    ) -> str:
        """Put a blob in the repository; what happened: "mounted" (from `mount_from`), "exists" (a HEAD found
        it, with `skip_existing`) or "uploaded". A stream `source` is read once, never held whole."""
        session = None
        if mount_from is not None:
            mounted, location, min_chunk = await blobs.mount_blob(self.transport, repo, digest, from_repo=mount_from)
            if mounted:
                return "mounted"
            assert location is not None
            session = (location, min_chunk)
        elif skip_existing and await self.blob_size(repo, digest) is not None:
            return "exists"
        await blobs.push_blob(
            self.transport,
            repo,
            source,
            digest=digest,
            size=size,
            method=method,
            chunk_size=chunk_size,
            session=session,
        )
        return "uploaded"

    async def mount_blob(self, repo: RemoteRepository, digest: Digest, *, from_repo: str) -> bool:
        """Mount a blob from another repository of the same registry; False (and the session the registry
        opened instead cancelled) when it did not."""
        mounted, location, _ = await blobs.mount_blob(self.transport, repo, digest, from_repo=from_repo)
        if location is not None:
            (await self.transport.request(repo.registry, "DELETE", location, scopes=_push(repo))).release()
        return mounted

    async def delete_blob(self, repo: RemoteRepository, digest: Digest) -> None:
        scopes = (repository_scope(str(repo.name), "delete"),)
        async with self.transport.expect(
            repo.registry, "DELETE", f"/v2/{repo.name}/blobs/{digest}", ok=(200, 202, 204), scopes=scopes
        ):
            return

    # ------------------------------------------------------------------------------------ referrers

    async def referrers(
        self, repo: RemoteRepository, digest: Digest, *, artifact_type: str | None = None
    ) -> list[ReferrerDescriptor]:
        """Manifests whose subject is `digest`: the referrers API, or the referrers tag (`sha256-<hex>`) when
        the registry answers 404 to the API. Filtered by `artifact_type` (by the registry, else here)."""
        params = {"artifactType": artifact_type} if artifact_type else None
        url: URL | None = URL(f"/v2/{repo.name}/referrers/{digest}")
        found: list[ReferrerDescriptor] = []
        filtered = False
        while url is not None:
            resp = await self.transport.request(
                repo.registry, "GET", url, scopes=_pull(repo), params=params, headers={"Accept": mt.OCI_INDEX}
            )
            try:
                if resp.status == 404 and not found:
                    resp.release()
                    found = await self._referrers_from_tag(repo, digest)
                    break
                if resp.status != 200:
                    raise await self.transport.raise_for(resp, method="GET")
                document = await resp.json(content_type=None)
                filtered = "artifacttype" in resp.headers.get("OCI-Filters-Applied", "").lower()
                link = resp.links.get("next")
                url = URL(str(link["url"])) if link and "url" in link else None
                params = None
            finally:
                resp.release()
            found += _referrer_list(document)
        if artifact_type and not filtered:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    async def _referrers_from_tag(self, repo: RemoteRepository, digest: Digest) -> list[ReferrerDescriptor]:
        try:
            index = await self.get_manifest(repo, referrers_tag(digest))
        except OciNotFoundError:
            return []
        return _referrer_list(index.json())

    async def _add_to_referrers_tag(
        self, repo: RemoteRepository, subject: Digest, content: bytes, media_type: str
    ) -> None:
        """Add a manifest to its subject's referrers tag index (read, add if absent, write; not atomic: two
        concurrent writers may lose an entry, as with every client of the tag schema)."""
        parsed = parse_manifest(content, media_type, max_bytes=self.options.max_manifest_bytes)
        entry = parsed.as_referrer()
        existing = await self._referrers_from_tag(repo, subject)
        if any(d.digest == entry.digest for d in existing):
            return
        index = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [d.to_json() for d in [*existing, entry]],
        }
        body = json.dumps(index, separators=(",", ":")).encode()
        await self.push_manifest(
            repo, body, reference=referrers_tag(subject), media_type=mt.OCI_INDEX, update_referrers_tag=False
        )


def _referrer_list(document: Any) -> list[ReferrerDescriptor]:
    manifests = document.get("manifests") if isinstance(document, dict) else None
    out: list[ReferrerDescriptor] = []
    for entry in manifests if isinstance(manifests, list) else ():
        if not isinstance(entry, dict):
            continue
        try:
            artifact_type = entry.get("artifactType")
            annotations = entry.get("annotations")
            out.append(
                ReferrerDescriptor(
                    str(entry["mediaType"]),
                    Digest.parse(str(entry["digest"])),
                    int(entry["size"]),
                    artifact_type=str(artifact_type) if artifact_type is not None else None,
                    annotations={str(k): str(v) for k, v in annotations.items()}
                    if isinstance(annotations, dict)
                    else {},
                )
            )
        except (KeyError, ValueError, TypeError, RegistryError):
            continue
    return out
