"""A run's pacing (sweep.Collector._yield/_pace): it pauses for requests only while this process serves some
(RequestActivity), so an idle registry's run goes at full speed and a busy one's yields."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest

from services.core.activity import RequestActivity
from services.core.policy.document import PolicyDocument
from services.core.settings import TopicSettings
from services.core.storage.sqlite import SqliteDocumentStore
from services.gc.sweep import Collector


def test_requests_keep_the_process_busy_for_a_moment_after_they_end() -> None:
    now = [100.0]
    activity = RequestActivity(clock=lambda: now[0], linger=0.5)
    assert not activity.busy()
    activity.started()
    activity.started()
    now[0] += 60
    activity.ended()
    assert activity.busy() and activity.in_flight == 1
    activity.ended()
    now[0] += 0.4
    assert activity.busy()
    now[0] += 0.2
    assert not activity.busy()


async def test_a_run_pauses_only_while_requests_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = SqliteDocumentStore(tmp_path / "m.db")
    busy = [False]
    try:
        gc = Collector(docs=docs, blobs=cast(Any, None), outbox=cast(Any, None), topics=TopicSettings(),
                       default_policy=PolicyDocument(), blob_grace_seconds=0, upload_expiry_seconds=0,
                       settle_seconds=0, yield_ratio=2.0, busy=lambda: busy[0])
        pauses: list[float] = []
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        started = time.monotonic() - 0.01
        await gc._yield(started)
        await gc._pace()
        assert pauses == [0.0]  # idle: no pause after work, a bare turn in planning
        busy[0] = True
        pauses.clear()
        await gc._yield(started)
        assert pauses and pauses[0] >= 0.02  # twice the 10 ms of work
    finally:
        await docs.close()
