"""Streams that bring their own hash (`HashedChunks`, a verified blob pull): a store that starts a blob from one
takes that hash for its digest check instead of hashing the bytes again, still compares it before publishing,
and hashes itself when the offered hash does not fit. Run by every adapter (the fixtures of test_blobstore)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.core.errors import DigestInvalidError
from services.core.oci.digest import Digest, Digester
from services.core.storage.blobs import BlobPutter, BlobStore, HashedChunks
from tests.contract import test_blobstore as contract
from tests.contract.test_blobstore import MIB, Harness, chunked, payload, read_all

harness = contract.harness  # the same adapters (filesystem, S3 on SeaweedFS), leftovers checked

SIZE = 11 * MIB + 5


class Settled:
    """An offered hash that is always up to date."""

    def __init__(self, digester: Digester) -> None:
        self.digester = digester

    @property
    def algorithm(self) -> str:
        return self.digester.algorithm

    @property
    def size(self) -> int:
        return self.digester.size

    async def settled(self) -> Digester:
        return self.digester


class Hashed:
    """Yields `data` in 1 MiB chunks, hashing each before it is yielded (`hashed`: hashing other bytes)."""

    def __init__(self, data: bytes, *, hashed: bytes | None = None, extra: bytes = b"") -> None:
        self._data = data
        self._hashed = data if hashed is None else hashed  # what the offered hash is computed over
        self.hash = Digester()
        self.hash.update(extra)
        self.asked = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), MIB):
            await asyncio.sleep(0)
            self.hash.update(self._hashed[start : start + MIB])
            yield self._data[start : start + MIB]

    def offered_hash(self) -> Settled | None:
        self.asked += 1
        return Settled(self.hash)


async def store_it(store: BlobStore, digest: Digest, chunks: Hashed) -> None:
    """Through an upload session (append at 0, commit), or a direct put where the store has one."""
    if isinstance(store, BlobPutter):
        await store.put(digest, chunks)
        return
    upload = await store.start_upload()
    try:
        await store.append(upload, chunks, offset=0)
        await store.commit(upload, digest)
    except BaseException:
        await store.abort(upload)
        raise


def test_the_protocol_is_recognised() -> None:
    assert isinstance(Hashed(b""), HashedChunks)


async def test_an_offered_hash_round_trips(harness: Harness) -> None:
    await _round_trip(harness, Hashed)


async def _round_trip(harness: Harness, kind: type[Hashed]) -> None:
    store = harness.store()
    data = payload(SIZE)
    digest = Digest.of(data)
    chunks = kind(data)
    await store_it(store, digest, chunks)
    assert chunks.asked >= 1  # the store looked at the stream's hash
    assert await read_all(harness.store(), digest) == data
    assert await store.delete(digest)


async def test_bytes_that_do_not_match_the_digest_are_rejected_with_their_own_hash(harness: Harness) -> None:
    store = harness.store()
    data = payload(SIZE)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(DigestInvalidError):
        await store_it(store, Digest.of(data), Hashed(wrong))
    assert await store.stat(Digest.of(data)) is None and await store.stat(Digest.of(wrong)) is None
    assert [u async for u in store.iter_uploads()] == []


async def test_the_offered_hash_is_the_one_compared(harness: Harness) -> None:
    """Taken, not recomputed: right bytes under a hash of other bytes are refused (so the stream's word is
    what the check rests on, which is why only a pull that hashed exactly what it yielded may offer it)."""
    store = harness.store()
    data = payload(SIZE)
    other = payload(SIZE)
    with pytest.raises(DigestInvalidError):
        await store_it(store, Digest.of(data), Hashed(data, hashed=other))
    assert await store.stat(Digest.of(data)) is None
    assert [u async for u in store.iter_uploads()] == []


async def test_a_hash_that_does_not_cover_exactly_the_stream_is_not_taken(harness: Harness) -> None:
    store = harness.store()
    data = payload(SIZE)
    digest = Digest.of(data)
    await store_it(store, digest, Hashed(data, extra=b"bytes the stream never yielded"))
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


async def test_a_stream_appended_to_a_started_session_is_hashed_by_the_store(harness: Harness) -> None:
    store = harness.store()
    data = payload(SIZE)
    digest = Digest.of(data)
    head, tail = data[: 6 * MIB], data[6 * MIB :]
    upload = await store.start_upload()

    async def first() -> AsyncIterator[bytes]:
        for chunk in chunked(head, MIB):
            yield chunk

    await store.append(upload, first(), offset=0)
    # Its hash covers only the tail: it must not stand for the session's bytes.
    await store.append(upload, Hashed(tail), offset=len(head))
    await store.commit(upload, digest)
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


class Behind:
    """An offered hash that hashes only when asked to settle (as one computed behind the stream would): the
    store must await it before comparing."""

    def __init__(self) -> None:
        self.digester = Digester()
        self.algorithm = self.digester.algorithm
        self.size = 0
        self._pending: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self.size += len(chunk)

    async def settled(self) -> Digester:
        pending, self._pending = self._pending, []
        await asyncio.to_thread(lambda: [self.digester.update(c) for c in pending])  # type: ignore[func-returns-value]
        return self.digester


class Lagging(Hashed):
    """Yields `data` while its offered hash (of `hashed`) is computed only when the store settles it."""

    def __init__(self, data: bytes, *, hashed: bytes | None = None) -> None:
        super().__init__(data, hashed=hashed)
        self.behind = Behind()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), MIB // 4):
            self.behind.add(self._hashed[start : start + MIB // 4])
            yield self._data[start : start + MIB // 4]

    def offered_hash(self) -> Behind | None:  # type: ignore[override]
        self.asked += 1
        return self.behind


async def test_a_hash_still_hashing_behind_the_stream_is_awaited_before_the_compare(harness: Harness) -> None:
    await _round_trip(harness, Lagging)


async def test_a_lagging_hash_of_other_bytes_is_refused(harness: Harness) -> None:
    store = harness.store()
    data = payload(SIZE)
    with pytest.raises(DigestInvalidError):
        await store_it(store, Digest.of(data), Lagging(data, hashed=payload(SIZE)))
    assert await store.stat(Digest.of(data)) is None
    assert [u async for u in store.iter_uploads()] == []
