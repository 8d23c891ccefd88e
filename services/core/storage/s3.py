"""S3BlobStore: the BlobStore on S3 (SeaweedFS, MinIO, AWS) through the blocking `minio` client.

Keys follow `services.core.storage.layout`, under `settings.prefix`. All session state lives in the
bucket, so any replica continues any upload; the process only caches hash state (`DigesterCache`).

An upload session is one S3 multipart upload at `uploads/<id>/data`; the client's bytes are sent
to S3 once while they stream and never sit whole in memory or on local disk:

* `start_upload` writes the session record `uploads/<id>/state` (JSON, see `_State`). Every later
  change replaces it with a conditional PUT (`If-Match` the ETag it was read at; a version counter
  keeps contents, hence ETags, from repeating), so of two writers working from the same record
  exactly one succeeds and the other gets a 412, reported as RangeInvalidError.
* `append` cuts the stream into parts (`part_size_for_number`: `settings.part_size`, growing with
  the part number so that a 1 TB blob fits in S3's 10,000 parts) and uploads up to `IN_FLIGHT`
  of them concurrently while it keeps reading, so memory stays below (IN_FLIGHT + 1) parts. The
  multipart upload is created with the first full part. Part numbers are reserved in the record
  (`next_part`) before use, so two writers never upload to one part number; a part enters the
  record (number, size, ETag) only once S3 has stored it. A tail shorter than S3_MIN_PART (all
  parts but the last must be >= 5 MiB; OCI chunked PATCHes may be tiny) is written as a fresh
  `uploads/<id>/pending/<token>` object and prepended to the next append's stream. The session
  size is the recorded parts plus the pending object, read from the record alone. A stream that
  fails midway records the parts S3 completed (the partial buffer is dropped): a consistent size
  to resume from.
* `commit` uploads the pending tail as the last part (UploadPartCopy, server side), completes the
  multipart upload at `uploads/<id>/data` (no data copy) and copies that object to the blob key
  (CopyObject, or UploadPartCopy parts above 5 GiB), which makes the blob appear atomically and
  complete. S3 cannot complete an upload under another key than the one it was created with
  (tested on SeaweedFS: NoSuchUpload) and the digest is unknown until commit, so this one
  server-side copy remains. The digest is checked before anything is published: against the hash
  kept while streaming, or, when this process does not hold it (the session moved between
  replicas or a stream failed), by reading `uploads/<id>/data` back after completing it, which is
  the only slow path. Then the session prefix is deleted. `abort` aborts the multipart upload(s)
  under the session prefix and deletes its objects.

The small control calls (session records, markers, HEADs, starting a multipart upload) use a second
client whose reads end after `control_timeout_seconds` (default 5 s) and are not retried; blob bytes
(parts, pending tails, whole small blobs, copies, reads) use the first, which waits up to
`read_timeout_seconds` for a slow store. An S3 that answers reads but holds writes, as SeaweedFS does
for ~15 s after a restart, so turns an upload into a fast 503 instead of a request that hangs.

minio 7.2 has no public multipart API; `_create_multipart_upload`, `_upload_part`,
`_upload_part_copy`, `_complete_multipart_upload`, `_abort_multipart_upload`,
`_list_multipart_uploads` and `_put_object` (conditional headers; the public put_object turns
them into user metadata) are its private calls, used as of 7.2.20. Every minio call runs in a
worker thread (`asyncio.to_thread`); nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Final

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.datatypes import Object, Part
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    SizeInvalidError,
    UnavailableError,
)
from services.core.oci.digest import Digest, Digester
from services.core.settings import S3BlobSettings
from services.core.storage.blobs import BlobInfo
from services.core.storage.layout import (
    BLOBS,
    READ_CHUNK,
    S3_MAX_PARTS,
    S3_MIN_PART,
    UPLOADS,
    DigesterCache,
    blob_digest,
    blob_key,
    data_key,
    is_upload_id,
    new_upload_id,
    part_size_for_number,
    pending_key,
    state_key,
    upload_id_of,
    upload_prefix,
)
from services.core.storage.s3direct import DirectPut, abort_direct, cut, free_slot, hash_after, quiesce, settle

_MISSING: Final = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_LOST_RACE: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NO_UPLOAD: Final = frozenset({"NoSuchUpload"})
_LIST_BATCH: Final = 1000
_RESERVE: Final = 8
"""Part numbers one record update reserves for an append."""


@dataclass(frozen=True, slots=True)
class _Part:
    number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class _State:
    """The session record `uploads/<id>/state`: everything another replica needs to continue."""

    multipart: str | None = None
    """UploadId of the S3 multipart upload at `uploads/<id>/data`, once the first part exists."""
    parts: tuple[_Part, ...] = ()
    """Stored parts in byte order (ascending numbers, gaps allowed), all >= S3_MIN_PART."""
    pending: str | None = None
    """Token of the pending tail object (bytes after the last part), if any."""
    pending_size: int = 0
    next_part: int = 1
    """Lowest part number no writer has reserved."""
    version: int = 0

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts) + self.pending_size

    def encode(self) -> bytes:
        return json.dumps(
            {
                "multipart": self.multipart,
                "parts": [[p.number, p.size, p.etag] for p in self.parts],
                "pending": self.pending,
                "pending_size": self.pending_size,
                "next_part": self.next_part,
                "version": self.version,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _State:
        doc: dict[str, Any] = json.loads(raw)
        return cls(
            multipart=doc["multipart"],
            parts=tuple(_Part(int(n), int(size), str(etag)) for n, size, etag in doc["parts"]),
            pending=doc["pending"],
            pending_size=int(doc["pending_size"]),
            next_part=int(doc["next_part"]),
            version=int(doc["version"]),
        )


def _pool(settings: S3BlobSettings, *, read_timeout: float, retry_reads: bool) -> urllib3.PoolManager:
    """An HTTP pool for minio: connect within `connect_timeout_seconds`, fail a read after `read_timeout`
    of silence, retry a failed call `retries` times after 0.1 s, 0.2 s, ... (capped at 1 s) without
    honouring Retry-After (a restarting gateway's would hold a request for its whole length); read
    timeouts are retried only when `retry_reads` (waiting again on a store that did not answer in time
    only makes a control call slower)."""
    return urllib3.PoolManager(
        maxsize=32,
        timeout=urllib3.Timeout(connect=settings.connect_timeout_seconds, read=read_timeout),
        retries=urllib3.Retry(
            total=settings.retries,
            read=None if retry_reads else 0,
            backoff_factor=0.1,
            backoff_max=1.0,
            status_forcelist=[500, 502, 503, 504],
            respect_retry_after_header=False,
        ),
    )


def _minio(settings: S3BlobSettings, http: urllib3.PoolManager) -> Minio:
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        # Known region: presigning and requests never stop to ask the server for it.
        region=settings.region,
        http_client=http,
    )


def _lost(upload_id: str) -> RangeInvalidError:
    return RangeInvalidError(f"upload {upload_id!r} changed while appending (a concurrent append won)")


class S3BlobStore:
    """BlobStore + BlobPresigner + BlobPutter on one bucket, every key under `settings.prefix`."""

    def __init__(self, settings: S3BlobSettings, *, digesters: DigesterCache | None = None) -> None:
        self._settings = settings
        self._bucket = settings.bucket
        self._prefix = settings.prefix.strip("/")
        self._digesters = digesters if digesters is not None else DigesterCache()
        # Our own pools so close() can release them. Bounded: connecting fails after
        # `connect_timeout_seconds` (an unreachable S3 is a fast 503), a blob call fails when S3 sends
        # nothing for `read_timeout_seconds` (a long transfer is not cut).
        self._http = _pool(settings, read_timeout=settings.read_timeout_seconds, retry_reads=True)
        self._client = _minio(settings, self._http)
        # The small control calls (session records, markers, HEADs, starting a multipart upload) go
        # through a second pool whose reads end after `control_timeout_seconds` and are not retried: a
        # store that takes no writes (SeaweedFS after a restart, until its master is leader again) makes
        # them fail fast as an outage (503 + Retry-After), where the blob pool would wait 120 s.
        self._control_http = _pool(settings, read_timeout=settings.control_timeout_seconds, retry_reads=False)
        self._control = _minio(settings, self._control_http)

    # -- keys ----------------------------------------------------------------------------------

    def _key(self, relative: str) -> str:
        return f"{self._prefix}/{relative}" if self._prefix else relative

    def _relative(self, key: str) -> str:
        return key[len(self._prefix) + 1 :] if self._prefix else key

    def _blob(self, digest: Digest) -> str:
        return self._key(blob_key(digest))

    def _part_size(self, number: int) -> int:
        return part_size_for_number(number, minimum=self._settings.part_size)

    # -- blocking helpers (worker threads only) ------------------------------------------------

    def _exists(self, key: str) -> Object | None:
        try:
            return self._control.stat_object(self._bucket, key)
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

    def _read_range(self, key: str, start: int, size: int) -> Iterator[bytes]:
        response = self._client.get_object(self._bucket, key, offset=start, length=size)
        try:
            while chunk := response.read(READ_CHUNK):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    def _read_small(self, key: str) -> bytes:
        """A whole small object (a pending tail, < S3_MIN_PART)."""
        response = self._client.get_object(self._bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def _load(self, upload_id: str) -> tuple[_State, str]:
        """The session record and its ETag. BlobUploadUnknownError when the session is gone."""
        if not is_upload_id(upload_id):
            raise BlobUploadUnknownError(f"unknown upload {upload_id[:80]!r}")
        try:
            response = self._control.get_object(self._bucket, self._key(state_key(upload_id)))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise BlobUploadUnknownError(f"unknown upload {upload_id[:80]!r}") from None
            raise
        try:
            raw = bytes(response.read())
            etag = str(response.headers.get("ETag", "")).strip('"')
        finally:
            response.close()
            response.release_conn()
        return _State.decode(raw), etag

    def _save(self, upload_id: str, state: _State, *, etag: str | None) -> str:
        """Replace the record read at `etag` (create it when None); RangeInvalidError if it changed."""
        condition = {"If-Match": f'"{etag}"'} if etag is not None else {"If-None-Match": "*"}
        try:
            # Private API: the public put_object would turn the condition into user metadata.
            result = self._control._put_object(
                self._bucket,
                self._key(state_key(upload_id)),
                state.encode(),
                headers={"Content-Type": "application/json", **condition},
            )
        except S3Error as exc:
            if exc.code in _LOST_RACE:
                raise _lost(upload_id) from None
            if exc.code in _MISSING:
                raise BlobUploadUnknownError(f"upload {upload_id!r} was aborted") from None
            raise
        return str(result.etag)

    def _put_pending(self, upload_id: str, data: bytes) -> str:
        token = secrets.token_hex(8)
        self._client.put_object(self._bucket, self._key(pending_key(upload_id, token)), io.BytesIO(data), len(data))
        return token

    def _remove(self, key: str) -> None:
        self._control.remove_object(self._bucket, key)

    def _create_multipart(self, upload_id: str) -> str:
        return self._control._create_multipart_upload(
            self._bucket, self._key(data_key(upload_id)), {"Content-Type": "application/octet-stream"}
        )

    def _upload_part(self, upload_id: str, multipart: str, number: int, data: bytes) -> _Part:
        try:
            etag = self._client._upload_part(
                self._bucket, self._key(data_key(upload_id)), data, None, multipart, number
            )
        except S3Error as exc:
            if exc.code in _NO_UPLOAD:
                raise BlobUploadUnknownError(f"upload {upload_id!r} was aborted or committed") from None
            raise
        return _Part(number, len(data), etag)

    def _abort_multipart(self, upload_id: str, multipart: str) -> None:
        with contextlib.suppress(S3Error):
            self._client._abort_multipart_upload(self._bucket, self._key(data_key(upload_id)), multipart)

    def _put_whole(self, key: str, data: bytes) -> None:
        self._client.put_object(self._bucket, key, io.BytesIO(data), len(data))

    def _abort_target(self, key: str, multipart: str) -> None:
        with contextlib.suppress(S3Error):
            self._client._abort_multipart_upload(self._bucket, key, multipart)

    def _abort_session(self, upload_id: str) -> None:
        # Every multipart upload under the session, recorded or not (a writer may have died
        # between creating one and recording it), then every object.
        prefix = self._key(upload_prefix(upload_id))
        abort_direct(self, upload_id)
        for upload in self._client._list_multipart_uploads(self._bucket, prefix=prefix).uploads:
            if upload.object_name and upload.upload_id:
                self._abort_multipart(upload_id, upload.upload_id)
        self._remove_prefix(prefix)

    def _assemble(self, upload_id: str, state: _State) -> str:
        """Make the session's (non-empty) bytes one object, without copying parts; returns its key."""
        if state.multipart is None and state.pending is not None:
            return self._key(pending_key(upload_id, state.pending))
        assert state.multipart is not None
        key = self._key(data_key(upload_id))
        parts = list(state.parts)
        if state.pending is not None:
            # The tail becomes the last part, copied inside S3 (it may be any size).
            number = state.next_part
            if number > S3_MAX_PARTS:
                raise SizeInvalidError(f"upload {upload_id!r} has used all {S3_MAX_PARTS} part numbers")
            source = f"/{self._bucket}/{self._key(pending_key(upload_id, state.pending))}"
            etag, _ = self._client._upload_part_copy(
                self._bucket, key, state.multipart, number, {"x-amz-copy-source": source}
            )
            parts.append(_Part(number, state.pending_size, etag))
        try:
            # Atomic, and no data copy: S3 links the stored parts into the object.
            self._client._complete_multipart_upload(
                self._bucket, key, state.multipart, [Part(p.number, p.etag) for p in parts]
            )
        except S3Error as exc:
            # A retried commit: the upload was completed by the earlier attempt.
            stored = self._exists(key) if exc.code in _NO_UPLOAD else None
            if stored is None or stored.size != state.size:
                raise
        return key

    def _rehash(self, key: str, size: int, algorithm: str) -> Digester:
        digester = Digester(algorithm)
        if size:
            for chunk in self._read_range(key, 0, size):
                digester.update(chunk)
        return digester

    def _publish(self, upload_id: str, state: _State, digest: Digest, *, verified: bool) -> Digest:
        """Assemble, verify unless `verified`, copy to the blob key; returns the digest the bytes have."""
        target = self._blob(digest)
        if verified and self._exists(target) is not None:
            self._abort_session(upload_id)  # idempotent commit: the content is already there
            return digest
        if state.multipart is None and state.pending is None:
            if not verified and (actual := Digester(digest.algorithm).digest()) != digest:
                return actual
            if self._exists(target) is None:
                self._client.put_object(self._bucket, target, io.BytesIO(b""), 0)
        else:
            source = self._assemble(upload_id, state)
            if not verified:
                # Slow path (the hash is not in this process): read the assembled bytes back.
                actual = self._rehash(source, state.size, digest.algorithm).digest()
                if actual != digest:
                    return actual
            if self._exists(target) is None:
                # Atomic: CopyObject, or (> 5 GiB) UploadPartCopy parts + CompleteMultipartUpload.
                self._client.compose_object(self._bucket, target, [ComposeSource(self._bucket, source)])
        stored = self._exists(target)
        if stored is None or stored.size != state.size:
            raise UnavailableError(f"S3 stored {target} with size {stored and stored.size}, not {state.size}")
        self._remove_prefix(self._key(upload_prefix(upload_id)))
        return digest

    # -- reading -------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        obj = await asyncio.to_thread(self._exists, self._blob(digest))
        return None if obj is None else BlobInfo(digest, obj.size or 0)

    async def read(self, digest: Digest, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
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

        def release(_: object = None) -> None:
            response.close()
            response.release_conn()

        # Read ahead one chunk so fetching from S3 overlaps with sending to the client.
        pending = asyncio.ensure_future(asyncio.to_thread(response.read, READ_CHUNK))
        try:
            while chunk := await pending:
                pending = asyncio.ensure_future(asyncio.to_thread(response.read, READ_CHUNK))
                yield chunk
        finally:
            # Synchronous on purpose (this may run while the generator is finalized): a read still
            # running in its thread releases the connection when it finishes.
            if pending.done():
                release()
            else:
                pending.add_done_callback(release)

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
        await asyncio.to_thread(self._save, upload_id, _State(), etag=None)
        return upload_id

    async def upload_size(self, upload_id: str) -> int:
        state, _ = await asyncio.to_thread(self._load, upload_id)
        return state.size

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *, offset: int) -> int:
        state, etag = await asyncio.to_thread(self._load, upload_id)
        if state.size != offset:
            raise RangeInvalidError(
                f"upload {upload_id!r} holds {state.size} bytes; a chunk must start there, not at {offset}",
                detail={"size": state.size, "offset": offset},
            )
        # None when this process does not hold the hash of the stored bytes (another replica
        # appended them, or a stream failed): the session then stays unhashed until commit reads
        # it back. On failure the digester is dropped, not cached: a hashing thread may still run.
        digester = self._digesters.take(upload_id, size=offset)
        size = await _Append(self, upload_id, state, etag, digester).run(chunks)
        if digester is not None:
            self._digesters.put(upload_id, digester)
        return size

    async def commit(self, upload_id: str, digest: Digest) -> BlobInfo:
        state, _ = await asyncio.to_thread(self._load, upload_id)
        digester = self._digesters.take(upload_id, size=state.size, algorithm=digest.algorithm)
        actual = digester.digest() if digester is not None else None
        if actual is None or actual == digest:
            actual = await asyncio.to_thread(self._publish, upload_id, state, digest, verified=actual is not None)
        if actual != digest:
            await self.abort(upload_id)
            raise DigestInvalidError(
                f"upload hashes to {actual}, not {digest}",
                detail={"expected": str(digest), "actual": str(actual)},
            )
        self._digesters.discard(upload_id)
        return BlobInfo(digest, state.size)

    async def put(self, digest: Digest, chunks: AsyncIterable[bytes]) -> BlobInfo:
        return await DirectPut(self, digest).run(chunks)

    async def abort(self, upload_id: str) -> None:
        if not is_upload_id(upload_id):
            return
        self._digesters.discard(upload_id)
        await asyncio.to_thread(self._abort_session, upload_id)

    # -- deleting and listing ------------------------------------------------------------------

    async def delete(self, digest: Digest) -> bool:
        key = self._blob(digest)
        # S3 DELETE does not say whether the key existed; the port does, hence the HEAD.
        if await asyncio.to_thread(self._exists, key) is None:
            return False
        await asyncio.to_thread(self._client.remove_object, self._bucket, key)
        return True

    def _remove_keys(self, keys: list[str]) -> set[str]:
        # One multi-object delete per 1000 keys (S3's limit), which the client batches; absent keys succeed.
        errors = self._client.remove_objects(self._bucket, [DeleteObject(k) for k in keys])
        return {e.name or "" for e in errors if e.code not in _MISSING}

    async def delete_many(self, digests: Sequence[Digest]) -> list[Digest]:
        by_key = {self._blob(d): d for d in digests}
        failed = await asyncio.to_thread(self._remove_keys, list(by_key))
        return [by_key[k] for k in failed if k in by_key]

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
                yield BlobInfo(digest, obj.size or 0, obj.last_modified.timestamp() if obj.last_modified else None)

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
            exists = await asyncio.to_thread(self._control.bucket_exists, self._bucket)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"S3 at {self._settings.endpoint} unreachable: {exc}") from exc
        if not exists:
            raise UnavailableError(f"S3 bucket {self._bucket!r} does not exist")

    async def close(self) -> None:
        self._http.clear()
        self._control_http.clear()


class _Append:
    """One `append`: cuts the stream into parts, uploads them concurrently, records them."""

    def __init__(self, store: S3BlobStore, upload_id: str, state: _State, etag: str, digester: Digester | None) -> None:
        self._store = store
        self._id = upload_id
        self._base = state  # the record as this append found it
        self._state = state  # the record as this append last wrote it
        self._etag = etag
        self._digester = digester
        self._numbers: list[int] = []  # reserved and unused part numbers, ascending
        self._uploads: list[asyncio.Task[_Part]] = []  # this append's parts, in byte order
        self._recorded = 0  # how many of them the record holds
        self._created: str | None = None  # a multipart upload created but not yet recorded
        self._hashing: asyncio.Task[None] | None = None  # the last link of the hash chain

    async def run(self, chunks: AsyncIterable[bytes]) -> int:
        buffered: list[bytes] = []
        length = 0
        skip = 0  # leading buffered bytes already hashed: the previous pending tail
        fresh = False
        token: str | None = None
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if not fresh and self._base.pending is not None:
                    head = await self._read_pending(self._base.pending)
                    buffered, length, skip = [head], len(head), len(head)
                fresh = True
                buffered.append(chunk)
                length += len(chunk)
                while length >= (size := self._store._part_size(self._peek())):
                    await free_slot(self._uploads)  # before cutting: memory stays near IN_FLIGHT + 1 parts
                    part, buffered = cut(buffered, size)
                    length -= size
                    self._hash(part[skip:] if skip else part)
                    skip = 0
                    await self._upload(part)
            if not fresh:
                return self._base.size  # nothing new: the record stays as it is
            tail = b"".join(buffered)
            buffered = []
            self._hash(tail[skip:] if skip else tail)
            if len(tail) >= S3_MIN_PART:
                await self._upload(tail)
                tail = b""
            parts = tuple(await settle(self._uploads))
            if tail:
                token = await asyncio.to_thread(self._store._put_pending, self._id, tail)
            if self._hashing is not None:
                await self._hashing
            state = replace(
                self._state,
                parts=self._base.parts + parts,
                pending=token,
                pending_size=len(tail),
                version=self._state.version + 1,
            )
            await self._write(state)
            token = None
        except BaseException:
            await self._salvage(token)
            raise
        if self._base.pending is not None:
            # Now unreferenced; a leftover would only cost space until the session ends.
            with contextlib.suppress(S3Error):
                key = self._store._key(pending_key(self._id, self._base.pending))
                await asyncio.to_thread(self._store._remove, key)
        return state.size

    async def _read_pending(self, token: str) -> bytes:
        try:
            return await asyncio.to_thread(self._store._read_small, self._store._key(pending_key(self._id, token)))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise _lost(self._id) from None  # another append replaced it meanwhile
            raise

    def _peek(self) -> int:
        """The part number the next part gets."""
        return self._numbers[0] if self._numbers else self._state.next_part

    def _hash(self, data: bytes) -> None:
        # A chain of worker-thread updates: in byte order, off the event loop, overlapping uploads.
        if self._digester is not None and data:
            self._hashing = asyncio.create_task(hash_after(self._hashing, self._digester, data))

    async def _upload(self, part: bytes) -> None:
        number = self._numbers.pop(0) if self._numbers else await self._reserve()
        if number > S3_MAX_PARTS:
            raise SizeInvalidError(f"upload {self._id!r} has used all {S3_MAX_PARTS} part numbers")
        await free_slot(self._uploads)
        assert self._state.multipart is not None
        upload = asyncio.to_thread(self._store._upload_part, self._id, self._state.multipart, number, part)
        self._uploads.append(asyncio.create_task(upload))

    async def _reserve(self) -> int:
        """Reserve _RESERVE part numbers in the record (creating the multipart upload first)."""
        state = self._state
        multipart = state.multipart
        if multipart is None:
            multipart = self._created = await asyncio.to_thread(self._store._create_multipart, self._id)
        finished = self._finished()
        await self._write(
            replace(
                self._with_parts(finished),
                multipart=multipart,
                next_part=state.next_part + _RESERVE,
                version=state.version + 1,
            )
        )
        self._created = None
        self._recorded = len(finished)
        self._numbers = list(range(state.next_part + 1, state.next_part + _RESERVE))
        return state.next_part

    def _finished(self) -> tuple[_Part, ...]:
        """The parts S3 has stored, up to the first one still uploading or failed."""
        parts: list[_Part] = []
        for task in self._uploads:
            if not task.done() or task.cancelled() or task.exception() is not None:
                break
            parts.append(task.result())
        return tuple(parts)

    def _with_parts(self, finished: tuple[_Part, ...]) -> _State:
        if not finished:
            return self._state
        # The first new part begins with the old pending tail, which is then no longer needed.
        return replace(self._state, parts=self._base.parts + finished, pending=None, pending_size=0)

    async def _write(self, state: _State) -> None:
        self._etag = await asyncio.to_thread(self._store._save, self._id, state, etag=self._etag)
        self._state = state

    async def _salvage(self, token: str | None) -> None:
        """After a failure: record the parts S3 completed (a consistent size to resume from)."""
        try:
            await quiesce(self._uploads, self._hashing)
            finished = self._finished()
            if len(finished) > self._recorded:
                await self._write(replace(self._with_parts(finished), version=self._state.version + 1))
            if self._created is not None:
                await asyncio.to_thread(self._store._abort_multipart, self._id, self._created)
            if token is not None:
                await asyncio.to_thread(self._store._remove, self._store._key(pending_key(self._id, token)))
        except Exception:  # the original failure is the one to report
            return
