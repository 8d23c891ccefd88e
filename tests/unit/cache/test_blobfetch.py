"""The shared blob fetch: readers stream while it is stored, the last byte only once stored, failures reach
every reader, a reader behind the memory window gets the rest from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import pytest

from services.core.oci.digest import Digest
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
