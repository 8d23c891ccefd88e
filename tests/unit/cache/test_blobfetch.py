"""The shared blob fetch: readers stream while it is stored, the last byte only once stored, failures reach
every reader, nothing of the spool file stays behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import pytest

from services.core.oci.digest import Digest
from services.distribution.cache.blobfetch import BlobFetches, FetchFailedError

DATA = bytes(range(256)) * 4096  # 1 MiB


async def drain(fetch, fd: int, offset: int = 0, length: int | None = None) -> bytes:  # type: ignore[no-untyped-def]
    try:
        return b"".join([c async for c in fetch.read(fd, offset, len(DATA) if length is None else length)])
    finally:
        os.close(fd)


async def test_readers_share_one_fetch_and_get_the_last_byte_once_stored(tmp_path: Path) -> None:
    fetches = BlobFetches(tmp_path)
    fetches.setup()
    release = asyncio.Event()
    stored: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(DATA), 65536):
            yield DATA[i : i + 65536]

    async def store(chunks: AsyncIterable[bytes]) -> None:
        stored.append(b"".join([c async for c in chunks]))
        await release.wait()  # the store has not committed yet

    digest = Digest.of(DATA)
    first, fd1 = fetches.join(digest, len(DATA), repository="cache/a", source=source, store=store)
    second, fd2 = fetches.join(digest, len(DATA), repository="cache/b", source=source, store=store)
    assert first is second and fetches.started == 1
    readers = [asyncio.create_task(drain(first, fd1)), asyncio.create_task(drain(first, fd2, 10, 100))]
    await asyncio.sleep(0.2)
    assert readers[1].done() and readers[1].result() == DATA[10:110]  # a range before the end needs no commit
    assert not readers[0].done()  # everything but the last byte; that waits for the store
    release.set()
    assert await readers[0] == DATA
    assert stored == [DATA]
    assert list(tmp_path.iterdir()) == []


async def test_a_failed_fetch_fails_every_reader_and_leaves_nothing(tmp_path: Path) -> None:
    fetches = BlobFetches(tmp_path)
    fetches.setup()

    async def source() -> AsyncIterator[bytes]:
        yield DATA[:1000]
        raise RuntimeError("digest mismatch")

    async def store(chunks: AsyncIterable[bytes]) -> None:
        async for _ in chunks:
            pass

    fetch, fd = fetches.join(Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store)
    with pytest.raises(FetchFailedError):
        await drain(fetch, fd)
    assert isinstance(fetch.error, RuntimeError)
    assert list(tmp_path.iterdir()) == []
    # The next join starts a new fetch.
    again, fd = fetches.join(Digest.of(DATA), len(DATA), repository="cache/a", source=source, store=store)
    assert again is not fetch and fetches.started == 2
    with pytest.raises(FetchFailedError):
        await drain(again, fd)
