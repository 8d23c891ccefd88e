"""Blob transfers over a Transport: streamed, verified pulls that resume with Range after a dropped
connection (or from bytes the caller already holds), pushes (monolithic, single POST, chunked) with
cross-repository mount, and resumable chunked pushes that continue a session from the registry's offset."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
from yarl import URL

from services.core.client.auth import repository_scope
from services.core.client.errors import (
    OciClientError,
    OciConnectionError,
    OciDigestMismatchError,
    OciNotFoundError,
    OciProtocolError,
    OciResponseError,
)
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


_DIGESTER_SINK: Final[ContextVar[Callable[[Digester], None] | None]] = ContextVar("pull_digester_sink", default=None)


@contextlib.contextmanager
def sharing_pull_digesters(sink: Callable[[Digester], None]) -> Iterator[None]:
    """Blob pulls iterated inside (by this task) hand `sink` the Digester that checks their bytes, before
    their first chunk. It has hashed exactly the chunks the pull has yielded so far, so whoever stores them
    can take that hash instead of computing it a second time (`HashedChunks` in services/core/storage/blobs.py).
    A pull from a `prefix` hands nothing: its digester has hashed bytes it never yielded."""
    token = _DIGESTER_SINK.set(sink)
    try:
        yield
    finally:
        _DIGESTER_SINK.reset(token)


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
    transport: Transport,
    repo: RemoteRepository,
    digest: Digest,
    *,
    size: int | None = None,
    prefix: Digester | None = None,
    on_size: Callable[[int], None] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The blob's bytes, chunk by chunk. A dropped or stalled connection is resumed with `Range: bytes=N-`
    (at most `max_resumes` times); redirects are followed. The digest (and `size`,
    when given) are checked as bytes pass: OciDigestMismatchError is raised after the last chunk if they do
    not match, so the caller must not commit what it received before the iterator finishes.

    `prefix` is a digester that has already hashed the first `prefix.size` bytes of the blob (a `.part` file
    left by an earlier run): the pull asks for the rest only, and the digest is checked over the whole.
    `on_size` is told the blob's whole size as the registry announces it (Content-Length, Content-Range).
    Inside `sharing_pull_digesters` the digester is handed out, so the bytes are hashed once for this check
    and a store's."""
    digester = prefix if prefix is not None else Digester(digest.algorithm)
    if digester.algorithm != digest.algorithm:
        raise ValueError(f"prefix hashed with {digester.algorithm}, the blob's digest is {digest.algorithm}")
    if prefix is None and (sink := _DIGESTER_SINK.get()) is not None:
        sink(digester)
    resumes = 0
    options = transport.options
    while True:
        offset = digester.size
        if size is not None and offset >= size:
            break  # the caller held every byte already: nothing to ask for, only the checks below
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
            if on_size is not None:
                announced = _announced_size(resp)
                if announced is not None:
                    on_size(announced)
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


def _announced_size(resp: aiohttp.ClientResponse) -> int | None:
    """The whole blob's size from a 200's Content-Length or a 206's Content-Range total."""
    if resp.status == 200:
        return resp.content_length
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(match.group(3)) if match and match.group(3) != "*" else None


class BlobDownload:
    """A blob pull as an async iterator of verified chunks (see `pull_blob`) that also tells its `size`: the
    one the caller gave, else the registry's, known once the first answer arrived."""

    def __init__(
        self,
        transport: Transport,
        repo: RemoteRepository,
        digest: Digest,
        *,
        size: int | None = None,
        prefix: Digester | None = None,
    ) -> None:
        self.digest = digest
        self.size = size
        self._chunks = pull_blob(transport, repo, digest, size=size, prefix=prefix, on_size=self._learn)

    def _learn(self, size: int) -> None:
        if self.size is None:
            self.size = size

    def __aiter__(self) -> BlobDownload:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()


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


# ---------------------------------------------------------------------------------------------- resumable push


@dataclass(frozen=True, slots=True)
class UploadSession:
    """An open upload session: where to send the next chunk and how many bytes the registry holds."""

    location: URL
    offset: int


@dataclass(frozen=True, slots=True)
class ResumableResult:
    """What a resumable push did: the offset it started from (non-zero: it continued an earlier session),
    the bytes it sent (chunks re-sent after a break included), and how often it resumed within this call."""

    resumed_from: int
    bytes_sent: int
    resumes: int


SourceAt = Callable[[int], AsyncIterable[bytes]]
"""The blob's bytes from an offset to its end (a file opened and seeked): a resumed push reads from there."""


def _range_end(text: str | None) -> int:
    """Bytes held according to an upload's `Range: 0-<last>` header. `0-0` is read as empty: the spec's form
    cannot tell 0 bytes from 1, and a wrong guess only costs a 416 and a fresh session."""
    start, sep, end = (text or "").strip().removeprefix("bytes=").partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) != 0:
        raise OciProtocolError(f"upload status without a usable Range header: {text!r}")
    return 0 if int(end) == 0 else int(end) + 1


async def upload_status(transport: Transport, repo: RemoteRepository, location: URL) -> UploadSession:
    """The session's state (GET its Location). OciNotFoundError when the registry no longer has it."""
    async with transport.expect(repo.registry, "GET", location, ok=(204, 200), scopes=_push_scopes(repo)) as resp:
        where = _location(resp) if resp.headers.get("Location") else location
        return UploadSession(where, _range_end(resp.headers.get("Range")))


def _transient(exc: OciClientError) -> bool:
    """Worth resuming after: a lost connection or a server that failed for now (5xx, 429)."""
    if isinstance(exc, OciConnectionError):
        return True
    return isinstance(exc, OciResponseError) and (exc.status >= 500 or exc.status == 429)


async def push_blob_resumable(
    transport: Transport,
    repo: RemoteRepository,
    open_at: SourceAt,
    *,
    digest: Digest,
    size: int,
    chunk_size: int | None = None,
    session: URL | None = None,
    on_session: Callable[[UploadSession], None] | None = None,
) -> ResumableResult:
    """A chunked upload that survives dropped connections and restarts of the caller.

    `session` is the Location of an upload an earlier run opened: its offset is read (GET) and the push
    continues there; a session the registry has forgotten (404) is started again. `on_session` is called
    with the session after it opens and after every chunk the registry accepted, so a caller can persist it
    and continue after being killed. Within the call, a lost connection or a 5xx answer is resumed from the
    registry's offset (at most `max_resumes` times in a row without progress). A 401 on a chunk is answered
    by the transport with a refreshed token (chunks are bytes, so they can be sent again): a transfer is
    never limited by a token's lifetime. The digest is verified by the registry when the session closes (a
    resumed push never sees the bytes sent before, so it cannot hash them itself)."""
    options = transport.options
    chunk = chunk_size or options.chunk_size
    current: UploadSession | None = None
    if session is not None:
        try:
            current = await upload_status(transport, repo, session)
        except OciNotFoundError:
            current = None  # expired, cancelled or collected: start again
        except OciProtocolError:
            current = None
        if current is not None and current.offset > size:
            current = None
    if current is None:
        location, min_chunk = await _start_session(transport, repo)
        chunk = max(chunk, min_chunk)
        current = UploadSession(location, 0)
    if on_session is not None:
        on_session(current)
    resumed_from, sent, resumes, failures = current.offset, 0, 0, 0
    while True:
        progress = current.offset
        try:
            if current.offset < size:
                async for piece in _rechunk(open_at(current.offset), chunk):
                    end = current.offset + len(piece)
                    if end > size:
                        raise OciDigestMismatchError(f"the source holds more than the {size} bytes announced")
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{current.offset}-{end - 1}",
                        "Content-Length": str(len(piece)),
                    }
                    sent += len(piece)
                    async with transport.expect(
                        repo.registry,
                        "PATCH",
                        current.location,
                        ok=(202,),
                        scopes=_push_scopes(repo),
                        headers=headers,
                        body=piece,
                    ) as resp:
                        current = UploadSession(_location(resp), end)
                    if on_session is not None:
                        on_session(current)
            if current.offset != size:
                raise OciDigestMismatchError(f"the source ended at byte {current.offset}, not at {size}")
            async with transport.expect(
                repo.registry,
                "PUT",
                current.location,
                ok=(201,),
                scopes=_push_scopes(repo),
                params={"digest": str(digest)},
                body=b"",
                headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
            ):
                return ResumableResult(resumed_from, sent, resumes)
        except OciResponseError as exc:
            if exc.status == 416:
                # The registry holds other bytes than we thought (a guess at `0-0`, a racing writer): start over.
                location, _ = await _start_session(transport, repo)
                current = UploadSession(location, 0)
                failures += 1
                if failures > options.max_resumes:
                    raise
                continue
            if not _transient(exc):
                raise
            error: OciClientError = exc
        except OciConnectionError as exc:
            error = exc
        failures = 0 if current.offset > progress else failures + 1
        if failures > options.max_resumes:
            raise error
        resumes += 1
        log.info("chunked push of %s broke at byte %d (%r); resuming", digest, current.offset, error)
        await asyncio.sleep(options.resume_delay * max(failures, 1))
        try:
            current = await upload_status(transport, repo, current.location)
        except OciNotFoundError:
            # Gone after our closing PUT: the answer was lost, not the blob. Otherwise: start again.
            if await blob_size(transport, repo, digest) == size:
                return ResumableResult(resumed_from, sent, resumes)
            location, _ = await _start_session(transport, repo)
            current = UploadSession(location, 0)
        except (OciConnectionError, OciResponseError) as status_error:
            if not _transient(status_error):
                raise
            continue  # still down: the next round fails fast and counts against max_resumes
        if on_session is not None:
            on_session(current)
