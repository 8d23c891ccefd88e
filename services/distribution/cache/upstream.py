"""Upstream requests of the pull-through cache, through the core OCI client (its transport does the token
dance), with every failure classified: `UpstreamFailure` says what the upstream answered (a status, a
Retry-After) or why it could not be asked (unreachable, timeout), for metrics, stale serves and error answers.

Manifests are fetched here rather than with `OciClient.resolve/get_manifest` because a 429's Retry-After must be
passed on, and `resolve` answers a HEAD it does not like with a GET, which counts against Docker Hub's limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aiohttp

from services.core.client import (
    MANIFEST_ACCEPT,
    OciClient,
    OciClientError,
    OciConnectionError,
    OciDigestMismatchError,
    OciResponseError,
    RemoteRepository,
)
from services.core.client.auth import repository_scope
from services.core.client.errors import OciAuthenticationError, OciManifestTooLargeError, parse_error_body
from services.core.errors import RegistryError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import Tag

_ERROR_BODY: Final = 64 * 1024
T = TypeVar("T")


class UpstreamFailure(Exception):
    """The upstream did not give what was asked. `reason` is a metric label: unreachable, timeout, auth,
    not_found, 429, 5xx, status_<n>, digest, protocol."""

    def __init__(self, reason: str, message: str, *, status: int | None = None, retry_after: str | None = None
                 ) -> None:
        super().__init__(message)
        self.reason, self.message, self.status, self.retry_after = reason, message, status, retry_after

    @property
    def not_found(self) -> bool:
        return self.reason == "not_found"


def _reason(status: int) -> str:
    if status == 404:
        return "not_found"
    if status == 429:
        return "429"
    if status in (401, 403):
        return "auth"
    return "5xx" if status >= 500 else f"status_{status}"


def classify(exc: BaseException, what: str) -> UpstreamFailure:
    """An UpstreamFailure for an exception of the OCI client (or a timeout)."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"{what}: no answer in time")
    if isinstance(exc, OciResponseError):
        return UpstreamFailure(_reason(exc.status), f"{what}: {exc.status} {exc.message}"[:500], status=exc.status)
    if isinstance(exc, OciConnectionError | aiohttp.ClientError | OSError):
        return UpstreamFailure("unreachable", f"{what}: unreachable ({type(exc).__name__})")
    if isinstance(exc, OciAuthenticationError):
        return UpstreamFailure("auth", f"{what}: {exc}"[:500])
    if isinstance(exc, OciDigestMismatchError):
        return UpstreamFailure("digest", f"{what}: {exc}"[:500])
    if isinstance(exc, OciClientError | RegistryError):
        return UpstreamFailure("protocol", f"{what}: {exc}"[:500])
    raise exc


async def guarded(what: str, timeout: float, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` within `timeout`, its failures as UpstreamFailure."""
    try:
        async with asyncio.timeout(timeout):
            return await call()
    except (OciClientError, TimeoutError, aiohttp.ClientError, OSError, RegistryError) as exc:
        raise classify(exc, what) from exc


def _scopes(repo: RemoteRepository) -> tuple[str]:
    return (repository_scope(str(repo.name), "pull"),)


async def _failure(resp: aiohttp.ClientResponse, what: str) -> UpstreamFailure:
    body = b""
    if resp.method != "HEAD":
        try:
            body = await resp.content.read(_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
    errors = parse_error_body(body)
    explained = "; ".join(f"{e.code}: {e.message}" for e in errors) or body[:200].decode(errors="replace").strip()
    return UpstreamFailure(_reason(resp.status), f"{what}: {resp.status} {explained}".strip()[:500],
                           status=resp.status, retry_after=resp.headers.get("Retry-After"))


async def head_manifest(client: OciClient, repo: RemoteRepository, reference: Tag | Digest) -> Digest:
    """The digest `reference` has upstream, by HEAD only (Docker Hub does not count it as a pull); a registry
    that answers no Docker-Content-Digest is asked with a GET."""
    what = f"HEAD {repo}:{reference}"
    resp = await client.transport.request(repo.registry, "HEAD", f"/v2/{repo.name}/manifests/{reference}",
                                          scopes=_scopes(repo), headers={"Accept": MANIFEST_ACCEPT})
    try:
        if resp.status != 200:
            raise await _failure(resp, what)
        header = resp.headers.get("Docker-Content-Digest")
    finally:
        resp.release()
    if header:
        try:
            return Digest.parse(header)
        except RegistryError:
            pass
    return (await get_manifest(client, repo, reference, max_bytes=client.options.max_manifest_bytes))[0]


async def get_manifest(client: OciClient, repo: RemoteRepository, reference: Tag | Digest, *, max_bytes: int
                       ) -> tuple[Digest, str, bytes]:
    """(digest, media type, exact bytes) of a manifest, verified against the digest asked for, or (a tag)
    the upstream's Docker-Content-Digest."""
    what = f"GET {repo}:{reference}"
    resp = await client.transport.request(repo.registry, "GET", f"/v2/{repo.name}/manifests/{reference}",
                                          scopes=_scopes(repo), headers={"Accept": MANIFEST_ACCEPT})
    try:
        if resp.status != 200:
            raise await _failure(resp, what)
        content = await resp.content.read(max_bytes + 1)
        if len(content) > max_bytes:
            raise OciManifestTooLargeError(f"{what}: larger than {max_bytes} bytes")
        header = resp.headers.get("Docker-Content-Digest")
        content_type = resp.headers.get("Content-Type", "")
    finally:
        resp.release()
    expected = reference if isinstance(reference, Digest) else (Digest.parse(header) if header else None)
    digest = Digest.of(content, expected.algorithm if expected else "sha256")
    if expected is not None and digest != expected:
        raise OciDigestMismatchError(f"{what}: content has digest {digest}, not {expected}")
    media_type = mt.base_media_type(content_type)
    if not media_type or media_type in mt.GENERIC_CONTENT_TYPES:
        media_type = ""  # the content model reads `mediaType` from the manifest
    return digest, media_type, content


async def blob_size(client: OciClient, repo: RemoteRepository, digest: Digest) -> int:
    """The blob's size upstream (HEAD); UpstreamFailure not_found when it has no such blob."""
    what = f"HEAD {repo}@{digest}"
    resp = await client.transport.request(repo.registry, "HEAD", f"/v2/{repo.name}/blobs/{digest}",
                                          scopes=_scopes(repo))
    try:
        if resp.status != 200:
            raise await _failure(resp, what)
        length = resp.headers.get("Content-Length")
    finally:
        resp.release()
    if length is None or not length.isdigit():
        raise UpstreamFailure("protocol", f"{what}: no Content-Length")
    return int(length)
