"""GC run control on both assemblies: one run at a time (lease), history newest first, details, the servicer."""

from __future__ import annotations

import pytest

from services.core.proto.hanzo.registry.v1 import gc_pb2
from services.gc.runs import RunInProgressError
from services.gc.service import GcServicer, build_runs
from tests.integration.conftest import Assembly
from tests.integration.gc_support import drop_gc_collections, make_image, push


async def test_one_run_at_a_time_history_and_details(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    runs = build_runs(c)
    runs.collector.settle = 0.01
    await runs.setup()
    try:
        await push(client, "team/app", make_image())  # untagged
        first = await runs.start(trigger="api", dry_run=True, grace_seconds=0)
        with pytest.raises(RunInProgressError) as refused:
            await runs.start(trigger="cli")
        assert refused.value.run_id == first
        await runs.wait()
        servicer = GcServicer(runs)
        second = (await servicer.TriggerRun(gc_pb2.TriggerRunRequest(dry_run=True), None)).run_id
        await runs.wait()
        history = await runs.history(limit=10)
        assert [r["id"] for r in history] == [second, first]
        assert history[1]["status"] == "succeeded" and history[1]["trigger"] == "api" and history[1]["dry_run"]
        assert history[1]["manifests_deleted"] == 1
        details = await runs.get(first)
        assert details is not None and [d["kind"] for d in details["deleted"]].count("manifest") == 1
        listed = await servicer.ListRuns(gc_pb2.ListRunsRequest(limit=1), None)
        assert [r.run_id for r in listed.runs] == [second]
    finally:
        await drop_gc_collections(c)
        for name in ("gc_run_items", "leases"):
            await c.docs.drop_collection(name)
