"""The shared blob fetch: readers stream while it is stored, the last byte only once stored, failures reach
every reader, a reader behind the memory window gets the rest from the store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import pytest

from services.core.oci.digest import Digest
from services.distribution.cache import blobfetch
from services.distribution.cache.blobfetch import BlobFetch, BlobFetches, FetchFailedError

DATA = bytes(range(256)) * 4096  # 1 MiB


async def drain(fetch: BlobFetch, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in fetch.read(offset, len(DATA) if length is None else length)])


class Store:
    """Collects what is stored; `read` serves it back once stored."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.stored: list[bytes] = []
        self.reads = 0

    async def store(self, chunks: AsyncIterable[bytes]) -> None:
        self.stored.append(b"".join([c async for c in chunks]))
        await self.release.wait()  # until then the store has not committed

    async def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        self.reads += 1
        yield self.stored[-1][offset : offset + length]


async def source() -> AsyncIterator[bytes]:
    for i in range(0, len(DATA), 65536):
        yield DATA[i : i + 65536]


async def test_readers_share_one_fetch_and_get_the_last_byte_once_stored() -> None:
    fetches = BlobFetches()
    store = Store()
    store.release.clear()
    digest = Digest.of(DATA)
    first = fetches.join(
        digest, len(DATA), repository="cache/a", source=source, store=store.store, read_stored=store.read
    )
    second = fetches.join(
        digest, len(DATA), repository="cache/b", source=source, store=store.store, read_stored=store.read
    )
    assert first is second and fetches.started == 1
    readers = [asyncio.create_task(drain(first)), asyncio.create_task(drain(first, 10, 100))]
    await asyncio.sleep(0.2)
    assert readers[1].done() and readers[1].result() == DATA[10:110]  # a range before the end needs no commit
    assert not readers[0].done()  # everything but the last byte; that waits for the store
    release_reads = store.reads
    store.release.set()
    assert await readers[0] == DATA
    assert store.stored == [DATA]
    assert store.reads == release_reads + 1  # only the last byte came from the store


async def test_a_reader_behind_the_window_gets_the_rest_from_the_store() -> None:
    fetches = BlobFetches(window=128 * 1024)
    store = Store()
    gate = asyncio.Event()

    async def slow_source() -> AsyncIterator[bytes]:
        async for chunk in source():
            yield chunk
            if not gate.is_set():
                gate.set()
                await asyncio.sleep(0.05)

    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=slow_source, store=store.store, read_stored=store.read
    )
    store.release.clear()
    await gate.wait()
    await asyncio.sleep(0.2)  # the fetch ran on; its first bytes left the window
    assert fetch.window_start > 0 and not fetch.done
    late = asyncio.create_task(drain(fetch))
    await asyncio.sleep(0.1)
    assert not late.done() and store.reads == 0  # waits for the store
    store.release.set()
    assert await late == DATA
    assert await drain(fetch, 5, 1000) == DATA[5:1005]
    assert store.reads >= 1 and fetch._held == 0  # nothing held in memory once done


async def test_a_failed_fetch_fails_every_reader_and_holds_nothing() -> None:
    fetches = BlobFetches()

    async def failing() -> AsyncIterator[bytes]:
        yield DATA[:1000]
        raise RuntimeError("digest mismatch")

    async def store(chunks: AsyncIterable[bytes]) -> None:
        async for _ in chunks:
            pass

    async def never(offset: int, length: int) -> AsyncIterator[bytes]:
        raise AssertionError("nothing was stored")
        yield b""  # pragma: no cover

    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=failing, store=store, read_stored=never
    )
    with pytest.raises(FetchFailedError):
        await drain(fetch)
    assert isinstance(fetch.error, RuntimeError)
    assert fetch._held == 0 and not fetch._chunks
    # The next join starts a new fetch.
    again = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=failing, store=store, read_stored=never
    )
    assert again is not fetch and fetches.started == 2
    with pytest.raises(FetchFailedError):
        await drain(again)


# -------------------------------------------------------------------------------------------------- spooling


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class SlowStore(Store):
    """Takes its time per chunk (an S3 upload): the pull must not wait for it when spooling."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.failure: BaseException | None = None

    async def store(self, chunks: AsyncIterable[bytes]) -> None:
        got = []
        try:
            async for chunk in chunks:
                got.append(chunk)
                await asyncio.sleep(self.delay)
        except BaseException as exc:
            self.failure = exc
            raise
        self.stored.append(b"".join(got))
        await self.release.wait()


async def test_spooling_readers_get_every_byte_once_verified_while_the_store_lags_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(blobfetch, "SPOOL_BATCH", 65536)
    fds = open_fds()
    fetches = BlobFetches(window=128 * 1024, spool=True)
    store = SlowStore(0.02)
    store.release.clear()
    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store.store, read_stored=store.read
    )
    assert await asyncio.wait_for(drain(fetch), 5) == DATA  # the store needs 16 x 0.02 s and has not committed
    assert fetch.verified and not fetch.done and not store.stored
    late = await asyncio.wait_for(drain(fetch, 7, 300_000), 5)  # behind the window: from the spool
    assert late == DATA[7:300_007] and store.reads == 0
    assert fetch._held <= 128 * 1024  # the rest is on the spool
    store.release.set()
    await asyncio.wait_for(fetch._finished.wait(), 5)
    assert fetch.ok and store.stored == [DATA] and store.failure is None
    assert open_fds() == fds  # the spool is gone with the fetch


async def test_a_reader_on_the_spool_keeps_it_open_after_the_fetch_ended() -> None:
    fds = open_fds()
    fetches = BlobFetches(window=64 * 1024, spool=True)
    store = Store()
    store.release.clear()
    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store.store, read_stored=store.read
    )
    while not fetch.verified:
        await asyncio.sleep(0.01)
    reader = fetch.read(0, len(DATA))
    first = await reader.__anext__()  # behind the window: this reader's own descriptor of the spool
    store.release.set()
    await fetch._finished.wait()  # the fetch closed its descriptor
    rest = b"".join([c async for c in reader])
    assert first + rest == DATA and store.reads == 0
    assert open_fds() == fds


async def test_spooling_a_failed_pull_fails_readers_and_the_store() -> None:
    fds = open_fds()
    fetches = BlobFetches(window=64 * 1024, spool=True)
    store = SlowStore(0)

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in source():
            yield chunk
        raise RuntimeError("digest mismatch")

    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=failing, store=store.store, read_stored=store.read
    )
    with pytest.raises(FetchFailedError):
        await drain(fetch)
    await fetch._finished.wait()
    assert isinstance(fetch.error, RuntimeError) and isinstance(store.failure, FetchFailedError)
    assert not store.stored and fetch._held == 0
    assert open_fds() == fds


async def test_spooling_a_store_that_fails_fails_no_reader_of_the_verified_blob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 goes away during a cold pull: every client still gets the whole blob, verified by the pull, from the
    spool (even one that starts reading after the fetch ended); nothing is cached."""
    monkeypatch.setattr(blobfetch, "SPOOL_BATCH", 65536)
    fds = open_fds()
    fetches = BlobFetches(window=128 * 1024, spool=True)
    pulled = asyncio.Event()

    async def failing_store(chunks: AsyncIterable[bytes]) -> None:
        async for _ in chunks:
            await pulled.wait()  # the pull has run ahead to its end
            raise ConnectionError("S3 went away")

    async def unreachable(offset: int, length: int) -> AsyncIterator[bytes]:
        raise AssertionError("nothing is stored: no reader may ask the store")
        yield b""

    async def tracked() -> AsyncIterator[bytes]:
        async for chunk in source():
            yield chunk
        pulled.set()

    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=tracked, store=failing_store, read_stored=unreachable
    )
    keeping_up = asyncio.create_task(drain(fetch))
    behind = fetch.read(5, len(DATA) - 5)
    first = await behind.__anext__()
    await asyncio.wait_for(fetch._finished.wait(), 5)
    assert isinstance(fetch.error, ConnectionError) and fetch.verified and not fetch.ok
    assert await asyncio.wait_for(keeping_up, 5) == DATA
    assert first + b"".join([c async for c in behind]) == DATA[5:]
    assert open_fds() == fds  # every descriptor of the spool closed with its reader
    # A fetch that failed to store is not joined again: the next pull fetches anew.
    assert fetches.current(Digest.of(DATA)) is None


async def test_without_a_spool_file_the_fetch_goes_at_the_stores_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(directory: str | None) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobfetch, "_open_spool", no_space)
    fetches = BlobFetches(spool=True)
    store = Store()
    store.release.clear()
    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store.store, read_stored=store.read
    )
    reader = asyncio.create_task(drain(fetch))
    await asyncio.sleep(0.2)
    assert not reader.done()  # the last byte waits for the store, as without spooling
    store.release.set()
    assert await reader == DATA and fetch.ok


async def test_the_spool_goes_in_proxy_spool_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    opened: list[str | None] = []
    real = blobfetch._open_spool

    def recording(directory: str | None) -> int:
        opened.append(directory)
        return real(directory)

    monkeypatch.setattr(blobfetch, "_open_spool", recording)
    fetches = BlobFetches(spool=True, spool_dir=str(tmp_path))
    store = Store()
    fetch = fetches.join(
        Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store.store, read_stored=store.read
    )
    assert await drain(fetch) == DATA
    await fetch._finished.wait()
    assert opened == [str(tmp_path)] and fetch.ok
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing to leave behind
