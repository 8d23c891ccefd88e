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


async def test_a_rule_made_just_before_a_push_applies_to_that_push(tmp_path: Path) -> None:
    """The rules are cached for a second, but an event newer than the last read of them reads them again."""
    from services.core.events.envelope import new_envelope
    from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
    from services.core.storage.sqlite import SqliteDocumentStore
    from services.replicator.queue import QUEUE
    from services.replicator.rules import RULES

    settings = load_settings(data_dir=str(tmp_path))
    docs = SqliteDocumentStore(tmp_path / "meta.db")
    none = cast(Any, None)
    replicator = Replicator(docs=docs, meta=none, blobs=none, outbox=none, settings=settings,
                            metrics=ReplicatorMetrics(Metrics()))
    try:
        await replicator.setup()
        assert await replicator.rules() == {}  # read (and cached) before the rule exists
        await docs.insert(RULES, {"_id": "to-b", "repositories": "team/**", "tags": "*", "mode": "event",
                                  "enabled": True, "target": {"url": "http://127.0.0.1:5999"}})
        digest = "sha256:" + "a" * 64
        await replicator.handle(new_envelope(pb.TagUpdated(repository="team/app", tag="v1", digest=digest),
                                             repository="team/app"))
        queued = await docs.find(QUEUE, limit=10)
        assert [(d["rule"], d["kind"], d["reference"]) for d in queued] == [("to-b", "tag", "v1")]
    finally:
        await docs.close()
