"""S3BlobStore: the BlobStore on S3 (SeaweedFS, MinIO, AWS) through the blocking `minio` client.

Keys follow `services.core.storage.layout`, under `settings.prefix`. All session state lives in the
bucket, so any replica continues any upload; the process only caches hash state (`DigesterCache`).

Uploads stream and never hold a blob in memory or on local disk:

* `start_upload` writes the empty marker `uploads/<id>/started`.
* `append` cuts the request stream into segments of at most `settings.part_size` bytes (the only
  buffer) and PUTs each as `uploads/<id>/seg/<offset:020d>` with `If-None-Match: *`. Segments are
  written once, so of two writers at one offset exactly one wins; the other gets a 412, reported
  as RangeInvalidError. The session size is the end of the contiguous segment chain from 0, read
  by listing. A stream that fails midway keeps the segments already stored (a buffered partial
  segment is dropped), which is a consistent size to resume from.
* `commit` checks the digest against the hash kept while streaming (rehashing the segments on a
  cache miss, e.g. when another replica did the appends), then assembles the blob server-side
  with `compose_object` (UploadPartCopy + CompleteMultipartUpload, or CopyObject for one piece),
  which makes the blob key appear atomically and complete. S3 parts must be >= 5 MiB except the
  last, so runs of small segments (tiny chunked PATCHes) are first merged by a bounded streaming
  copy (< 15 MiB) into `uploads/<id>/tmp/merge-<offset>`; a large segment following a small run
  lends the run the bytes it lacks and joins as a ranged source. When there are more pieces than
  the part budget (huge blobs), they are composed in groups of `part_size_for(size)` bytes first,
  so a 1 TB blob still fits in 10,000 parts. Composed sources are pinned by ETag. Then the
  session prefix is deleted.

Every minio call runs in a worker thread (`asyncio.to_thread`); nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.datatypes import Object
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    UnavailableError,
)
from services.core.oci.digest import Digest, Digester
from services.core.settings import S3BlobSettings
from services.core.storage.blobs import BlobInfo
from services.core.storage.layout import (
    BLOBS,
    PART_BUDGET,
    READ_CHUNK,
    S3_MIN_PART,
    UPLOAD_MARKER,
    UPLOADS,
    DigesterCache,
    blob_digest,
    blob_key,
    is_upload_id,
    new_upload_id,
    part_size_for,
    scratch_key,
    segment_key,
    segment_offset,
    segment_prefix,
    upload_id_of,
    upload_prefix,
)

_MISSING: Final = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_LOST_RACE: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_LIST_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class _Segment:
    offset: int
    size: int
    key: str


@dataclass(frozen=True, slots=True)
class _Piece:
    """One compose source: `key` whole, or its byte range [start, start + size) when ranged."""

    key: str
    size: int
    start: int | None = None


def _end(segments: list[_Segment]) -> int:
    return segments[-1].offset + segments[-1].size if segments else 0


class S3BlobStore:
    """BlobStore + BlobPresigner on one bucket, every key under `settings.prefix`."""

    def __init__(self, settings: S3BlobSettings, *, digesters: DigesterCache | None = None) -> None:
        self._settings = settings
        self._bucket = settings.bucket
        self._prefix = settings.prefix.strip("/")
        self._digesters = digesters if digesters is not None else DigesterCache()
        # Our own pool so close() can release it; bounded timeouts so a dead server fails calls.
        self._http = urllib3.PoolManager(
            maxsize=32,
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key.get_secret_value(),
            secure=settings.secure,
            # Known region: presigning and requests never stop to ask the server for it.
            region=settings.region,
            http_client=self._http,
        )

    # -- keys ----------------------------------------------------------------------------------

    def _key(self, relative: str) -> str:
        return f"{self._prefix}/{relative}" if self._prefix else relative

    def _relative(self, key: str) -> str:
        return key[len(self._prefix) + 1 :] if self._prefix else key

    def _blob(self, digest: Digest) -> str:
        return self._key(blob_key(digest))

    # -- blocking helpers (worker threads only) ------------------------------------------------

    def _exists(self, key: str) -> Object | None:
        try:
            return self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise

    def _list(self, prefix: str) -> Iterator[Object]:
        listing: Iterator[Object] = self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
        return listing

    def _remove_prefix(self, prefix: str) -> None:
        names = [obj.object_name for obj in self._list(prefix) if obj.object_name]
        if not names:
            return
        errors = list(self._client.remove_objects(self._bucket, [DeleteObject(n) for n in names]))
        if errors:
            raise UnavailableError(f"could not delete {len(errors)} objects under {prefix}: {errors[0]}")

    def _session(self, upload_id: str) -> list[_Segment]:
        """The session's contiguous segment chain from offset 0. BlobUploadUnknownError when gone."""
        marker = self._key(upload_prefix(upload_id) + UPLOAD_MARKER)
        if not is_upload_id(upload_id) or self._exists(marker) is None:
            raise BlobUploadUnknownError(f"unknown upload {upload_id[:80]!r}")
        found: list[_Segment] = []
        for obj in self._list(self._key(segment_prefix(upload_id))):
            offset = segment_offset(obj.object_name or "")
            if offset is not None and obj.size:
                found.append(_Segment(offset, obj.size, obj.object_name or ""))
        found.sort(key=lambda s: s.offset)
        chain: list[_Segment] = []
        for segment in found:
            # Only the chain counts: a stray segment past a gap (a lost writer's) is never read.
            if segment.offset == _end(chain):
                chain.append(segment)
            elif segment.offset > _end(chain):
                break
        return chain

    def _read_range(self, key: str, start: int, size: int) -> Iterator[bytes]:
        response = self._client.get_object(self._bucket, key, offset=start, length=size)
        try:
            while chunk := response.read(READ_CHUNK):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    def _rehash(self, segments: list[_Segment], algorithm: str) -> Digester:
        digester = Digester(algorithm)
        for segment in segments:
            for chunk in self._read_range(segment.key, 0, segment.size):
                digester.update(chunk)
        return digester

    def _put_segment(self, upload_id: str, offset: int, data: bytes, digester: Digester) -> None:
        try:
            # Private API: the public put_object would turn If-None-Match into user metadata.
            self._client._put_object(
                self._bucket,
                self._key(segment_key(upload_id, offset)),
                data,
                headers={"If-None-Match": "*", "Content-Type": "application/octet-stream"},
            )
        except S3Error as exc:
            if exc.code in _LOST_RACE:
                raise RangeInvalidError(
                    f"upload {upload_id!r} already has bytes at offset {offset} (a concurrent append won)"
                ) from None
            raise
        digester.update(data)

    def _merge(self, key: str, ranges: list[_Piece]) -> _Piece:
        # Bounded (< 3 * S3_MIN_PART): only runs of small segments are ever copied through us.
        data = b"".join(
            b"".join(self._read_range(piece.key, piece.start or 0, piece.size)) for piece in ranges
        )
        self._client.put_object(self._bucket, key, io.BytesIO(data), len(data))
        return _Piece(key, len(data))

    def _plan(self, upload_id: str, segments: list[_Segment]) -> list[_Piece]:
        """Compose pieces covering the segments in order, each >= S3_MIN_PART except the last."""
        pieces: list[_Piece] = []
        pending: list[_Piece] = []
        pending_start = 0

        def flush() -> None:
            whole = len(pending) == 1 and pending[0].start is None
            if whole:
                pieces.append(pending[0])
            else:
                scratch = self._key(scratch_key(upload_id, f"merge-{pending_start:020d}"))
                pieces.append(self._merge(scratch, pending))
            pending.clear()

        for segment in segments:
            pending_size = sum(p.size for p in pending)
            if not pending and segment.size >= S3_MIN_PART:
                pieces.append(_Piece(segment.key, segment.size))
                continue
            if not pending:
                pending_start = segment.offset
            lacking = S3_MIN_PART - pending_size
            if segment.size - lacking >= S3_MIN_PART:
                pending.append(_Piece(segment.key, lacking, start=0))
                flush()
                pieces.append(_Piece(segment.key, segment.size - lacking, start=lacking))
                continue
            pending.append(_Piece(segment.key, segment.size))
            if pending_size + segment.size >= S3_MIN_PART:
                flush()
        if pending:
            flush()
        return pieces

    def _compose(self, key: str, pieces: list[_Piece]) -> None:
        sources = [
            ComposeSource(self._bucket, p.key)
            if p.start is None
            else ComposeSource(self._bucket, p.key, offset=p.start, length=p.size)
            for p in pieces
        ]
        self._client.compose_object(self._bucket, key, sources)

    def _group(self, upload_id: str, pieces: list[_Piece], size: int) -> list[_Piece]:
        """Compose runs of pieces into objects of >= part_size_for(size) so at most PART_BUDGET remain."""
        target = part_size_for(size, minimum=self._settings.part_size)
        grouped: list[_Piece] = []
        run: list[_Piece] = []
        offset = run_start = 0
        for piece in pieces:
            if not run:
                run_start = offset
            run.append(piece)
            offset += piece.size
            if sum(p.size for p in run) >= target or offset == size:
                if len(run) == 1:
                    grouped.append(run[0])
                else:
                    scratch = self._key(scratch_key(upload_id, f"group-{run_start:020d}"))
                    self._compose(scratch, run)
                    grouped.append(_Piece(scratch, sum(p.size for p in run)))
                run = []
        return grouped

    def _publish(self, upload_id: str, digest: Digest, segments: list[_Segment]) -> None:
        target = self._blob(digest)
        if self._exists(target) is None:
            size = _end(segments)
            if not segments:
                self._client.put_object(self._bucket, target, io.BytesIO(b""), 0)
            else:
                pieces = self._plan(upload_id, segments)
                if len(pieces) > PART_BUDGET:
                    pieces = self._group(upload_id, pieces, size)
                # Atomic: the key appears only when CopyObject/CompleteMultipartUpload finishes.
                self._compose(target, pieces)
            stored = self._exists(target)
            if stored is None or stored.size != size:
                raise UnavailableError(f"S3 stored {target} with size {stored and stored.size}, not {size}")
        self._remove_prefix(self._key(upload_prefix(upload_id)))

    # -- reading -------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        obj = await asyncio.to_thread(self._exists, self._blob(digest))
        return None if obj is None else BlobInfo(digest, obj.size or 0)

    async def read(
        self, digest: Digest, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            # minio reads length 0 as "to the end"; an empty range needs no request.
            if await self.stat(digest) is None:
                raise BlobUnknownError(f"blob {digest} unknown", detail={"digest": str(digest)})
            return
        try:
            response = await asyncio.to_thread(
                self._client.get_object, self._bucket, self._blob(digest), offset, length or 0
            )
        except S3Error as exc:
            if exc.code in _MISSING:
                raise BlobUnknownError(f"blob {digest} unknown", detail={"digest": str(digest)}) from None
            if exc.code == "InvalidRange":
                raise RangeInvalidError(f"range from {offset} is outside blob {digest}") from None
            raise
        try:
            while chunk := await asyncio.to_thread(response.read, READ_CHUNK):
                yield chunk
        finally:
            # Synchronous on purpose: this may run while the generator is being finalized.
            response.close()
            response.release_conn()

    async def presign_get(self, digest: Digest, *, expires_seconds: int) -> str:
        return await asyncio.to_thread(
            self._client.presigned_get_object,
            self._bucket,
            self._blob(digest),
            timedelta(seconds=expires_seconds),
        )

    # -- uploads -------------------------------------------------------------------------------

    async def start_upload(self) -> str:
        upload_id = new_upload_id()
        marker = self._key(upload_prefix(upload_id) + UPLOAD_MARKER)
        await asyncio.to_thread(self._client.put_object, self._bucket, marker, io.BytesIO(b""), 0)
        return upload_id

    async def upload_size(self, upload_id: str) -> int:
        return _end(await asyncio.to_thread(self._session, upload_id))

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *, offset: int) -> int:
        segments = await asyncio.to_thread(self._session, upload_id)
        size = _end(segments)
        if size != offset:
            raise RangeInvalidError(
                f"upload {upload_id!r} holds {size} bytes; a chunk must start there, not at {offset}",
                detail={"size": size, "offset": offset},
            )
        digester = self._digesters.take(upload_id, size=size)
        if digester is None:
            digester = await asyncio.to_thread(self._rehash, segments, "sha256")
        limit = self._settings.part_size
        position = size
        buffer = bytearray()
        # On failure the digester is dropped, not cached: a cancelled worker may still update it.
        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= limit:
                segment = bytes(buffer[:limit])
                del buffer[:limit]
                await asyncio.to_thread(self._put_segment, upload_id, position, segment, digester)
                position += len(segment)
        if buffer:
            segment = bytes(buffer)
            buffer.clear()
            await asyncio.to_thread(self._put_segment, upload_id, position, segment, digester)
            position += len(segment)
        self._digesters.put(upload_id, digester)
        return position

    async def commit(self, upload_id: str, digest: Digest) -> BlobInfo:
        segments = await asyncio.to_thread(self._session, upload_id)
        size = _end(segments)
        digester = self._digesters.take(upload_id, size=size, algorithm=digest.algorithm)
        if digester is None:
            digester = await asyncio.to_thread(self._rehash, segments, digest.algorithm)
        actual = digester.digest()
        if actual != digest:
            await self.abort(upload_id)
            raise DigestInvalidError(
                f"upload hashes to {actual}, not {digest}",
                detail={"expected": str(digest), "actual": str(actual)},
            )
        await asyncio.to_thread(self._publish, upload_id, digest, segments)
        self._digesters.discard(upload_id)
        return BlobInfo(digest, size)

    async def abort(self, upload_id: str) -> None:
        if not is_upload_id(upload_id):
            return
        self._digesters.discard(upload_id)
        await asyncio.to_thread(self._remove_prefix, self._key(upload_prefix(upload_id)))

    # -- deleting and listing ------------------------------------------------------------------

    async def delete(self, digest: Digest) -> bool:
        key = self._blob(digest)
        # S3 DELETE does not say whether the key existed; the port does, hence the HEAD.
        if await asyncio.to_thread(self._exists, key) is None:
            return False
        await asyncio.to_thread(self._client.remove_object, self._bucket, key)
        return True

    async def _iter_objects(self, prefix: str) -> AsyncIterator[Object]:
        listing = self._list(self._key(prefix))
        # One thread hop per page-sized batch, not per object.
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(listing, _LIST_BATCH))):
            for obj in batch:
                yield obj

    async def iter_all(self) -> AsyncIterator[BlobInfo]:
        async for obj in self._iter_objects(f"{BLOBS}/"):
            digest = blob_digest(self._relative(obj.object_name or ""))
            if digest is not None:
                yield BlobInfo(digest, obj.size or 0)

    async def iter_uploads(self) -> AsyncIterator[tuple[str, float]]:
        # Listing order is key order, so each session's objects arrive together.
        current: str | None = None
        newest = 0.0
        async for obj in self._iter_objects(f"{UPLOADS}/"):
            upload_id = upload_id_of(self._relative(obj.object_name or ""))
            if upload_id is None:
                continue
            modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
            if upload_id != current:
                if current is not None:
                    yield current, newest
                current, newest = upload_id, modified
            else:
                newest = max(newest, modified)
        if current is not None:
            yield current, newest

    # -- lifecycle -----------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            exists = await asyncio.to_thread(self._client.bucket_exists, self._bucket)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"S3 at {self._settings.endpoint} unreachable: {exc}") from exc
        if not exists:
            raise UnavailableError(f"S3 bucket {self._bucket!r} does not exist")

    async def close(self) -> None:
        self._http.clear()
