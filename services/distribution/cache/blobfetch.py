"""One upstream fetch per blob digest, shared by every client that asks for it meanwhile (single flight,
per process). The fetch runs on its own (a client that goes away stops nothing): its bytes go to the blob store,
which commits them only once the digest verifies, and stay in a bounded memory window (`window` bytes, the
newest) from which every client that keeps up is served as they arrive, each at its own pace, so nobody waits
for the whole blob and no blob is ever held in memory whole. A client that falls behind the window (or joins
after its start has gone) gets the rest from the blob store once the fetch is stored.

Nothing is written twice: the bytes go to the blob store only (an earlier version also wrote a spool file for the
readers, which on a disk whose page-cache writes are slow halved a cold pull's speed; bench/cache.py).

A reader gets the blob's last byte only after the store committed it: when the digest does not verify, every
client's transfer ends short of its Content-Length (an error for any client) and nothing is cached.

Every byte is hashed once: the store takes the OCI client's running hash of the pull (`HashedChunks`) for its
own digest check instead of computing the same one again.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Final

from services.core.client.blobs import sharing_pull_digesters
from services.core.oci.digest import Digest, Digester

log = logging.getLogger(__name__)

WINDOW: Final = 16 << 20
"""Bytes of a fetch kept in memory for the readers that keep up with it (the newest)."""

ReadStored = Callable[[int, int], AsyncIterator[bytes]]
"""(offset, length) -> the stored blob's bytes, once the fetch committed it."""


class FetchFailedError(Exception):
    """The shared fetch failed; `cause` says why (an UpstreamFailure, a storage error, ...)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class BlobFetch:
    """One blob coming from upstream. `source()` yields its verified bytes (the OCI client's pull, which
    raises after the last chunk if the digest does not match); `store(chunks)` stores them; `read_stored`
    reads them back once stored."""

    def __init__(
        self,
        digest: Digest,
        size: int,
        *,
        repository: str,
        source: Callable[[], AsyncIterator[bytes]],
        store: Callable[[AsyncIterable[bytes]], Awaitable[object]],
        read_stored: ReadStored,
        window: int = WINDOW,
    ) -> None:
        self.digest, self.size, self.repository = digest, size, repository
        self._source, self._store, self._read_stored = source, store, read_stored
        self._window = window
        self._chunks: collections.deque[tuple[int, bytes]] = collections.deque()
        """(offset, bytes) of the newest chunks, contiguous, from `window_start` to `available`."""
        self._held = 0
        self.window_start = 0
        self.available = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self, on_done: Callable[[BlobFetch], None]) -> None:
        async def run() -> None:
            stream = _Stream(self._tee())
            try:
                with sharing_pull_digesters(stream.offered.append):
                    await self._store(stream)
            except BaseException as exc:
                self.error = exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                self.done = True
                self._chunks.clear()
                self._held = 0
                on_done(self)
                self._finished.set()
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
            if not chunk:
                continue
            self._chunks.append((self.available, chunk))
            self.available += len(chunk)
            self._held += len(chunk)
            while self._held - len(self._chunks[0][1]) >= self._window:
                offset, old = self._chunks.popleft()
                self._held -= len(old)
                self.window_start = offset + len(old)
            self._notify()
            yield chunk

    async def started(self) -> None:
        """Until the first bytes arrived or the fetch ended: a failure before any byte is a clean error."""
        while not self.done and self.available == 0:
            await self._changed.wait()

    def _slice(self, position: int, limit: int) -> bytes:
        """Bytes from `position` (inside the window) up to the end of its chunk or `limit`."""
        index = bisect.bisect_right(self._chunks, position, key=lambda c: c[0]) - 1
        offset, chunk = self._chunks[index]
        start, stop = position - offset, min(len(chunk), limit - offset)
        return chunk if start == 0 and stop == len(chunk) else chunk[start:stop]

    async def read(self, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """Bytes [offset, offset+length) as they arrive; the blob's last byte only once stored. Raises
        FetchFailedError when the fetch fails."""
        end = offset + length
        position = offset
        while position < end:
            changed = self._changed
            if self.error is not None:
                raise FetchFailedError(self.error)
            if self.done:  # stored: the rest from the blob store
                async for data in self._read_stored(position, end - position):
                    position += len(data)
                    yield data
                if position != end:
                    raise FetchFailedError(OSError(f"stored {self.digest} ended at {position}, not {end}"))
                return
            if position < self.window_start:  # fell behind the window: the rest once stored
                await self._finished.wait()
                continue
            limit = min(self.available, self.size - 1, end)
            if position < limit:
                data = self._slice(position, limit)
                position += len(data)
                yield data
                continue
            await changed.wait()


class _Stream:
    """The fetch's bytes on their way to the store, with the hash the source's pull computed of them
    (HashedChunks, services/core/storage/blobs.py), when it is one pull."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.offered: list[Digester] = []

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    def digester(self) -> Digester | None:
        return self.offered[0] if len(self.offered) == 1 else None


class BlobFetches:
    """The fetches in flight, by digest."""

    def __init__(self, *, window: int = WINDOW) -> None:
        self._window = window
        self._fetches: dict[Digest, BlobFetch] = {}
        self.started = 0
        """Fetches started so far (for tests and metrics)."""

    def join(
        self,
        digest: Digest,
        size: int,
        *,
        repository: str,
        source: Callable[[], AsyncIterator[bytes]],
        store: Callable[[AsyncIterable[bytes]], Awaitable[object]],
        read_stored: ReadStored,
    ) -> BlobFetch:
        """The fetch of `digest` (started now if none is in flight)."""
        fetch = self._fetches.get(digest)
        if fetch is None:
            fetch = BlobFetch(
                digest,
                size,
                repository=repository,
                source=source,
                store=store,
                read_stored=read_stored,
                window=self._window,
            )
            self._fetches[digest] = fetch
            self.started += 1
            fetch.start(self._finished)
        return fetch

    def _finished(self, fetch: BlobFetch) -> None:
        if self._fetches.get(fetch.digest) is fetch:
            del self._fetches[fetch.digest]

    async def close(self) -> None:
        tasks = [f.task for f in self._fetches.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
