"""documents.gather_bounded: results in order, never more than `concurrency` calls at once; after a failure
no further call starts, and the first failure is raised once those in flight end."""

from __future__ import annotations

import asyncio

import pytest

from services.core.storage.documents import gather_bounded


async def test_results_in_order_within_the_bound() -> None:
    running = peak = 0

    async def call(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        return i * i

    assert await gather_bounded([call(i) for i in range(50)], 4) == [i * i for i in range(50)]
    assert peak == 4
    assert await gather_bounded([], 4) == []


async def test_after_a_failure_no_call_starts_and_the_first_failure_is_raised() -> None:
    started: list[int] = []
    ended: list[int] = []

    async def call(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.01 if i == 0 else 0)
        ended.append(i)
        if i in (3, 7):
            raise ValueError(f"bad {i}")
        return i

    with pytest.raises(ValueError, match="bad 3"):
        await gather_bounded([call(i) for i in range(20)], 2)
    assert 7 not in started and max(started) < 19
    assert sorted(ended) == sorted(started)  # what started ended before the raise: nothing runs behind


async def test_many_calls_make_only_concurrency_tasks() -> None:
    before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def call(i: int) -> None:
        seen.append(len(asyncio.all_tasks()) - before)
        await asyncio.sleep(0)

    await gather_bounded([call(i) for i in range(1000)], 8)
    assert max(seen) <= 8


async def test_cancelled_it_leaves_no_call_unclosed() -> None:
    gate = asyncio.Event()

    async def call(i: int) -> None:
        await gate.wait()

    calls = [call(i) for i in range(10)]
    task = asyncio.ensure_future(gather_bounded(calls, 2))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(c.cr_frame is None for c in calls)  # type: ignore[attr-defined]  # each ran to its end or was closed
