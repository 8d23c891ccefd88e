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

With a store that is slower than the upstream (S3: SeaweedFS here spends ~3 s of CPU ingesting 256 MiB), the
fetch spools (`spool=True`): the pull no longer waits for the store but writes every byte to an unnamed
temporary file (page-cache speed; unlinked from the start, so a crash leaves nothing behind) while the store
reads the blob like any other reader, from the window or the spool, behind it. Readers then get the last byte
once the pull verified the digest, not once the store committed: what a client receives is checked either way,
and nothing is cached unless the store's own check passes. A store that fails (S3 going away) then fails no
client: every reader holds its own descriptor of the spool and finishes from it; only caching is lost. The local
filesystem store keeps pace with the pull, and a second write of every byte there would only cost (see above),
so it does not spool.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Final

from services.core.client.blobs import sharing_pull_digesters
from services.core.oci.digest import Digest, Digester

log = logging.getLogger(__name__)

WINDOW: Final = 16 << 20
"""Bytes of a fetch kept in memory for the readers that keep up with it (the newest)."""
SPOOL_BATCH: Final = 4 << 20
"""Bytes written to the spool per worker-thread hop; one batch is written while the next one arrives."""
SPOOL_READ: Final = 1 << 20
"""Bytes read back from the spool per worker-thread hop."""

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
    reads them back once stored. `spool`: write the bytes to a temporary file too, so that neither the pull
    nor the readers wait for the store (see the module's docstring)."""

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
        spool: bool = False,
        spool_dir: str | None = None,
    ) -> None:
        self.digest, self.size, self.repository = digest, size, repository
        self._spool_dir = spool_dir
        self._source, self._store, self._read_stored = source, store, read_stored
        self._window = window
        self._spooling = spool
        self._chunks: collections.deque[tuple[int, bytes]] = collections.deque()
        """(offset, bytes) of the newest chunks, contiguous, from `window_start` to `available`."""
        self._held = 0
        self.window_start = 0
        self.available = 0
        self.spooled = 0
        """Bytes landed in the spool file (spooling only); the window never drops bytes beyond it."""
        self.verified = False
        """The pull ended and its digest matched (spooling: readers may have the last byte)."""
        self.done = False
        self.error: BaseException | None = None
        self._spool: int | None = None
        self._writing = 0
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self, on_done: Callable[[BlobFetch], None]) -> None:
        async def run() -> None:
            try:
                if self._spooling:
                    await self._spool_and_store()
                else:
                    await self._pull_into_store()
            except BaseException as exc:
                self.error = exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if self.verified:
                    log.warning("pull-through: %s served from the spool but not cached: the store failed: %s",
                                self.digest, exc)
            finally:
                self.done = True
                self._chunks.clear()
                self._held = 0
                if self._spool is not None:
                    spool, self._spool = self._spool, None
                    os.close(spool)  # readers still on it hold their own descriptor
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

    def _keep(self, chunk: bytes) -> None:
        """`chunk` into the window; the oldest chunks out past `window` bytes (once spooled, when spooling)."""
        self._chunks.append((self.available, chunk))
        self.available += len(chunk)
        self._held += len(chunk)
        self._trim()

    def _trim(self) -> None:
        while self._chunks and self._held - len(self._chunks[0][1]) >= self._window:
            offset, old = self._chunks[0]
            if self._spooling and offset + len(old) > self.spooled:
                break  # not on disk yet: the only copy
            self._chunks.popleft()
            self._held -= len(old)
            self.window_start = offset + len(old)

    async def _tee(self) -> AsyncIterator[bytes]:
        async for chunk in self._source():
            if not chunk:
                continue
            self._keep(chunk)
            self._notify()
            yield chunk

    async def _pull_into_store(self) -> None:
        stream = _Stream(self._tee())
        with sharing_pull_digesters(lambda pulled: stream.offered.append(_Offered(pulled, lambda: pulled.size))):
            await self._store(stream)

    async def _spool_and_store(self) -> None:
        """The pull into the window and the spool, and the store reading behind it, side by side."""
        try:
            self._spool = await asyncio.to_thread(_open_spool, self._spool_dir)
        except OSError as exc:
            log.warning("pull-through: no spool file for %s (%s); the pull goes at the store's pace", self.digest, exc)
            self._spooling = False
            await self._pull_into_store()
            return
        stream = _Stream(self.read(0, self.size), counted=True)
        storing = asyncio.ensure_future(self._store(stream))
        try:
            with sharing_pull_digesters(lambda pulled: stream.offered.append(_Offered(pulled, lambda: stream.yielded))):
                await self._pump()
        except BaseException as exc:
            self.error = exc  # the store's stream fails with it: nothing is published
            raise
        else:
            self.verified = True
        finally:
            self._notify()
            await asyncio.wait([storing])  # it ends either way, failing with the pull
            await stream.aclose()
            if not storing.cancelled():
                storing.exception()  # retrieved: after a failed pull, the pull's error is the one reported
        await storing

    async def _pump(self) -> None:
        batch: list[bytes] = []
        batched = 0
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in self._source():
                if not chunk:
                    continue
                self._keep(chunk)
                self._notify()
                batch.append(chunk)
                batched += len(chunk)
                if batched >= SPOOL_BATCH:
                    # One batch in a worker thread at a time: memory stays at the window plus two batches.
                    if writing is not None:
                        await asyncio.shield(writing)
                        self._landed()
                    writing = self._write(batch)
                    batch, batched = [], 0
            if writing is not None:
                await asyncio.shield(writing)
                self._landed()
            if batch:
                await asyncio.shield(self._write(batch))
                self._landed()
        finally:
            if writing is not None:  # a thread cannot be stopped: the spool is closed only after it
                await asyncio.wait([writing])

    def _write(self, batch: list[bytes]) -> asyncio.Future[None]:
        assert self._spool is not None
        self._writing = sum(map(len, batch))
        return asyncio.ensure_future(asyncio.to_thread(_write_all, self._spool, batch, self.spooled))

    def _landed(self) -> None:
        self.spooled += self._writing
        self._trim()
        self._notify()

    async def finished(self) -> None:
        """Until the fetch ended: stored, or failed."""
        await self._finished.wait()

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
        """Bytes [offset, offset+length) as they arrive; the blob's last byte only once stored (spooling: once
        verified). Raises FetchFailedError when the fetch fails."""
        end = offset + length
        position = offset
        # Spooling: this reader's own descriptor of the spool, taken as soon as there is one. Once the pull has
        # verified the blob, the reader needs nothing else: it gets every byte from the spool even when the
        # store fails (then nothing is cached, and only the next pull is a miss again).
        spool: int | None = None
        try:
            while position < end:
                changed = self._changed
                if spool is None and self._spool is not None:
                    spool = os.dup(self._spool)
                if self.error is not None and not (spool is not None and self.verified):
                    raise FetchFailedError(self.error)
                last = self.size if self.verified else self.size - 1
                if spool is None and self.done:  # stored: the rest from the blob store
                    async for data in self._read_stored(position, end - position):
                        position += len(data)
                        yield data
                    if position != end:
                        raise FetchFailedError(OSError(f"stored {self.digest} ended at {position}, not {end}"))
                    return
                if spool is not None and (position < self.window_start or self.done):  # from the spool
                    limit = min(self.spooled, last, end)
                    if position < limit:
                        data = await asyncio.to_thread(os.pread, spool, min(SPOOL_READ, limit - position), position)
                        if not data:
                            raise FetchFailedError(OSError(f"the spool of {self.digest} ended at {position}"))
                        position += len(data)
                        yield data
                        continue
                    if self.done:  # a verified pull spooled every byte: cannot happen
                        raise FetchFailedError(self.error or OSError(f"the spool of {self.digest} ended at {position}"))
                    await changed.wait()
                    continue
                if position < self.window_start:  # fell behind the window, not spooling: the rest once stored
                    await self._finished.wait()
                    continue
                limit = min(self.available, last, end)
                if position < limit:
                    data = self._slice(position, limit)
                    position += len(data)
                    yield data
                    continue
                await changed.wait()
        finally:
            if spool is not None:
                os.close(spool)


def _open_spool(directory: str | None) -> int:
    """An unnamed file in `directory` (None: the temporary directory; O_TMPFILE where the system has it, else
    created and unlinked at once): it has no name to leave behind, whatever happens to the process."""
    with tempfile.TemporaryFile(prefix="hanzo-pull-", dir=directory) as handle:
        return os.dup(handle.fileno())


def _write_all(fd: int, batch: list[bytes], position: int) -> None:
    for chunk in batch:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]


class _Offered:
    """The pull's hash as the store's stream offers it (`HashedChunks`); `size` is what it covers so far.

    When the pull feeds the store directly, it has hashed exactly the bytes the stream yielded so far
    (`sharing_pull_digesters`): `size` is the pull's. When the store reads behind the pull (spooling), the
    stream yields the pull's own bytes, from memory or read back from the spool, so once it has yielded them
    all (the pull verified them first) the pull's hash covers exactly what the store received: `size` is what
    the stream has yielded. Asked earlier, that hash covers more than the store holds, and the store does not
    take it (`settled_hash`)."""

    def __init__(self, pulled: Digester, covered: Callable[[], int]) -> None:
        self._pulled, self._covered = pulled, covered
        self.algorithm = pulled.algorithm

    @property
    def size(self) -> int:
        return self._covered()

    async def settled(self) -> Digester:
        return self._pulled


class _Stream:
    """The fetch's bytes on their way to the store, with the hash the source's pull computed of them
    (HashedChunks, services/core/storage/blobs.py), when it is one pull."""

    def __init__(self, chunks: AsyncIterator[bytes], *, counted: bool = False) -> None:
        self._chunks = chunks
        self._counted = counted
        self.offered: list[_Offered] = []
        self.yielded = 0
        """Bytes yielded so far, when `counted` (a store reading behind the pull)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        # Uncounted, the chunks go straight through: no extra step per chunk on the pull's own path.
        return self if self._counted else self._chunks

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self.yielded += len(chunk)
        return chunk

    def offered_hash(self) -> _Offered | None:
        return self.offered[0] if len(self.offered) == 1 else None

    async def aclose(self) -> None:
        """Close the source (a reader's generator: its spool descriptor), when the store stopped early."""
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class BlobFetches:
    """The fetches in flight, by digest."""

    def __init__(self, *, window: int = WINDOW, spool: bool = False, spool_dir: str | None = None) -> None:
        self._window = window
        self._spool = spool
        self._spool_dir = spool_dir
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
                spool=self._spool,
                spool_dir=self._spool_dir,
            )
            self._fetches[digest] = fetch
            self.started += 1
            fetch.start(self._finished)
        return fetch

    def current(self, digest: Digest) -> BlobFetch | None:
        """The fetch of `digest` in flight, if any."""
        return self._fetches.get(digest)

    async def idle(self) -> None:
        """Until every fetch in flight has ended (stored or failed)."""
        tasks = [f.task for f in self._fetches.values() if f.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, fetch: BlobFetch) -> None:
        if self._fetches.get(fetch.digest) is fetch:
            del self._fetches[fetch.digest]

    async def close(self) -> None:
        tasks = [f.task for f in self._fetches.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
