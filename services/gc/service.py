"""GC service: runs on `gc.schedule` (one at a time across replicas), and serves the Gc gRPC contract."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import grpc

from services.core.bootstrap import Container
from services.core.cron import CronExpression
from services.core.proto.hanzo.registry.v1 import gc_pb2, gc_pb2_grpc
from services.core.runtime import ServiceParts, logging_handler
from services.gc.runs import GcRuns, RunInProgressError
from services.gc.sweep import Collector

log = logging.getLogger(__name__)

_STATES = {"running": gc_pb2.GC_RUN_STATE_RUNNING, "succeeded": gc_pb2.GC_RUN_STATE_SUCCEEDED,
           "failed": gc_pb2.GC_RUN_STATE_FAILED}


def build_runs(c: Container) -> GcRuns:
    s = c.settings
    collector = Collector(
        docs=c.docs, blobs=c.blobs, outbox=c.outbox, topics=s.topics, default_policy=s.policy.default,
        blob_grace_seconds=s.gc.blob_grace_seconds, upload_expiry_seconds=s.registry.upload_expiry_seconds,
        settle_seconds=s.gc.settle_seconds, forget_manifest=getattr(c.meta, "forget_manifest", None),
    )
    return GcRuns(c.docs, c.outbox, collector, s.topics)


class GcServicer(gc_pb2_grpc.GcServicer):
    def __init__(self, runs: GcRuns) -> None:
        self.runs = runs

    async def TriggerRun(self, request: gc_pb2.TriggerRunRequest, context: Any) -> gc_pb2.TriggerRunResponse:
        try:
            run_id = await self.runs.start(trigger="api", dry_run=request.dry_run)
        except RunInProgressError as exc:
            return gc_pb2.TriggerRunResponse(run_id=exc.run_id, started=False)
        return gc_pb2.TriggerRunResponse(run_id=run_id, started=True)

    async def ListRuns(self, request: gc_pb2.ListRunsRequest, context: Any) -> gc_pb2.ListRunsResponse:
        out = gc_pb2.ListRunsResponse()
        for r in await self.runs.history(limit=request.limit or 20):
            run = out.runs.add(run_id=r["id"], state=_STATES.get(r["status"], 0), dry_run=bool(r["dry_run"]),
                               blobs_deleted=r["blobs_deleted"], bytes_freed=r["bytes_freed"],
                               manifests_deleted=r["manifests_deleted"])
            run.started_at.FromDatetime(datetime.fromtimestamp(r["started"], UTC))
            if r["finished"]:
                run.finished_at.FromDatetime(datetime.fromtimestamp(r["finished"], UTC))
        return out


async def schedule_loop(runs: GcRuns, expression: CronExpression, stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = expression.next_after(datetime.now(UTC)).timestamp()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - time.time())):
                await stop.wait()
        if stop.is_set():
            break
        try:
            await runs.start(trigger="schedule")
        except RunInProgressError as exc:
            log.info("scheduled GC skipped: run %s is in progress", exc.run_id)
        except Exception as exc:  # the next tick tries again
            log.warning("scheduled GC did not start: %s", exc)
    await runs.wait()


async def build(c: Container) -> ServiceParts:
    topics = c.settings.topics
    runs = build_runs(c)
    await runs.setup()
    servicer = GcServicer(runs)
    handler = logging_handler("gc")
    loops = []
    if c.settings.gc.enabled:
        expression = CronExpression.parse(c.settings.gc.schedule)
        loops.append(lambda stop: schedule_loop(runs, expression, stop))

    def register(server: grpc.aio.Server) -> None:
        gc_pb2_grpc.add_GcServicer_to_server(servicer, server)

    return ServiceParts(
        name="gc",
        consumes=[(topics.manifests, handler), (topics.tags, handler), (topics.blobs, handler)],
        produces=[topics.gc],
        grpc=[register],
        loops=loops,
    )
