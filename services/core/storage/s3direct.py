"""`S3BlobStore.put`: a blob whose digest is known before its bytes, streamed to its own key.

An upload session (s3.py) must park its bytes under `uploads/<id>/` and copy them to the blob key at
commit, because S3 cannot complete a multipart upload under another key and the digest arrives last.
A monolithic push (`POST ?digest=` with the body, or `PUT ?digest=` with the whole body) names the
digest first, so here the multipart upload is created at the blob key itself and completed only
after the streamed bytes hashed to that digest; a mismatch aborts it, and an incomplete multipart
upload is invisible, so nothing unverified ever appears. That saves the commit-time copy: the
largest cost of a push on S3 after the upload itself. A stream that brings its own hash of the
same bytes (`HashedChunks`: a verified pull through the cache) is not hashed again; its hash is
the one compared.

Crash safety: before the first part, a marker `uploads/<id>/direct` (JSON: the blob key, later also
the multipart UploadId) makes the attempt an ordinary upload session to `iter_uploads`, so the
upload janitor aborts what a dead process left behind (`abort_direct`); a live stream rewrites the
marker every MARKER_REFRESH_SECONDS, so a long one is never taken for abandoned. Content already stored is
hashed and not written again: rewriting an object under a reader in progress would gain nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from minio.datatypes import Part
from minio.error import S3Error

from services.core.errors import DigestInvalidError, SizeInvalidError
from services.core.oci.digest import Digest, Digester
from services.core.storage.blobs import BlobInfo, OfferedHash, settled_hash, shared_hash
from services.core.storage.layout import S3_MAX_PARTS, direct_key, new_upload_id

if TYPE_CHECKING:
    from services.core.storage.s3 import S3BlobStore

T = TypeVar("T")

IN_FLIGHT: Final = 2
"""Parts one upload (a direct put or a session append) sends concurrently while the stream keeps
arriving; a free slot is awaited before the next part is cut, so memory stays near IN_FLIGHT + 1 parts."""
VERIFY_BATCH: Final = 4 * 1024 * 1024
"""Bytes hashed per step when stored content is only verified."""
MARKER_REFRESH_SECONDS: Final = 60.0
"""How often a streaming put rewrites its marker, so the upload janitor never takes it for abandoned."""
_UNRECORDED_WINDOW: Final = timedelta(minutes=5)
"""A multipart upload at the blob key initiated this close after a dead marker is taken as its own."""


def _mismatch(digest: Digest, actual: Digest) -> DigestInvalidError:
    return DigestInvalidError(
        f"upload hashes to {actual}, not {digest}", detail={"expected": str(digest), "actual": str(actual)}
    )


def cut(buffered: list[bytes], size: int) -> tuple[bytes, list[bytes]]:
    """The first `size` bytes of `buffered` (which holds at least that many) and the rest."""
    taken: list[bytes] = []
    total = 0
    for index, chunk in enumerate(buffered):
        if total + len(chunk) >= size:
            split = size - total
            rest = buffered[index + 1 :]
            if split < len(chunk):
                taken.append(chunk[:split])
                rest.insert(0, chunk[split:])
            else:
                taken.append(chunk)
            return b"".join(taken), rest
        taken.append(chunk)
        total += len(chunk)
    raise ValueError(f"{total} bytes buffered, fewer than {size}")


async def free_slot(uploads: Sequence[asyncio.Task[Any]]) -> None:
    """Wait until fewer than IN_FLIGHT of `uploads` are running; raise the first that failed."""
    running = [task for task in uploads if not task.done()]
    if len(running) >= IN_FLIGHT:
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    for task in uploads:
        if task.done() and (error := task.exception()) is not None:
            raise error


async def settle(uploads: Sequence[asyncio.Task[T]]) -> list[T]:
    """Every upload's result, in order, once all finished; raises the first failure."""
    if uploads:
        await asyncio.wait(uploads)
    for task in uploads:
        if (error := task.exception()) is not None:
            raise error
    return [task.result() for task in uploads]


async def quiesce(uploads: Sequence[asyncio.Task[Any]], hashing: asyncio.Task[None] | None) -> None:
    """After a failure: stop hashing and let every upload finish, their failures retrieved (expected
    here, not news), so the caller can see which parts S3 stored."""
    if hashing is not None:
        hashing.cancel()
    if uploads:
        await asyncio.wait(uploads)
    for task in uploads:
        if not task.cancelled():
            task.exception()


async def hash_after(previous: asyncio.Task[None] | None, digester: Digester, data: bytes) -> None:
    if previous is not None:
        await previous
    await asyncio.to_thread(digester.update, data)


class DirectPut:
    """One `put`: hash while streaming into a multipart upload at the blob key; complete if verified."""

    def __init__(self, store: S3BlobStore, digest: Digest) -> None:
        self._store = store
        self._digest = digest
        self._target = store._blob(digest)
        self._digester = Digester(digest.algorithm)
        self._hashing: asyncio.Task[None] | None = None
        self._received = 0
        self._offers_hash: AsyncIterable[bytes] | None = None
        """The stream, until its first bytes are hashed: if it brings its own hash (HashedChunks), that one
        is taken and nothing is hashed here."""
        self._shared: OfferedHash | None = None
        self._session: str | None = None
        self._multipart: str | None = None
        self._parts: list[asyncio.Task[Part]] = []
        self._marked = 0.0  # when the marker was last written (monotonic)

    async def run(self, chunks: AsyncIterable[bytes]) -> BlobInfo:
        self._offers_hash = chunks
        if await asyncio.to_thread(self._store._exists, self._target) is not None:
            return await self._verify_only(chunks)
        try:
            return await self._stream(chunks)
        except BaseException:
            await asyncio.shield(self._abandon())
            raise

    async def _verify_only(self, chunks: AsyncIterable[bytes]) -> BlobInfo:
        # Nothing to upload, so nothing else paces the stream: hash in batches, one at a time, while
        # the next batch arrives (memory: two batches, whatever the client's speed).
        batch: list[bytes] = []
        size = 0
        async for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            self._received += len(chunk)
            if size >= VERIFY_BATCH:
                if self._hashing is not None:
                    await self._hashing
                self._hash(b"".join(batch))
                batch, size = [], 0
        self._hash(b"".join(batch))
        actual = await self._hashed()
        if actual != self._digest:
            raise _mismatch(self._digest, actual)
        return BlobInfo(self._digest, self._received)

    async def _stream(self, chunks: AsyncIterable[bytes]) -> BlobInfo:
        buffered: list[bytes] = []
        length = 0
        async for chunk in chunks:
            buffered.append(chunk)
            length += len(chunk)
            self._received += len(chunk)
            while length >= (size := self._store._part_size(len(self._parts) + 1)):
                # A free upload slot before the part is cut: memory stays near IN_FLIGHT + 1 parts.
                await free_slot(self._parts)
                part, buffered = cut(buffered, size)
                length -= size
                self._hash(part)
                await self._upload(part)
        tail = b"".join(buffered)
        buffered = []
        self._hash(tail)
        if self._multipart is None:
            # Smaller than one part: a single PUT, made only once the bytes are known to be right.
            actual = await self._hashed()
            if actual != self._digest:
                raise _mismatch(self._digest, actual)
            await asyncio.to_thread(self._store._put_whole, self._target, tail)
            return BlobInfo(self._digest, len(tail))
        if tail:
            await self._upload(tail)  # the last part may be of any size
        parts = await settle(self._parts)
        actual = await self._hashed()
        if actual != self._digest:
            raise _mismatch(self._digest, actual)
        await asyncio.to_thread(self._complete, parts)
        await self._drop_marker()
        return BlobInfo(self._digest, self._received)

    def _hash(self, data: bytes) -> None:
        if self._offers_hash is not None:
            self._shared = shared_hash(self._offers_hash, received=self._received, algorithm=self._digest.algorithm)
            self._offers_hash = None
        # A chain of worker-thread updates: in byte order, off the event loop, overlapping uploads.
        if data and self._shared is None:
            self._hashing = asyncio.create_task(hash_after(self._hashing, self._digester, data))

    async def _hashed(self) -> Digest:
        if self._shared is not None:
            shared = await settled_hash(self._shared, stored=self._received)
            if shared is None:
                # A stream's own hash that does not cover what it yielded: nothing this store could verify is
                # published.
                raise DigestInvalidError(f"the stream's hash does not cover the {self._received} bytes received")
            return shared.digest()
        if self._hashing is not None:
            await self._hashing
        return self._digester.digest()

    async def _upload(self, part: bytes) -> None:
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise SizeInvalidError(f"blob {self._digest} needs more than {S3_MAX_PARTS} parts")
        if self._multipart is None:
            await self._begin()
        elif time.monotonic() - self._marked > MARKER_REFRESH_SECONDS:
            # The janitor judges a session by its newest object: a long stream is not idle.
            await asyncio.to_thread(self._write_marker, self._multipart)
        await free_slot(self._parts)
        assert self._multipart is not None
        upload = asyncio.to_thread(self._upload_part, self._multipart, number, part)
        self._parts.append(asyncio.create_task(upload))

    async def _begin(self) -> None:
        """Marker first, then the multipart upload, then the marker names it: the janitor finds either."""
        self._session = new_upload_id()
        await asyncio.to_thread(self._write_marker, None)
        self._multipart = await asyncio.to_thread(
            self._store._control._create_multipart_upload,
            self._store._bucket,
            self._target,
            {"Content-Type": "application/octet-stream"},
        )
        await asyncio.to_thread(self._write_marker, self._multipart)

    def _write_marker(self, multipart: str | None) -> None:
        assert self._session is not None
        body = json.dumps({"target": self._target, "multipart": multipart}).encode()
        key = self._store._key(direct_key(self._session))
        self._store._control.put_object(self._store._bucket, key, io.BytesIO(body), len(body))
        self._marked = time.monotonic()

    def _upload_part(self, multipart: str, number: int, data: bytes) -> Part:
        client = self._store._client
        etag = client._upload_part(self._store._bucket, self._target, data, None, multipart, number)
        return Part(number, etag)

    def _complete(self, parts: list[Part]) -> None:
        assert self._multipart is not None
        self._store._client._complete_multipart_upload(self._store._bucket, self._target, self._multipart, parts)
        self._multipart = None

    async def _drop_marker(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            with contextlib.suppress(S3Error):
                await asyncio.to_thread(self._store._remove, self._store._key(direct_key(session)))

    async def _abandon(self) -> None:
        """After a failure: stop the parts, abort the multipart upload, remove the marker."""
        try:
            await quiesce(self._parts, self._hashing)
            if self._multipart is not None:
                await asyncio.to_thread(self._store._abort_target, self._target, self._multipart)
            await self._drop_marker()
        except Exception:  # the original failure is the one to report; the janitor finishes the job
            return


def abort_direct(store: S3BlobStore, upload_id: str) -> None:
    """Abort the multipart upload a dead `put` left at its blob key (blocking; worker threads only)."""
    key = store._key(direct_key(upload_id))
    try:
        marker = store._client.stat_object(store._bucket, key)
        response = store._client.get_object(store._bucket, key)
    except S3Error:
        return
    try:
        doc = json.loads(bytes(response.read()))
    finally:
        response.close()
        response.release_conn()
    target, multipart = str(doc["target"]), doc.get("multipart")
    if multipart:
        store._abort_target(target, str(multipart))
        return
    # Died between creating the multipart upload and naming it: the one(s) at the target started
    # right after the marker are this attempt's (a concurrent push of the same blob started long after).
    written = marker.last_modified
    for upload in store._client._list_multipart_uploads(store._bucket, prefix=target).uploads:
        started = upload.initiated_time
        if upload.object_name != target or not upload.upload_id or written is None or started is None:
            continue
        if written - _UNRECORDED_WINDOW <= started <= written + _UNRECORDED_WINDOW:
            store._abort_target(target, upload.upload_id)
