"""The coalescer alone: batching while commands are in flight, per-item results, errors and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.core.storage.coalesce import Coalescer


async def test_callers_alone_go_at_once_and_concurrent_ones_share_commands() -> None:
    batches: list[list[int]] = []

    async def send(collection: str, items: list[int]) -> Sequence[int | Exception]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(send, in_flight=2, max_batch=10)
    assert await c.submit("a", 2) == 20
    assert batches == [[2]]
    results = await asyncio.gather(*(c.submit("a", i) for i in range(40)), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [i * 10 if i % 2 == 0 else f"odd {i}"
                                                                      for i in range(40)]
    assert all(len(b) <= 10 for b in batches) and len(batches) < 1 + 40
    assert sorted(i for b in batches[1:] for i in b) == list(range(40))


async def test_a_failed_command_fails_its_batch_only_and_cancelled_callers_are_skipped() -> None:
    calls = 0

    async def send(collection: str, items: list[str]) -> Sequence[str | Exception]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if "boom" in items:
            raise ConnectionError("server went away")
        return [s.upper() for s in items]

    c: Coalescer[str, str] = Coalescer(send, in_flight=1)
    first = asyncio.create_task(c.submit("x", "boom"))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(c.submit("x", "later"))
    cancelled = asyncio.create_task(c.submit("x", "gone"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(ConnectionError):
        await first
    assert await waiting == "LATER"
    assert cancelled.cancelled()
    assert await c.submit("y", "other") == "OTHER"
    assert c._groups == {}
