"""FilesystemBlobStore: the BlobStore on a local directory, for the embedded assembly.

Layout is `services.core.storage.layout`. An upload session is a directory holding `data` (the
bytes so far) and `lock`. Writers (append, commit) take `flock(lock, LOCK_EX | LOCK_NB)`, so two
writers on one session, in one process or several, never interleave: the loser gets
RangeInvalidError at once instead of queueing behind a slow client. Appends are fsynced before
they return; a failed append truncates `data` back to the last fully written offset. Commit
verifies the hash, then hard-links `data` to its content address (atomic, never replaces an
existing blob) and fsyncs the directory, so a blob is visible only complete.

Blocking file I/O runs in worker threads, batched (about 1 MiB per hop) so small network chunks
do not cost one thread hop each. A stream that brings its own hash of the same bytes
(`HashedChunks`: a verified pull through the cache) is not hashed again. Hashing in a second thread
at the same time as writing was tried: on these two shared cores it added CPU and did not make
pushes faster, so a batch is written, then hashed, by one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar, cast

from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    UnavailableError,
)
from services.core.oci.digest import SUPPORTED_ALGORITHMS, Digest, Digester
from services.core.storage.blobs import BlobInfo, OfferedHash, settled_hash, shared_hash
from services.core.storage.layout import (
    BLOBS,
    READ_CHUNK,
    UPLOAD_DATA,
    UPLOAD_LOCK,
    UPLOADS,
    DigesterCache,
    blob_digest,
    blob_key,
    is_upload_id,
    new_upload_id,
)

_T = TypeVar("_T")
_WRITE_BATCH: Final = 1024 * 1024


async def _settle(awaitable: Awaitable[_T]) -> _T:
    """Await a worker-thread call; if cancelled meanwhile, still wait for the thread to finish.

    A thread cannot be interrupted, so cleanup (truncate, close) must not race a write in flight.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


_IOV_MAX: Final = 1024
"""Buffers per pwritev (Linux's IOV_MAX)."""


def _write_batch(fd: int, batch: list[bytes], position: int, digester: Digester | None) -> None:
    """Write `batch` at `position`, then hash it into `digester` (None: the stream brought its own hash)."""
    _write(fd, batch, position)
    if digester is None:
        _start_writeback(fd, position, sum(map(len, batch)))
        return
    # Hashed only after every byte landed, so a failed write leaves the digester at the file's end.
    for chunk in batch:
        digester.update(chunk)


def _write(fd: int, batch: list[bytes], position: int) -> None:
    for start in range(0, len(batch), _IOV_MAX):
        group = batch[start : start + _IOV_MAX]
        size = sum(map(len, group))
        done = os.pwritev(fd, group, position)
        if done < size:
            _write_rest(fd, group, position + done, done)
        position += size


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux: the fsync at the end does all of it
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE: Final = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE: Final = 2


def _start_writeback(fd: int, position: int, size: int) -> None:
    """Start writing a landed batch to disk now, without waiting for it: the fsync that ends the append then
    has only the last batches left, not the whole blob (a pull through the cache, whose clients wait for that
    fsync before their last byte: 256 MiB, 0.12-0.18 s after the last byte before, 0.01-0.02 s with it). Only
    for streams that bring their own hash: where this thread also hashes, it is the pipeline's slowest stage,
    and the submission (which blocks while the disk is busy) made 256 MiB pushes slower here (1.17x the time,
    median of 15 paired runs). A hint only; the fsync is what makes the bytes durable."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, position, size, _SYNC_FILE_RANGE_WRITE)


def _write_rest(fd: int, group: list[bytes], position: int, skip: int) -> None:
    """After a short pwritev: the bytes of `group` from `skip` on, at `position`."""
    for chunk in group:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        view = memoryview(chunk)[skip:]
        skip = 0
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]


def _rehash(fd: int, size: int, algorithm: str) -> Digester:
    digester = Digester(algorithm)
    position = 0
    while position < size:
        chunk = os.pread(fd, min(READ_CHUNK, size - position), position)
        if not chunk:
            break
        digester.update(chunk)
        position += len(chunk)
    return digester


def _rollback(fd: int, size: int) -> None:
    os.ftruncate(fd, size)
    os.fsync(fd)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_mkdir(path: Path) -> None:
    """`mkdir -p`, syncing the parent of each directory it creates: a new directory's entry (a blob's
    fan-out directory) survives a power loss only once its parent is synced, else a blob could vanish
    while its link in metadata stays."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made by a concurrent writer, which syncs its parent
        _fsync_dir(directory.parent)


class _BatchWriter:
    """Writes a stream to `fd` from `position` on, in batches of about _WRITE_BATCH bytes: one batch is in a
    worker thread (written with one pwritev, then hashed) while the next one is read, so memory stays at two
    batches and reading overlaps with disk and hashing. `offers_hash`: the stream, when it starts the session,
    whose own hash (HashedChunks) is taken instead of hashing its bytes again."""

    def __init__(self, fd: int, position: int, digester: Digester, *, offers_hash: AsyncIterable[bytes] | None
                 ) -> None:
        self.fd, self.written, self.digester = fd, position, digester
        self._offers_hash = offers_hash
        self._hashing = True
        self.offered: OfferedHash | None = None
        """The stream's own hash, once taken; `digester` then stays empty."""
        self._batch: list[bytes] = []
        self._batched = 0
        self._received = 0
        self._in_flight: asyncio.Future[None] | None = None
        self._in_flight_size = 0

    async def add(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= _WRITE_BATCH:
            await self._dispatch()

    async def flush(self) -> None:
        if self._batch:
            await self._dispatch()
        await self._land()

    async def abandon(self) -> None:
        """After a failure: let the thread finish (it cannot be interrupted); its bytes are not counted."""
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()

    async def _dispatch(self) -> None:
        await self._land()
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        self._received += size
        if self._offers_hash is not None:  # decided on the first batch, when the stream's hash has begun
            self.offered = shared_hash(self._offers_hash, received=self._received, algorithm=self.digester.algorithm)
            self._offers_hash = None
            self._hashing = self.offered is None
        digester = self.digester if self._hashing else None
        self._in_flight = asyncio.ensure_future(asyncio.to_thread(_write_batch, self.fd, batch, self.written, digester))
        self._in_flight_size = size

    async def _land(self) -> None:
        if self._in_flight is not None:
            await _settle(self._in_flight)
            self._in_flight = None
            self.written += self._in_flight_size

    async def hashed(self) -> Digester | None:
        """After `flush`: the hash of exactly the bytes written, or None when none covers them."""
        if self.offered is not None:
            return await settled_hash(self.offered, stored=self.written)
        return self.digester if self.digester.size == self.written else None


class FilesystemBlobStore:
    """BlobStore + LocalBlobFiles under `root` (created on first use)."""

    def __init__(self, root: Path, *, digesters: DigesterCache | None = None) -> None:
        self._root = root
        self._digesters = digesters if digesters is not None else DigesterCache()

    # -- paths ---------------------------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        return self._root / blob_key(digest)

    def _upload_dir(self, upload_id: str) -> Path:
        if not is_upload_id(upload_id):
            # Checked before any path is built: a client-supplied id must not escape uploads/.
            raise BlobUploadUnknownError(f"unknown upload {upload_id[:80]!r}")
        return self._root / UPLOADS / upload_id

    # -- reading -------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            st = await asyncio.to_thread(os.stat, self._blob_path(digest))
        except FileNotFoundError:
            return None
        return BlobInfo(digest, st.st_size)

    async def read(self, digest: Digest, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        try:
            fd = await asyncio.to_thread(os.open, self._blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobUnknownError(f"blob {digest} unknown", detail={"digest": str(digest)}) from None
        try:
            position, remaining = offset, length
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(os.pread, fd, want, position)
                if not chunk:
                    return
                position += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def local_path(self, digest: Digest) -> Path | None:
        path = self._blob_path(digest)
        return path if path.is_file() else None

    # -- uploads -------------------------------------------------------------------------------

    async def start_upload(self) -> str:
        upload_id = new_upload_id()
        await asyncio.to_thread(self._create_session, self._upload_dir(upload_id))
        return upload_id

    @staticmethod
    def _create_session(directory: Path) -> None:
        _durable_mkdir(directory.parent)
        directory.mkdir()
        for name in (UPLOAD_LOCK, UPLOAD_DATA):
            os.close(os.open(directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        _fsync_dir(directory)

    async def upload_size(self, upload_id: str) -> int:
        directory = self._upload_dir(upload_id)
        try:
            st = await asyncio.to_thread(os.stat, directory / UPLOAD_DATA)
        except FileNotFoundError:
            raise BlobUploadUnknownError(f"unknown upload {upload_id!r}") from None
        return st.st_size

    def _open_session(self, upload_id: str) -> tuple[int, int, int]:
        """Lock the session and open its data: (lock fd, data fd, size). The lock lives as long as its fd."""
        directory = self._upload_dir(upload_id)
        try:
            lock_fd = os.open(directory / UPLOAD_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobUploadUnknownError(f"unknown upload {upload_id!r}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _close(lock_fd)
            raise RangeInvalidError(f"upload {upload_id!r} is being written by another request") from None
        try:
            # Opened after locking: a commit/abort that held the lock may have removed the session.
            data_fd = os.open(directory / UPLOAD_DATA, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            _close(lock_fd)
            raise BlobUploadUnknownError(f"unknown upload {upload_id!r}") from None
        return lock_fd, data_fd, os.fstat(data_fd).st_size

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *, offset: int) -> int:
        lock_fd, data_fd, size = await _settle(asyncio.to_thread(self._open_session, upload_id))
        try:
            if size != offset:
                raise RangeInvalidError(
                    f"upload {upload_id!r} holds {size} bytes; a chunk must start there, not at {offset}",
                    detail={"size": size, "offset": offset},
                )
            digester = self._digesters.take(upload_id, size=size)
            if digester is None:
                digester = await _settle(asyncio.to_thread(_rehash, data_fd, size, "sha256"))
            writer = _BatchWriter(data_fd, size, digester, offers_hash=chunks if size == 0 else None)
            try:
                async for chunk in chunks:
                    if chunk:
                        await writer.add(chunk)
                await writer.flush()
                await _settle(asyncio.to_thread(os.fsync, data_fd))
            except BaseException:
                await writer.abandon()
                # Drop a half-written batch; the hash is kept only if it covers exactly the bytes kept.
                await _settle(asyncio.to_thread(_rollback, data_fd, writer.written))
                if writer.digester.size == writer.written:
                    self._digesters.put(upload_id, writer.digester)
                raise
            digester = await writer.hashed()
            if digester is None:  # a stream's own hash that does not cover what was written
                digester = await _settle(asyncio.to_thread(_rehash, data_fd, writer.written, "sha256"))
            self._digesters.put(upload_id, digester)
            return writer.written
        finally:
            _close(data_fd, lock_fd)

    async def commit(self, upload_id: str, digest: Digest) -> BlobInfo:
        lock_fd, data_fd, size = await _settle(asyncio.to_thread(self._open_session, upload_id))
        try:
            digester = self._digesters.take(upload_id, size=size, algorithm=digest.algorithm)
            if digester is None:
                digester = await _settle(asyncio.to_thread(_rehash, data_fd, size, digest.algorithm))
            actual = digester.digest()
            if actual != digest:
                await _settle(asyncio.to_thread(self._remove_session, upload_id))
                raise DigestInvalidError(
                    f"upload hashes to {actual}, not {digest}",
                    detail={"expected": str(digest), "actual": str(actual)},
                )
            await _settle(asyncio.to_thread(self._publish, upload_id, digest))
        finally:
            self._digesters.discard(upload_id)
            _close(data_fd, lock_fd)
        return BlobInfo(digest, size)

    def _publish(self, upload_id: str, digest: Digest) -> None:
        target = self._blob_path(digest)
        _durable_mkdir(target.parent)
        # A hard link is atomic and never replaces: an existing blob (same bytes) simply stays.
        with contextlib.suppress(FileExistsError):
            os.link(self._upload_dir(upload_id) / UPLOAD_DATA, target)
            _fsync_dir(target.parent)
        self._remove_session(upload_id)

    def _remove_session(self, upload_id: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

    async def abort(self, upload_id: str) -> None:
        if is_upload_id(upload_id):
            self._digesters.discard(upload_id)
            await asyncio.to_thread(shutil.rmtree, self._upload_dir(upload_id), True)

    # -- deleting and listing ------------------------------------------------------------------

    async def delete(self, digest: Digest) -> bool:
        try:
            await asyncio.to_thread(os.unlink, self._blob_path(digest))
        except FileNotFoundError:
            return False
        return True

    async def delete_many(self, digests: Sequence[Digest]) -> list[Digest]:
        def remove() -> list[Digest]:
            failed: list[Digest] = []
            for digest in digests:
                try:
                    os.unlink(self._blob_path(digest))
                except FileNotFoundError:
                    pass
                except OSError:
                    failed.append(digest)
            return failed

        return await asyncio.to_thread(remove)

    async def iter_all(self) -> AsyncIterator[BlobInfo]:
        for algorithm in sorted(SUPPORTED_ALGORITHMS):
            base = self._root / BLOBS / algorithm
            for fan in await asyncio.to_thread(_subdirectories, base):
                # One thread hop per fan-out directory (at most a few thousand entries each).
                for info in await asyncio.to_thread(_blobs_in, base / fan, algorithm, fan):
                    yield info

    async def iter_uploads(self) -> AsyncIterator[tuple[str, float]]:
        for upload_id, modified in await asyncio.to_thread(self._list_uploads):
            yield upload_id, modified

    def _list_uploads(self) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for upload_id in _subdirectories(self._root / UPLOADS):
            if not is_upload_id(upload_id):
                continue
            directory = self._root / UPLOADS / upload_id
            try:
                modified = max(directory.stat().st_mtime, (directory / UPLOAD_DATA).stat().st_mtime)
            except FileNotFoundError:
                continue
            found.append((upload_id, modified))
        return found

    # -- lifecycle -----------------------------------------------------------------------------

    async def ping(self) -> None:
        def check() -> None:
            self._root.mkdir(parents=True, exist_ok=True)
            if not os.access(self._root, os.W_OK | os.X_OK):
                raise UnavailableError(f"blob directory {self._root} is not writable")

        try:
            await asyncio.to_thread(check)
        except OSError as exc:
            raise UnavailableError(f"blob directory {self._root} unusable: {exc}") from exc

    async def close(self) -> None:
        return None


def _subdirectories(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _blobs_in(directory: Path, algorithm: str, fan: str) -> list[BlobInfo]:
    infos: list[BlobInfo] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                digest = blob_digest(f"{BLOBS}/{algorithm}/{fan}/{entry.name}")
                if digest is None or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    infos.append(BlobInfo(digest, st.st_size, st.st_mtime))
    except FileNotFoundError:
        pass
    return infos
