"""BlobStore port: content-addressed blob storage with resumable, verifiable uploads.

Small role protocols compose into `BlobStore`; an optional capability (presigned URLs, a local
file path for sendfile) is its own protocol, checked with `isinstance`, never a method that raises.
The repository link of a blob lives in metadata, not here: this store knows digests only.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from services.core.oci.digest import Digest, Digester


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    modified: float | None = field(default=None, compare=False)
    """When the bytes were stored (unix time), where a listing (`iter_all`) tells; stored content is never
    rewritten, so it is when they were first stored."""


@runtime_checkable
class BlobReader(Protocol):
    async def stat(self, digest: Digest) -> BlobInfo | None:
        """Size of a committed blob, or None when absent. Never sees a partial blob."""
        ...

    def read(self, digest: Digest, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream `length` bytes (all when None) from `offset`. Raises BlobUnknownError when absent.

        The caller validates the range against `stat`; chunks are bounded (<= 1 MiB).
        """
        ...


@runtime_checkable
class BlobIngester(Protocol):
    async def start_upload(self) -> str:
        """Open an upload session and return its id (opaque, URL-safe, unguessable)."""
        ...

    async def upload_size(self, upload_id: str) -> int:
        """Bytes stored so far. Raises BlobUploadUnknownError. Works from any store instance."""
        ...

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *, offset: int) -> int:
        """Append a stream at `offset`, which must equal the stored size (RangeInvalidError otherwise).

        Returns the new size. Bytes are hashed as they stream. If the stream fails midway
        the session keeps only what was durably stored and stays usable (the caller reads
        `upload_size` to resume). Another store instance (another replica) may continue the session.
        """
        ...

    async def commit(self, upload_id: str, digest: Digest) -> BlobInfo:
        """Verify the whole upload hashes to `digest` and publish it atomically under that digest.

        DigestInvalidError on mismatch (the session is discarded, nothing becomes visible).
        Committing content that already exists is a no-op success (idempotent); the session is gone after.
        """
        ...

    async def abort(self, upload_id: str) -> None:
        """Discard a session and its stored bytes. Idempotent; unknown ids are ignored."""
        ...


@runtime_checkable
class BlobDeleter(Protocol):
    async def delete(self, digest: Digest) -> bool:
        """Remove a blob; False when it was absent. Idempotent."""
        ...


@runtime_checkable
class BlobBulkDeleter(Protocol):
    async def delete_many(self, digests: Sequence[Digest]) -> list[Digest]:
        """Remove many blobs in as few requests as the backend allows (S3: one multi-object delete per
        1000). Returns the digests that could not be removed; an absent blob counts as removed. Idempotent."""
        ...


@runtime_checkable
class BlobLister(Protocol):
    def iter_all(self) -> AsyncIterator[BlobInfo]:
        """Every committed blob (for GC and fsck); order unspecified, upload sessions excluded."""
        ...

    def iter_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Every open upload session as (id, last-modified unix time), for expiring stale ones."""
        ...


@runtime_checkable
class BlobStore(BlobReader, BlobIngester, BlobDeleter, BlobLister, Protocol):
    """The whole port; adapters implement it plus any optional capability below."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the backend is unreachable (readiness)."""
        ...


@runtime_checkable
class BlobPresigner(Protocol):
    async def presign_get(self, digest: Digest, *, expires_seconds: int) -> str:
        """A time-limited URL from which a client may GET the blob directly."""
        ...


@runtime_checkable
class BlobPutter(Protocol):
    async def put(self, digest: Digest, chunks: AsyncIterable[bytes]) -> BlobInfo:
        """Store a whole blob whose digest is known before its bytes arrive, straight at its address.

        Hashes while streaming and publishes atomically only if the bytes hash to `digest`
        (DigestInvalidError otherwise; nothing becomes visible). Content already stored is hashed,
        not rewritten. For stores where an upload session's commit must copy (S3); a store that
        commits by rename gains nothing from it and need not offer it.
        """
        ...


class OfferedHash(Protocol):
    """A hash a stream offers of its own bytes, which need not be computed in step with them: a pull's hash
    that a store reading behind the pull is offered (services/distribution/cache/blobfetch.py) is ahead of
    the bytes the store has, and covers them exactly only once the stream ended."""

    @property
    def algorithm(self) -> str: ...

    @property
    def size(self) -> int:
        """Bytes of the stream the hash stands for so far."""
        ...

    async def settled(self) -> Digester:
        """The Digester, to be compared once the stream ended (its size then says what it covered)."""
        ...


@runtime_checkable
class HashedChunks(Protocol):
    """Chunks that are hashed as they pass, before the store sees them (a verified blob pull's bytes): the
    store may take that hash for its digest check instead of computing the same one a second time.

    `offered_hash()` covers exactly the bytes this stream has yielded so far, none skipped or changed, or is
    None (then the store hashes itself). A store takes it only for a stream that starts a blob (nothing
    stored before it) and only while its size equals the bytes received, and before anything is published
    it awaits `settled()`, checks that it still covers exactly the bytes stored, and compares its digest;
    see `shared_hash` and `settled_hash`.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def offered_hash(self) -> OfferedHash | None: ...


def shared_hash(chunks: AsyncIterable[bytes], *, received: int, algorithm: str) -> OfferedHash | None:
    """The hash `chunks` computes of the `received` bytes it yielded so far, when it offers one that fits."""
    if not isinstance(chunks, HashedChunks):
        return None
    offered = chunks.offered_hash()
    if offered is None or offered.algorithm != algorithm or offered.size != received:
        return None
    return offered


async def settled_hash(offered: OfferedHash, *, stored: int) -> Digester | None:
    """The offered hash once it has hashed everything, when it covers exactly the `stored` bytes (else None:
    the store must not publish on its word)."""
    digester = await offered.settled()
    return digester if digester.size == stored else None


@runtime_checkable
class LocalBlobFiles(Protocol):
    def local_path(self, digest: Digest) -> Path | None:
        """Path of a committed blob on local disk (for sendfile), or None when absent."""
        ...
