"""The replicator's work loop: work queued while it looks at the queue is taken at once, not after a poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

from services.core.settings import load_settings
from services.core.telemetry import Metrics
from services.replicator.engine import Replicator
from services.replicator.metrics import ReplicatorMetrics


class _Probe(Replicator):
    """`_dispatch` records when it ran; the first call is slow, and work is queued (the wake set) during it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[float] = []

    async def _dispatch(self) -> None:
        self.calls.append(time.monotonic())
        if len(self.calls) == 1:
            await asyncio.sleep(0.05)
            self._wake.set()  # as `handle` does for an event that arrives meanwhile
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        return None


async def test_work_queued_during_a_dispatch_is_dispatched_without_waiting_for_the_poll(tmp_path: Path) -> None:
    settings = load_settings(data_dir=str(tmp_path), replication={"poll_interval_seconds": 30.0})
    none = cast(Any, None)
    replicator = _Probe(docs=none, meta=none, blobs=none, outbox=none, settings=settings,
                        metrics=ReplicatorMetrics(Metrics()))
    stop = asyncio.Event()
    task = asyncio.create_task(replicator.run(stop))
    try:
        async with asyncio.timeout(5):
            while len(replicator.calls) < 2:
                await asyncio.sleep(0.01)
        assert replicator.calls[1] - replicator.calls[0] < 1.0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
