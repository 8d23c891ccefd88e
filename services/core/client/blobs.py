"""Blob transfers over a Transport: streamed, verified pulls that resume with Range after a dropped
connection, and pushes (monolithic, single POST, chunked) with cross-repository mount."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final, Literal

import aiohttp
from yarl import URL

from services.core.client.auth import repository_scope
from services.core.client.errors import OciClientError, OciConnectionError, OciDigestMismatchError, OciProtocolError
from services.core.client.reference import RemoteRepository
from services.core.client.transport import Transport, shown
from services.core.oci.digest import Digest, Digester

log = logging.getLogger(__name__)

UploadMethod = Literal["post-put", "post", "chunked"]
"""post-put: POST a session, PUT ?digest= with the body (streams; the most widely supported).
post: one POST ?digest= with the body (bytes only; falls back to PUT when the registry opens a session).
chunked: POST a session, PATCH chunks with Content-Range, PUT ?digest= to close."""

_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_BROKEN: Final = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)


def _pull_scopes(repo: RemoteRepository) -> tuple[str]:
    return (repository_scope(str(repo.name), "pull"),)


def _push_scopes(repo: RemoteRepository) -> tuple[str]:
    return (repository_scope(str(repo.name), "pull", "push"),)


def _blob_path(repo: RemoteRepository, digest: Digest) -> str:
    return f"/v2/{repo.name}/blobs/{digest}"


def _resume_offset(resp: aiohttp.ClientResponse, offset: int) -> int:
    """How many bytes at the head of `resp` to skip to continue at `offset` (0 when it honoured the Range)."""
    if resp.status == 200:
        return offset  # the Range was ignored: the whole blob again
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        raise OciProtocolError(
            f"GET {shown(resp.url)}: asked for bytes {offset}-, got Content-Range {resp.headers.get('Content-Range')!r}"
        )
    return 0


async def pull_blob(
    transport: Transport, repo: RemoteRepository, digest: Digest, *, size: int | None = None
) -> AsyncIterator[bytes]:
    """The blob's bytes, chunk by chunk. A dropped or stalled connection is resumed with `Range: bytes=N-`
    (at most `max_resumes` times); redirects are followed. The digest (and `size`, when given) are checked
    as bytes pass: OciDigestMismatchError is raised after the last chunk if they do not match, so the
    caller must not commit what it received before the iterator finishes."""
    digester = Digester(digest.algorithm)
    resumes = 0
    options = transport.options
    while True:
        offset = digester.size
        headers = {"Accept": "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = await transport.request(
                repo.registry, "GET", _blob_path(repo, digest), scopes=_pull_scopes(repo), headers=headers
            )
        except OciConnectionError:
            if not offset or resumes >= options.max_resumes:
                raise
            resumes += 1
            await asyncio.sleep(options.resume_delay * resumes)
            continue
        try:
            if resp.status not in (200, 206) or (resp.status == 206 and not offset):
                raise await transport.raise_for(resp, method="GET")
            skip = _resume_offset(resp, offset)
            try:
                async for chunk in resp.content.iter_chunked(options.read_chunk_size):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    digester.update(chunk)
                    if size is not None and digester.size > size:
                        raise OciDigestMismatchError(f"blob {digest} is larger than its expected {size} bytes")
                    yield chunk
            except _BROKEN as exc:
                if resumes >= options.max_resumes:
                    raise OciConnectionError(
                        f"GET {shown(resp.url)}: connection broken at byte {digester.size}, "
                        f"gave up after {resumes} resumes: {exc!r}"
                    ) from exc
                resumes += 1
                log.info("blob pull of %s broke at byte %d (%r); resuming", digest, digester.size, exc)
                await asyncio.sleep(options.resume_delay * resumes)
                continue
        finally:
            resp.release()
        break
    if size is not None and digester.size != size:
        raise OciDigestMismatchError(f"blob {digest}: received {digester.size} bytes, expected {size}")
    if digester.digest() != digest:
        raise OciDigestMismatchError(f"blob {digest}: received content has digest {digester.digest()}")


async def blob_size(transport: Transport, repo: RemoteRepository, digest: Digest) -> int | None:
    """The size of the blob in the repository (HEAD), None when it is not there."""
    resp = await transport.request(repo.registry, "HEAD", _blob_path(repo, digest), scopes=_pull_scopes(repo))
    try:
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise await transport.raise_for(resp, method="HEAD")
        return int(resp.headers.get("Content-Length", "0") or 0)
    finally:
        resp.release()


def _location(resp: aiohttp.ClientResponse) -> URL:
    location = resp.headers.get("Location")
    if not location:
        raise OciProtocolError(f"{resp.method} {shown(resp.url)}: {resp.status} without a Location header")
    return resp.url.join(URL(location, encoded=True))


async def mount_blob(
    transport: Transport, repo: RemoteRepository, digest: Digest, *, from_repo: str
) -> tuple[bool, URL | None, int]:
    """Try `POST ?mount=&from=`: (True, None, 0) when mounted; else (False, upload session URL, minimum chunk
    length) of the session the registry opened instead (the spec's fallback)."""
    scopes = (*_push_scopes(repo), repository_scope(from_repo, "pull"))
    async with transport.expect(
        repo.registry,
        "POST",
        f"/v2/{repo.name}/blobs/uploads/",
        ok=(201, 202),
        scopes=scopes,
        params={"mount": str(digest), "from": from_repo},
    ) as resp:
        if resp.status == 201:
            return True, None, 0
        return False, _location(resp), _min_chunk(resp)


def _min_chunk(resp: aiohttp.ClientResponse) -> int:
    try:
        return max(int(resp.headers.get("OCI-Chunk-Min-Length", "0")), 0)
    except ValueError:
        return 0


async def _start_session(transport: Transport, repo: RemoteRepository) -> tuple[URL, int]:
    async with transport.expect(
        repo.registry, "POST", f"/v2/{repo.name}/blobs/uploads/", ok=(202,), scopes=_push_scopes(repo)
    ) as resp:
        return _location(resp), _min_chunk(resp)


async def _rechunk(source: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """`source` cut into pieces of `size` bytes (the last one shorter); at most `size` bytes buffered."""
    buffer = bytearray()
    async for chunk in source:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def _as_stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push_blob(
    transport: Transport,
    repo: RemoteRepository,
    source: bytes | AsyncIterable[bytes],
    *,
    digest: Digest,
    size: int | None = None,
    method: UploadMethod = "post-put",
    chunk_size: int | None = None,
    session: tuple[URL, int] | None = None,
) -> None:
    """Upload one blob. `session` continues an upload the registry already opened (a refused mount)."""
    registry = repo.registry
    if method == "post" and session is None:
        if not isinstance(source, bytes):
            raise ValueError("a single-POST upload needs the blob as bytes; use post-put to stream")
        async with transport.expect(
            registry,
            "POST",
            f"/v2/{repo.name}/blobs/uploads/",
            ok=(201, 202),
            scopes=_push_scopes(repo),
            params={"digest": str(digest)},
            body=source,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            if resp.status == 201:
                return
            session = (_location(resp), _min_chunk(resp))
    location, min_chunk = session or await _start_session(transport, repo)
    if method == "chunked":
        chunks = _as_stream(source) if isinstance(source, bytes) else source
        location = await _patch_all(
            transport,
            repo,
            location,
            chunks,
            chunk_size=max(chunk_size or transport.options.chunk_size, min_chunk),
            digest=digest,
        )
        body: bytes | AsyncIterable[bytes] = b""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
    else:
        body = source
        headers = {"Content-Type": "application/octet-stream"}
        known = len(source) if isinstance(source, bytes) else size
        if known is not None:
            headers["Content-Length"] = str(known)
    async with transport.expect(
        registry,
        "PUT",
        location,
        ok=(201,),
        scopes=_push_scopes(repo),
        params={"digest": str(digest)},
        body=body,
        headers=headers,
    ):
        return


async def _patch_all(
    transport: Transport,
    repo: RemoteRepository,
    location: URL,
    chunks: AsyncIterable[bytes],
    *,
    chunk_size: int,
    digest: Digest,
) -> URL:
    """PATCH every chunk in order, each to the Location the previous answer gave; the URL to close with.
    The digest is checked before the session is closed (and the session cancelled when it does not match)."""
    digester = Digester(digest.algorithm)
    async for chunk in _rechunk(chunks, chunk_size):
        start = digester.size
        digester.update(chunk)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{digester.size - 1}",
            "Content-Length": str(len(chunk)),
        }
        async with transport.expect(
            repo.registry, "PATCH", location, ok=(202,), scopes=_push_scopes(repo), headers=headers, body=chunk
        ) as resp:
            location = _location(resp)
    if digester.digest() != digest:
        with contextlib.suppress(OciClientError):
            (await transport.request(repo.registry, "DELETE", location, scopes=_push_scopes(repo))).release()
        raise OciDigestMismatchError(f"pushed content has digest {digester.digest()}, not {digest}")
    return location
