"""One upstream fetch per blob digest, shared by every client that asks for it meanwhile (single flight,
per process). The fetch runs on its own (a client that goes away stops nothing): its bytes go to the blob store,
which commits them only once the digest verifies, and to a spool file that every waiting client reads as it
grows, each at its own pace, so nobody waits for the whole blob and no blob is ever held in memory.

A reader gets the blob's last byte only after the store committed it: when the digest does not verify, every
client's transfer ends short of its Content-Length (an error for any client) and nothing is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

from services.core.oci.digest import Digest

log = logging.getLogger(__name__)

READ_CHUNK: Final = 1 << 20


class FetchFailedError(Exception):
    """The shared fetch failed; `cause` says why (an UpstreamFailure, a storage error, ...)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class BlobFetch:
    """One blob coming from upstream. `source()` yields its verified bytes (the OCI client's pull, which
    raises after the last chunk if the digest does not match); `store(chunks)` stores them."""

    def __init__(self, digest: Digest, size: int, *, repository: str, spool_dir: Path,
                 source: Callable[[], AsyncIterator[bytes]],
                 store: Callable[[AsyncIterable[bytes]], Awaitable[object]]) -> None:
        self.digest, self.size, self.repository = digest, size, repository
        self.path = spool_dir / f"{digest.hex[:32]}-{uuid.uuid4().hex}.part"
        self._source, self._store = source, store
        self.available = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.task: asyncio.Task[None] | None = None

    def start(self, on_done: Callable[[BlobFetch], None]) -> None:
        async def run() -> None:
            try:
                await self._store(self._tee())
            except BaseException as exc:
                self.error = exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                os.close(self._fd)
                self.done = True
                on_done(self)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # readers keep their open descriptors
                self._notify()

        self.task = asyncio.get_running_loop().create_task(run(), name=f"pull-through {self.digest}")

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _tee(self) -> AsyncIterator[bytes]:
        async for chunk in self._source():
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.available += len(chunk)
            self._notify()
            yield chunk

    def open(self) -> int:
        """A descriptor on the spool file for one reader: take it while the fetch is registered (the file
        goes away when the fetch ends; an open descriptor keeps reading it)."""
        return os.open(self.path, os.O_RDONLY)

    async def started(self) -> None:
        """Until the first bytes arrived or the fetch ended: a failure before any byte is a clean error."""
        while not self.done and self.available == 0:
            await self._changed.wait()

    async def read(self, fd: int, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """Bytes [offset, offset+length) as they arrive; the blob's last byte only once stored. Raises
        FetchFailedError when the fetch fails. The caller closes `fd`."""
        end = offset + length
        position = offset
        while position < end:
            changed = self._changed
            if self.error is not None:
                raise FetchFailedError(self.error)
            limit = end if self.done else min(self.available, self.size - 1, end)
            if position < limit:
                data = os.pread(fd, min(READ_CHUNK, limit - position), position)
                if not data:
                    raise FetchFailedError(OSError(f"spool file of {self.digest} ended early"))
                position += len(data)
                yield data
                continue
            await changed.wait()


class BlobFetches:
    """The fetches in flight, by digest."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self._fetches: dict[Digest, BlobFetch] = {}
        self.started = 0
        """Fetches started so far (for tests and metrics)."""

    def setup(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool_dir.glob("*.part"):  # a process that died mid-fetch
            with contextlib.suppress(OSError):
                leftover.unlink()

    def join(self, digest: Digest, size: int, *, repository: str,
             source: Callable[[], AsyncIterator[bytes]],
             store: Callable[[AsyncIterable[bytes]], Awaitable[object]]) -> tuple[BlobFetch, int]:
        """The fetch of `digest` (started now if none is in flight) and a reader's descriptor on it."""
        fetch = self._fetches.get(digest)
        if fetch is None:
            fetch = BlobFetch(digest, size, repository=repository, spool_dir=self.spool_dir, source=source,
                              store=store)
            self._fetches[digest] = fetch
            self.started += 1
            fetch.start(self._finished)
        return fetch, fetch.open()

    def _finished(self, fetch: BlobFetch) -> None:
        if self._fetches.get(fetch.digest) is fetch:
            del self._fetches[fetch.digest]

    async def close(self) -> None:
        tasks = [f.task for f in self._fetches.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
