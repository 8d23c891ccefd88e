"""FilesystemBlobStore: the BlobStore on a local directory, for the embedded assembly.

Layout is `services.core.storage.layout`. An upload session is a directory holding `data` (the
bytes so far) and `lock`. Writers (append, commit) take `flock(lock, LOCK_EX | LOCK_NB)`, so two
writers on one session, in one process or several, never interleave: the loser gets
RangeInvalidError at once instead of queueing behind a slow client. Appends are fsynced before
they return; a failed append truncates `data` back to the last fully written offset. Commit
verifies the hash, then hard-links `data` to its content address (atomic, never replaces an
existing blob) and fsyncs the directory, so a blob is visible only complete.

Blocking file I/O runs in worker threads, batched (about 1 MiB per hop) so small network chunks
do not cost one thread hop each.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    UnavailableError,
)
from services.core.oci.digest import SUPPORTED_ALGORITHMS, Digest, Digester
from services.core.storage.blobs import BlobInfo
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


def _write_batch(fd: int, batch: list[bytes], position: int, digester: Digester) -> None:
    for chunk in batch:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]
    # Hash only after every byte landed, so the digester never runs ahead of the file.
    for chunk in batch:
        digester.update(chunk)


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
            written = size
            # One batch is written (and hashed) in a worker thread while the next one is read from the
            # stream, so memory stays at two batches and reading overlaps with disk and hashing.
            in_flight: asyncio.Future[None] | None = None
            in_flight_size = 0

            async def finish_in_flight() -> None:
                nonlocal in_flight, written
                if in_flight is not None:
                    future, in_flight = in_flight, None
                    await _settle(future)
                    written += in_flight_size

            try:
                batch: list[bytes] = []
                batched = 0
                async for chunk in chunks:
                    if not chunk:
                        continue
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= _WRITE_BATCH:
                        await finish_in_flight()
                        in_flight = asyncio.ensure_future(
                            asyncio.to_thread(_write_batch, data_fd, batch, written, digester)
                        )
                        in_flight_size = batched
                        batch, batched = [], 0
                await finish_in_flight()
                if batch:
                    await _settle(asyncio.to_thread(_write_batch, data_fd, batch, written, digester))
                    written += batched
                await _settle(asyncio.to_thread(os.fsync, data_fd))
            except BaseException:
                if in_flight is not None:
                    # Let the thread finish (it cannot be interrupted); its bytes are then dropped below.
                    with contextlib.suppress(BaseException):
                        await _settle(in_flight)
                    in_flight = None
                # Drop a half-written batch: the session keeps exactly the bytes the digester saw.
                await _settle(asyncio.to_thread(_rollback, data_fd, written))
                if digester.size == written:
                    self._digesters.put(upload_id, digester)
                raise
            self._digesters.put(upload_id, digester)
            return written
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
                    infos.append(BlobInfo(digest, entry.stat(follow_symlinks=False).st_size))
    except FileNotFoundError:
        pass
    return infos
