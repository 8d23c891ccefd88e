"""GC holds (gcmarks.py): a manifest push names what it references before it reads the marks, while a run goes;
the collector reads the names; a hold left by a push that died stops counting after HOLD_SECONDS and goes; a push
that acted on "no run" and stored late reads the marks after storing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.events.outbox import LEASES
from services.core.storage import gcmarks as gm
from services.core.storage.sqlite import SqliteDocumentStore

CHILD = "sha256:" + "c" * 64
LAYER = "sha256:" + "1" * 64


@contextlib.asynccontextmanager
async def _marks(tmp_path: Path, now: list[float]) -> AsyncIterator[gm.GcMarks]:
    async def no_wait(_: float) -> None:
        return None

    docs = SqliteDocumentStore(tmp_path / "m.db")
    try:
        marks = gm.GcMarks(docs, clock=lambda: now[0], sleep=no_wait)
        await marks.setup()
        yield marks
    finally:
        await docs.close()


async def test_a_push_holds_what_it_references_while_a_run_goes_and_not_after(tmp_path: Path) -> None:
    now = [1000.0]
    async with _marks(tmp_path, now) as marks:
        async with marks.storing_manifest("team/app", [LAYER], [CHILD]) as refused:
            assert refused == []
            assert await marks.held() == set()  # no run: no hold, no extra write
        await marks.announce("r1")
        now[0] += 1.0
        async with marks.storing_manifest("team/app", [LAYER], [CHILD]) as refused:
            assert refused == []
            assert await marks.held() == {LAYER, CHILD, f"team/app@{LAYER}", f"team/app@{CHILD}"}
        assert await marks.held() == set()


async def test_a_hold_left_by_a_push_that_died_expires_and_goes(tmp_path: Path) -> None:
    now = [1000.0]

    class Died(Exception):
        pass

    async with _marks(tmp_path, now) as marks:
        await marks.announce("r1")
        now[0] += 1.0
        real_delete = marks.docs.delete
        with pytest.raises(Died):
            async with marks.storing_manifest("team/app", [LAYER], []):
                marks.docs.delete = _never  # type: ignore[method-assign]  # dies before it removes the hold
                raise Died()
        marks.docs.delete = real_delete  # type: ignore[method-assign]
        assert LAYER in await marks.held()
        now[0] += gm.HOLD_SECONDS + 1
        assert await marks.held() == set()
        assert await marks.docs.find(gm.GC_HOLDS) == []


async def _never(*_: object, **__: object) -> bool:
    raise ConnectionError("the process is gone")


async def test_a_push_that_read_no_run_and_stored_late_rescues_what_is_only_marked(tmp_path: Path) -> None:
    """It wrote no hold (no run when it asked); a run announced and marked while it stalled: after storing, it
    reads the marks and rescues, so the run's point of no return passes the blob by."""
    now = [1000.0]
    async with _marks(tmp_path, now) as pusher:
        collector = gm.GcMarks(pusher.docs, clock=lambda: now[0], sleep=pusher._sleep)
        async with pusher.storing_manifest("team/app", [LAYER], []) as refused:
            assert refused == []
            await collector.announce("r1")
            await collector.mark(gm.blob_key(LAYER), run="r1", verdict=True)
            now[0] += gm.NOTICE_SECONDS
        assert await collector.claim_verdicts([gm.blob_key(LAYER)], run="r1", until=now[0] + 60) == set()


async def test_a_push_that_read_no_run_and_stored_after_the_run_deleted_is_told(tmp_path: Path) -> None:
    now = [1000.0]
    async with _marks(tmp_path, now) as pusher:
        collector = gm.GcMarks(pusher.docs, clock=lambda: now[0], sleep=pusher._sleep)
        with pytest.raises(gm.CollectedWhileStoringError) as told:
            async with pusher.storing_manifest("team/app", [LAYER], [CHILD]):
                await collector.announce("r1")
                await collector.mark(gm.blob_key(LAYER), run="r1", verdict=True)
                assert await collector.claim_verdicts([gm.blob_key(LAYER)], run="r1", until=now[0] + 60)
                await collector.entomb([gm.blob_key(LAYER)], run="r1")
                now[0] += gm.NOTICE_SECONDS
        assert told.value.digests == [LAYER]
        # One that stored within NOTICE_SECONDS of its "no run" was in the run's snapshot: no second look (even at
        # a deletion that, with no clock passing, only this test can make happen meanwhile).
        pusher._checked_at = float("-inf")
        await pusher.docs.delete(LEASES, gm.COLLECTING)
        async with pusher.storing_manifest("team/app", [CHILD], []):
            await collector.announce("r2")
            await collector.mark(gm.blob_key(CHILD), run="r2", verdict=True)
            assert await collector.claim_verdicts([gm.blob_key(CHILD)], run="r2", until=now[0] + 60)
            await collector.entomb([gm.blob_key(CHILD)], run="r2")
