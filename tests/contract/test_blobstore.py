"""Contract suite of the BlobStore port, run by every adapter: filesystem and S3 (real SeaweedFS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest
from minio import Minio
from minio.deleteobjects import DeleteObject
from pydantic import SecretStr

from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
)
from services.core.oci.digest import Digest
from services.core.settings import S3BlobSettings
from services.core.storage import layout
from services.core.storage.blobs import BlobBulkDeleter, BlobInfo, BlobPresigner, BlobPutter, BlobStore, LocalBlobFiles
from services.core.storage.fs import FilesystemBlobStore
from services.core.storage.s3 import S3BlobStore
from tests.conftest import infra

if TYPE_CHECKING:

    class PuttingStore(BlobStore, BlobPutter, Protocol):
        """A store that also puts a blob whose digest is known (what `putter` returns)."""

MIB = 1024 * 1024


@dataclass
class Harness:
    """Builds store instances over one backing store (one test's dir or prefix) and checks leftovers."""

    kind: str
    factory: Callable[[int | None], BlobStore]
    list_leftovers: Callable[[], Awaitable[list[str]]]
    purge: Callable[[], Awaitable[None]]
    stores: list[BlobStore] = field(default_factory=list)
    s3: tuple[Minio, str, str] | None = None
    """S3 only: (client, bucket, prefix), to look at what the adapter stored."""

    def store(self, *, part_size: int | None = None) -> BlobStore:
        """A fresh instance on the same storage: another replica, with a cold hash cache."""
        instance = self.factory(part_size)
        self.stores.append(instance)
        return instance


def _fs_harness(root: Path) -> Harness:
    async def leftovers() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

    async def purge() -> None:
        for path in sorted(root.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()

    return Harness("fs", lambda _part_size: FilesystemBlobStore(root), leftovers, purge)


def _s3_harness() -> Harness:
    endpoint = infra("HANZO_TEST_S3_ENDPOINT")
    access_key = infra("HANZO_TEST_S3_ACCESS_KEY")
    secret_key = infra("HANZO_TEST_S3_SECRET_KEY")
    bucket = infra("HANZO_TEST_S3_BUCKET")
    prefix = f"test-blobstore-{uuid.uuid4().hex[:12]}"
    client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False, region="us-east-1")
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)

    def make(part_size: int | None) -> BlobStore:
        return S3BlobStore(
            S3BlobSettings(
                kind="s3",
                endpoint=endpoint,
                bucket=bucket,
                access_key=access_key,
                secret_key=SecretStr(secret_key),
                prefix=prefix,
                # Smallest legal part by default, so modest test blobs already span several parts.
                part_size=part_size or 5 * MIB,
            )
        )

    async def leftovers() -> list[str]:
        def scan() -> list[str]:
            names = [o.object_name or "" for o in client.list_objects(bucket, f"{prefix}/", recursive=True)]
            uploads = client._list_multipart_uploads(bucket, prefix=f"{prefix}/").uploads
            return sorted(names + [f"multipart:{u.object_name}" for u in uploads])

        return await asyncio.to_thread(scan)

    async def purge() -> None:
        def remove() -> None:
            names = [o.object_name or "" for o in client.list_objects(bucket, f"{prefix}/", recursive=True)]
            errors = list(client.remove_objects(bucket, [DeleteObject(n) for n in names]))
            assert not errors, errors
            for upload in client._list_multipart_uploads(bucket, prefix=f"{prefix}/").uploads:
                client._abort_multipart_upload(bucket, upload.object_name, upload.upload_id or "")

        await asyncio.to_thread(remove)

    return Harness("s3", make, leftovers, purge, s3=(client, bucket, prefix))


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = _fs_harness(tmp_path / "blobs") if request.param == "fs" else _s3_harness()
    try:
        yield h
        # Every test removes what it made through the port; anything left is a port bug.
        assert await h.list_leftovers() == []
    finally:
        await h.purge()
        for store in h.stores:
            await store.close()
        assert await h.list_leftovers() == []


@pytest.fixture
def store(harness: Harness) -> BlobStore:
    return harness.store()


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def read_all(store: BlobStore, digest: Digest, **kwargs: int | None) -> bytes:
    out = bytearray()
    async for chunk in store.read(digest, **kwargs):  # type: ignore[arg-type]
        assert 0 < len(chunk) <= MIB
        out += chunk
    return bytes(out)


async def put(store: BlobStore, data: bytes, *, chunk: int = 64 * 1024) -> Digest:
    upload = await store.start_upload()
    assert await store.append(upload, stream(*chunked(data, chunk)), offset=0) == len(data)
    digest = Digest.of(data)
    info = await store.commit(upload, digest)
    assert (info.digest, info.size) == (digest, len(data))
    return digest


def payload(size: int) -> bytes:
    return os.urandom(size)


async def test_round_trip(store: BlobStore) -> None:
    data = payload(300_000)
    digest = await put(store, data)
    info = await store.stat(digest)
    assert info is not None and info.size == len(data)
    assert await read_all(store, digest) == data
    if isinstance(store, LocalBlobFiles):
        path = store.local_path(digest)
        assert path is not None and path.read_bytes() == data
    assert await store.delete(digest)


async def test_absent_blob(store: BlobStore) -> None:
    digest = Digest.of(b"never stored " + uuid.uuid4().bytes)
    assert await store.stat(digest) is None
    with pytest.raises(BlobUnknownError):
        await read_all(store, digest)
    if isinstance(store, LocalBlobFiles):
        assert store.local_path(digest) is None


async def test_empty_blob(store: BlobStore) -> None:
    upload = await store.start_upload()
    assert await store.upload_size(upload) == 0
    assert await store.append(upload, stream(), offset=0) == 0
    digest = Digest.of(b"")
    assert (await store.commit(upload, digest)).size == 0
    info = await store.stat(digest)
    assert info is not None and info.size == 0
    assert await read_all(store, digest) == b""
    assert await store.delete(digest)


async def test_ranged_reads(store: BlobStore) -> None:
    data = payload(3 * MIB + 17)
    digest = await put(store, data, chunk=MIB)
    assert await read_all(store, digest, offset=0, length=10) == data[:10]
    assert await read_all(store, digest, offset=5, length=MIB + 3) == data[5 : MIB + 8]
    assert await read_all(store, digest, offset=2 * MIB + 1) == data[2 * MIB + 1 :]
    assert await read_all(store, digest, offset=len(data) - 1) == data[-1:]
    assert await read_all(store, digest, offset=7, length=0) == b""
    assert await store.delete(digest)


async def test_commit_wrong_digest_publishes_nothing(store: BlobStore) -> None:
    data = payload(1000)
    upload = await store.start_upload()
    await store.append(upload, stream(data), offset=0)
    wrong = Digest.of(data + b"x")
    with pytest.raises(DigestInvalidError):
        await store.commit(upload, wrong)
    assert await store.stat(wrong) is None
    assert await store.stat(Digest.of(data)) is None
    assert [info async for info in store.iter_all()] == []
    with pytest.raises(BlobUploadUnknownError):
        await store.upload_size(upload)


async def test_commit_same_content_twice_is_idempotent(harness: Harness) -> None:
    first, second = harness.store(), harness.store()
    data = payload(6 * MIB + 5)
    digest = await put(first, data, chunk=MIB)
    again = await put(second, data, chunk=MIB)
    assert again == digest
    assert [info.digest async for info in first.iter_all()] == [digest]
    assert [u async for u in first.iter_uploads()] == []
    assert await read_all(second, digest) == data
    assert await first.delete(digest)


async def test_sha512_commit(store: BlobStore) -> None:
    data = payload(70_000)
    upload = await store.start_upload()
    await store.append(upload, stream(*chunked(data, 999)), offset=0)
    digest = Digest("sha512", hashlib.sha512(data).hexdigest())
    assert (await store.commit(upload, digest)).size == len(data)
    assert await read_all(store, digest) == data
    assert [info.digest async for info in store.iter_all()] == [digest]
    assert await store.delete(digest)


async def test_append_at_wrong_offset(store: BlobStore) -> None:
    upload = await store.start_upload()
    await store.append(upload, stream(b"abc"), offset=0)
    for offset in (0, 2, 4, 100):
        with pytest.raises(RangeInvalidError):
            await store.append(upload, stream(b"zz"), offset=offset)
    assert await store.upload_size(upload) == 3
    assert await store.append(upload, stream(b"de"), offset=3) == 5
    digest = Digest.of(b"abcde")
    await store.commit(upload, digest)
    assert await read_all(store, digest) == b"abcde"
    assert await store.delete(digest)


async def test_unknown_upload(store: BlobStore) -> None:
    for upload in ("A" * 32, "../../etc/passwd", "", "x"):
        with pytest.raises(BlobUploadUnknownError):
            await store.upload_size(upload)
        with pytest.raises(BlobUploadUnknownError):
            await store.append(upload, stream(b"x"), offset=0)
        with pytest.raises(BlobUploadUnknownError):
            await store.commit(upload, Digest.of(b"x"))
        await store.abort(upload)


async def test_chunked_appends_of_odd_sizes(store: BlobStore) -> None:
    # One append per OCI PATCH: tiny ones, then a large multi-part one, then tiny ones again.
    pieces = [payload(n) for n in (1, 7, 1, 13, 4096 + 3, 1)]
    pieces.append(payload(12 * MIB + 11))
    pieces += [payload(n) for n in (7, 1, 65_537)]
    upload = await store.start_upload()
    size = 0
    for piece in pieces:
        size = await store.append(upload, stream(*chunked(piece, MIB)), offset=size)
        assert await store.upload_size(upload) == size
    data = b"".join(pieces)
    assert size == len(data)
    digest = Digest.of(data)
    assert (await store.commit(upload, digest)).size == len(data)
    assert await read_all(store, digest) == data
    assert await read_all(store, digest, offset=9, length=5 * MIB) == data[9 : 9 + 5 * MIB]
    assert await store.delete(digest)


async def test_large_blob_in_1mib_chunks(store: BlobStore) -> None:
    data = payload(12 * MIB)
    digest = await put(store, data, chunk=MIB)
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


async def test_many_mid_sized_appends(store: BlobStore) -> None:
    # Appends of 3 MiB: each is below S3's minimum part, so S3 must merge before composing.
    pieces = [payload(3 * MIB + i) for i in range(4)]
    upload = await store.start_upload()
    size = 0
    for piece in pieces:
        size = await store.append(upload, stream(*chunked(piece, 256 * 1024)), offset=size)
    data = b"".join(pieces)
    digest = Digest.of(data)
    await store.commit(upload, digest)
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


async def test_small_append_then_part_sized_append(harness: Harness) -> None:
    # With 16 MiB parts a 7-byte head is followed by a 16 MiB segment: S3 splits it to fill the head.
    store = harness.store(part_size=16 * MIB)
    head, body = payload(7), payload(17 * MIB + 3)
    upload = await store.start_upload()
    await store.append(upload, stream(head), offset=0)
    await store.append(upload, stream(*chunked(body, MIB)), offset=len(head))
    digest = Digest.of(head + body)
    await store.commit(upload, digest)
    assert await read_all(store, digest) == head + body
    assert await store.delete(digest)


async def test_part_size_growing_with_the_part_number(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Growth every part (not every 40) makes a 23 MiB blob use parts of 5, 6 and 7 MiB, as a huge blob would.
    monkeypatch.setattr(layout, "PART_GROWTH_EVERY", 1)
    data = payload(23 * MIB + 5)
    digest = await put(store, data, chunk=MIB)
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


def _multipart_etag(data: bytes, part_size: int) -> str:
    md5s = b"".join(hashlib.md5(part).digest() for part in chunked(data, part_size))
    return f"{hashlib.md5(md5s).hexdigest()}-{len(md5s) // 16}"


async def _s3_etag(harness: Harness, digest: Digest) -> str:
    assert harness.s3 is not None
    client, bucket, prefix = harness.s3
    stat = await asyncio.to_thread(client.stat_object, bucket, f"{prefix}/{layout.blob_key(digest)}")
    return (stat.etag or "").strip('"')


async def test_s3_parts_are_uploaded_once_as_multipart_parts(harness: Harness) -> None:
    if harness.kind != "s3":
        pytest.skip("S3 multipart layout")
    store = harness.store()
    # 5 MiB parts: 3 full parts, then a 2 MiB + 9 byte pending tail that becomes the 4th, last part.
    data = payload(17 * MIB + 9)
    digest = await put(store, data, chunk=MIB)
    # The multipart ETag "<md5 of part md5s>-<parts>" of the streamed parts, unchanged by the
    # final copy: nothing was re-uploaded, merged or composed from separate objects.
    assert await _s3_etag(harness, digest) == _multipart_etag(data, 5 * MIB)
    assert _multipart_etag(data, 5 * MIB).endswith("-4")
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


async def test_tiny_append_then_big_appends(harness: Harness) -> None:
    store = harness.store()
    pieces = [payload(3), payload(12 * MIB + 1), payload(7 * MIB), payload(5 * MIB - 4), payload(2)]
    upload = await store.start_upload()
    size = 0
    for piece in pieces:
        size = await store.append(upload, stream(*chunked(piece, 700_000)), offset=size)
        assert await harness.store().upload_size(upload) == size
    data = b"".join(pieces)
    digest = Digest.of(data)
    assert (await store.commit(upload, digest)).size == len(data)
    assert await read_all(harness.store(), digest) == data
    if harness.kind == "s3":
        # Each tail was carried into the next append, so the parts are cut every 5 MiB of the
        # blob whatever the append sizes were, and the last (4 MiB + 2) is the final tail.
        assert await _s3_etag(harness, digest) == _multipart_etag(data, 5 * MIB)
    assert await store.delete(digest)


@pytest.mark.parametrize("matching", [True, False], ids=["digest-matches", "digest-wrong"])
async def test_commit_on_another_instance_rehashes(harness: Harness, matching: bool) -> None:
    # The committing instance never saw the bytes: it must verify them before publishing.
    first, second = harness.store(), harness.store()
    data = payload(11 * MIB + 3)
    upload = await first.start_upload()
    assert await first.append(upload, stream(*chunked(data, MIB)), offset=0) == len(data)
    digest = Digest.of(data) if matching else Digest.of(data[:-1] + bytes([data[-1] ^ 1]))
    if not matching:
        with pytest.raises(DigestInvalidError):
            await second.commit(upload, digest)
        assert await second.stat(digest) is None and await second.stat(Digest.of(data)) is None
        assert [info async for info in second.iter_all()] == []
        with pytest.raises(BlobUploadUnknownError):
            await first.upload_size(upload)
        return
    assert (await second.commit(upload, digest)).size == len(data)
    assert await read_all(first, digest) == data
    assert await first.delete(digest)


async def test_upload_continued_on_another_instance(harness: Harness) -> None:
    first, second = harness.store(), harness.store()
    parts = [payload(700_000), payload(6 * MIB + 1), payload(3)]
    upload = await first.start_upload()
    size = await first.append(upload, stream(*chunked(parts[0], 100_000)), offset=0)
    assert await second.upload_size(upload) == size
    size = await second.append(upload, stream(*chunked(parts[1], MIB)), offset=size)
    # The first instance's cached hash now describes a shorter session: it must not be trusted.
    size = await first.append(upload, stream(parts[2]), offset=size)
    data = b"".join(parts)
    assert size == len(data)
    digest = Digest.of(data)
    assert (await second.commit(upload, digest)).size == len(data)
    assert await read_all(first, digest) == data
    with pytest.raises(BlobUploadUnknownError):
        await first.upload_size(upload)
    assert await second.delete(digest)


async def test_stream_failing_midway_leaves_resumable_session(harness: Harness) -> None:
    store = harness.store()
    data = payload(12 * MIB + 100)
    upload = await store.start_upload()
    await store.append(upload, stream(data[:10]), offset=0)

    async def broken() -> AsyncIterator[bytes]:
        for chunk in chunked(data[10 : 11 * MIB], MIB):
            await asyncio.sleep(0)
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.append(upload, broken(), offset=10)
    assert await store.stat(Digest.of(data)) is None
    assert [info async for info in store.iter_all()] == []
    for instance in (store, harness.store()):
        size = await instance.upload_size(upload)
        assert 10 <= size <= 11 * MIB
    # Resume from wherever the store says, on another instance, and the bytes are exactly right.
    resumer = harness.store()
    size = await resumer.upload_size(upload)
    assert await resumer.append(upload, stream(*chunked(data[size:], MIB)), offset=size) == len(data)
    digest = Digest.of(data)
    await resumer.commit(upload, digest)
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


@pytest.mark.parametrize("same_instance", [True, False], ids=["same-instance", "two-instances"])
async def test_concurrent_appends_one_wins(harness: Harness, same_instance: bool) -> None:
    first = harness.store()
    second = first if same_instance else harness.store()
    upload = await first.start_upload()
    await first.append(upload, stream(b"head"), offset=0)
    started = 0
    both_started = asyncio.Event()

    async def racing(fill: bytes, size: int) -> AsyncIterator[bytes]:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        # Wait (briefly) for the rival to pass its own checks, so the writes really overlap.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both_started.wait(), 1.0)
        for _ in range(size // 1024):
            await asyncio.sleep(0)
            yield fill * 1024

    bodies = {b"a": 300 * 1024, b"b": 200 * 1024}
    results = await asyncio.gather(
        first.append(upload, racing(b"a", bodies[b"a"]), offset=4),
        second.append(upload, racing(b"b", bodies[b"b"]), offset=4),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], RangeInvalidError), lost
    winner = b"a" if isinstance(results[0], int) else b"b"
    data = b"head" + winner * bodies[winner]
    assert won[0] == len(data)
    assert await first.upload_size(upload) == len(data)
    digest = Digest.of(data)
    await second.commit(upload, digest)
    assert await read_all(first, digest) == data
    assert await first.delete(digest)


async def test_abort_removes_session(harness: Harness) -> None:
    store, other = harness.store(), harness.store()
    upload = await store.start_upload()
    await store.append(upload, stream(payload(6 * MIB)), offset=0)
    assert upload in [u async for u, _ in store.iter_uploads()]
    await store.abort(upload)
    assert [u async for u in store.iter_uploads()] == []
    for instance in (store, other):
        with pytest.raises(BlobUploadUnknownError):
            await instance.upload_size(upload)
        with pytest.raises(BlobUploadUnknownError):
            await instance.append(upload, stream(b"x"), offset=6 * MIB)
    await store.abort(upload)
    await other.abort(upload)
    assert await harness.list_leftovers() == []


async def test_delete_is_idempotent(store: BlobStore) -> None:
    digest = await put(store, b"delete me " + uuid.uuid4().bytes)
    assert await store.delete(digest) is True
    assert await store.delete(digest) is False
    assert await store.stat(digest) is None
    with pytest.raises(BlobUnknownError):
        await read_all(store, digest)


async def test_delete_many_removes_present_and_ignores_absent(store: BlobStore) -> None:
    assert isinstance(store, BlobBulkDeleter)
    kept = await put(store, b"keep " + uuid.uuid4().bytes)
    gone = [await put(store, b"bulk %d " % i + uuid.uuid4().bytes) for i in range(5)]
    absent = Digest.of(b"never stored " + uuid.uuid4().bytes)
    assert await store.delete_many([*gone, absent]) == []
    assert [await store.stat(d) for d in gone] == [None] * 5
    assert await store.stat(kept) is not None
    assert await store.delete_many([]) == []
    await store.delete(kept)


async def test_iter_all_lists_committed_blobs_only(store: BlobStore) -> None:
    blobs = {b"one " + uuid.uuid4().bytes, b"two " + uuid.uuid4().bytes + payload(10_000)}
    digests = {Digest.of(b): len(b) for b in blobs}
    for blob in blobs:
        await put(store, blob)
    pending = await store.start_upload()
    await store.append(pending, stream(b"not committed"), offset=0)
    listed = {info.digest: info.size async for info in store.iter_all()}
    assert listed == digests
    # When the bytes were stored (what GC skips as young): the server's clock, so with room for skew and S3's
    # whole seconds.
    stored = [info.modified async for info in store.iter_all()]
    assert all(m is None or abs(m - time.time()) < 120 for m in stored), stored
    uploads = [(u, t) async for u, t in store.iter_uploads()]
    assert [u for u, _ in uploads] == [pending]
    assert uploads[0][1] > 0
    await store.abort(pending)
    for digest in digests:
        assert await store.delete(digest)
    assert [info async for info in store.iter_all()] == []


async def test_presign_get(store: BlobStore) -> None:
    if not isinstance(store, BlobPresigner):
        pytest.skip("this adapter has no presigned URLs")
    data = payload(2 * MIB + 1)
    digest = await put(store, data, chunk=MIB)
    url = await store.presign_get(digest, expires_seconds=120)

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=30) as response:
            return bytes(response.read())

    assert await asyncio.to_thread(fetch) == data
    assert await store.delete(digest)


async def test_ping(store: BlobStore) -> None:
    await store.ping()


async def test_leaves_nothing_behind(harness: Harness) -> None:
    store = harness.store()
    kept = await put(store, payload(100))
    upload = await store.start_upload()
    for piece in (payload(1), payload(6 * MIB), payload(3)):
        await store.append(upload, stream(*chunked(piece, MIB)), offset=await store.upload_size(upload))
    with pytest.raises(DigestInvalidError):
        await store.commit(upload, Digest.of(b"other"))
    aborted = await store.start_upload()
    await store.append(aborted, stream(b"abc"), offset=0)
    await store.abort(aborted)
    assert await harness.list_leftovers() != []
    assert await store.delete(kept)
    assert await harness.list_leftovers() == []


# -- BlobPutter: a whole blob whose digest is known first (S3: straight to its key, no commit copy)


def putter(harness: Harness, *, part_size: int | None = None) -> PuttingStore:
    store = harness.store(part_size=part_size)
    if not isinstance(store, BlobPutter):
        pytest.skip("this adapter commits by rename; it has no direct put")
    return store


@pytest.mark.parametrize("size", [0, 100, 5 * MIB - 1, 17 * MIB + 9], ids=["empty", "small", "under-a-part", "parts"])
async def test_put_round_trip(harness: Harness, size: int) -> None:
    store = putter(harness)
    data = payload(size)
    digest = Digest.of(data)
    info = await store.put(digest, stream(*chunked(data, 3 * MIB + 7)))
    assert (info.digest, info.size) == (digest, size)
    reader = harness.store()  # another replica sees it complete
    assert await reader.stat(digest) == BlobInfo(digest, size)
    assert await read_all(reader, digest) == data
    assert [u async for u in reader.iter_uploads()] == []
    if harness.kind == "s3" and size > 5 * MIB:
        # The parts as streamed, completed at the blob key: no session object, no copy.
        assert await _s3_etag(harness, digest) == _multipart_etag(data, 5 * MIB)
    assert await reader.delete(digest)


@pytest.mark.parametrize("size", [100, 12 * MIB], ids=["small", "parts"])
async def test_put_wrong_digest_publishes_nothing(harness: Harness, size: int) -> None:
    store = putter(harness)
    data = payload(size)
    claimed = Digest.of(b"something else")
    with pytest.raises(DigestInvalidError) as caught:
        await store.put(claimed, stream(*chunked(data, MIB)))
    assert caught.value.detail == {"expected": str(claimed), "actual": str(Digest.of(data))}
    assert await store.stat(claimed) is None and await store.stat(Digest.of(data)) is None
    assert [u async for u in store.iter_uploads()] == []
    assert await harness.list_leftovers() == []


async def test_put_of_stored_content_verifies_without_rewriting(harness: Harness) -> None:
    store = putter(harness)
    data = payload(7 * MIB)
    digest = await put(harness.store(), data, chunk=MIB)
    before = await _s3_etag(harness, digest) if harness.kind == "s3" else None
    assert await store.put(digest, stream(*chunked(data, MIB))) == BlobInfo(digest, len(data))
    with pytest.raises(DigestInvalidError):
        await store.put(digest, stream(data[:-1], bytes([data[-1] ^ 1])))  # one bit flipped: never the same bytes
    if before is not None:
        assert await _s3_etag(harness, digest) == before
    assert await read_all(store, digest) == data
    assert await store.delete(digest)


async def test_put_stream_failing_midway_leaves_nothing(harness: Harness) -> None:
    store = putter(harness)
    data = payload(16 * MIB)

    async def broken() -> AsyncIterator[bytes]:
        for chunk in chunked(data[: 13 * MIB], MIB):
            await asyncio.sleep(0)
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put(Digest.of(data), broken())
    assert await store.stat(Digest.of(data)) is None
    assert [u async for u in store.iter_uploads()] == []
    assert await harness.list_leftovers() == []


@pytest.mark.parametrize("recorded", [True, False], ids=["upload-recorded", "died-before-recording"])
async def test_put_of_a_dead_writer_is_cleaned_up_by_abort(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, recorded: bool
) -> None:
    if harness.kind != "s3":
        pytest.skip("S3 direct-put bookkeeping")
    from services.core.storage import s3direct

    store = putter(harness)
    data = payload(12 * MIB)
    digest = Digest.of(data)

    async def crash(self: s3direct.DirectPut) -> None:  # the process died: nothing cleans up
        for task in self._parts:
            with contextlib.suppress(BaseException):
                await task

    monkeypatch.setattr(s3direct.DirectPut, "_abandon", crash)
    if not recorded:
        real = s3direct.DirectPut._write_marker

        def first_only(self: s3direct.DirectPut, multipart: str | None) -> None:
            if multipart is None:
                real(self, multipart)

        monkeypatch.setattr(s3direct.DirectPut, "_write_marker", first_only)

    async def dies() -> AsyncIterator[bytes]:
        yield data[: 11 * MIB]
        raise ConnectionResetError("killed")

    with pytest.raises(ConnectionResetError):
        await store.put(digest, dies())
    leftovers = await harness.list_leftovers()
    assert any(name.startswith("multipart:") and name.endswith(layout.blob_key(digest)) for name in leftovers)
    assert await store.stat(digest) is None
    # The janitor's view: an upload session like any other, which abort removes whole.
    janitor = harness.store()
    sessions = [u async for u, _ in janitor.iter_uploads()]
    assert len(sessions) == 1
    await janitor.abort(sessions[0])
    assert await harness.list_leftovers() == []


async def test_a_long_put_keeps_its_session_fresh_for_the_janitor(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    if harness.kind != "s3":
        pytest.skip("S3 direct-put bookkeeping")
    from services.core.storage import s3direct

    monkeypatch.setattr(s3direct, "MARKER_REFRESH_SECONDS", 0.0)
    store = putter(harness)
    data = payload(16 * MIB)
    go_on = asyncio.Event()
    seen: list[float] = []

    async def slow() -> AsyncIterator[bytes]:
        for piece in chunked(data, 5 * MIB):
            yield piece
            await go_on.wait()
            go_on.clear()

    task = asyncio.create_task(store.put(Digest.of(data), slow()))
    while not task.done():
        await asyncio.sleep(1.2)  # S3 keeps modification times in whole seconds
        seen += [t async for _, t in store.iter_uploads()]
        go_on.set()
    assert await task == BlobInfo(Digest.of(data), len(data))
    assert len(seen) >= 2 and seen[-1] > seen[0], seen
    assert [u async for u in store.iter_uploads()] == []
    assert await store.delete(Digest.of(data))
