"""documents.gather_bounded: results in order, never more than `concurrency` calls at once, every call runs
even when one fails (then the first failure is raised)."""

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


async def test_every_call_runs_and_the_first_failure_is_raised() -> None:
    ran: list[int] = []

    async def call(i: int) -> int:
        await asyncio.sleep(0)
        ran.append(i)
        if i in (3, 7):
            raise ValueError(f"bad {i}")
        return i

    with pytest.raises(ValueError, match="bad 3"):
        await gather_bounded([call(i) for i in range(20)], 2)
    assert sorted(ran) == list(range(20))


async def test_many_calls_make_only_concurrency_tasks() -> None:
    before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def call(i: int) -> None:
        seen.append(len(asyncio.all_tasks()) - before)
        await asyncio.sleep(0)

    await gather_bounded([call(i) for i in range(1000)], 8)
    assert max(seen) <= 8
