"""GC service: full runs on `gc.schedule` (one at a time across replicas), incremental runs over the candidates
its consumers record from tag moves and deletes (candidates.py), and the Gc gRPC contract."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from services.core.activity import SharedActivity
from services.core.bootstrap import Container
from services.core.cron import CronExpression
from services.core.proto.hanzo.registry.v1 import events_pb2, gc_pb2, gc_pb2_grpc
from services.core.runtime import EventHandler, ServiceParts
from services.gc.candidates import CandidateStore, candidates_of
from services.gc.runs import GcRuns, RunInProgressError
from services.gc.sweep import BUSY_CONCURRENCY, BUSY_PAGE, PAGE, SQLITE_PAGE, Collector

log = logging.getLogger(__name__)

_STATES = {"running": gc_pb2.GC_RUN_STATE_RUNNING, "succeeded": gc_pb2.GC_RUN_STATE_SUCCEEDED,
           "failed": gc_pb2.GC_RUN_STATE_FAILED}
_TRIGGERS = {gc_pb2.GC_TRIGGER_UNSPECIFIED: "api", gc_pb2.GC_TRIGGER_API: "api", gc_pb2.GC_TRIGGER_CLI: "cli",
             gc_pb2.GC_TRIGGER_SCHEDULE: "schedule"}
_TRIGGER_VALUES = {"api": gc_pb2.GC_TRIGGER_API, "cli": gc_pb2.GC_TRIGGER_CLI, "schedule": gc_pb2.GC_TRIGGER_SCHEDULE}
DETAILS_DEFAULT = 1000
DETAILS_MAX = 10_000


def concurrency(c: Container) -> int:
    """`gc.concurrency`, or what suits the metadata store (the setting's description)."""
    s = c.settings
    return s.gc.concurrency or (2 if s.metadata.kind == "sqlite" else 32)


def yield_ratio(c: Container) -> float:
    """`gc.yield_ratio`, or what suits the metadata store (the setting's description)."""
    s = c.settings
    if s.gc.yield_ratio is not None:
        return s.gc.yield_ratio
    return 3.0 if s.metadata.kind == "sqlite" else 1.0


def page(c: Container) -> int:
    """Documents a run's snapshot reads at once (Collector.page): few on the embedded SQLite store."""
    return SQLITE_PAGE if c.settings.metadata.kind == "sqlite" else PAGE


def busy_limits(c: Container) -> tuple[int | None, int | None]:
    """A run's steps in flight and page while requests are served (Collector.busy_concurrency, busy_page). The
    embedded SQLite store's concurrency and page are small already; a remote store's are not, and every push
    waits behind what a run keeps in flight there (bench/README.md: push p99 during a run, distributed)."""
    if c.settings.metadata.kind == "sqlite":
        return None, None
    # Small batches are cheap now that a walk is one query (DocumentStore.batches: FerretDB 1.x sorts a whole
    # collection for every query, and hands out the batches of one from memory).
    return BUSY_CONCURRENCY, BUSY_PAGE


def busy(c: Container) -> Callable[[], bool]:
    """Whether requests are being served, which a run yields to: by this process (`serve`, the embedded
    SQLite store), or by any replica that shares the store (their activity beacons)."""
    if c.settings.metadata.kind == "sqlite":
        return c.activity.busy
    shared = SharedActivity(c.docs)
    return lambda: c.activity.busy() or shared.busy()


def build_runs(c: Container) -> GcRuns:
    s = c.settings
    busy_concurrency, busy_page = busy_limits(c)
    collector = Collector(
        docs=c.docs, blobs=c.blobs, outbox=c.outbox, topics=s.topics, default_policy=s.policy.default,
        blob_grace_seconds=s.gc.blob_grace_seconds, upload_expiry_seconds=s.registry.upload_expiry_seconds,
        settle_seconds=s.gc.settle_seconds, forget_manifest=getattr(c.meta, "forget_manifest", None),
        concurrency=concurrency(c), yield_ratio=yield_ratio(c), page=page(c), busy=busy(c),
        busy_concurrency=busy_concurrency, busy_page=busy_page,
    )
    return GcRuns(c.docs, c.outbox, collector, s.topics, metrics=c.metrics)


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def run_message(r: dict[str, Any], *, error: str = "") -> gc_pb2.GcRun:
    run = gc_pb2.GcRun(
        run_id=r["id"], state=_STATES.get(r["status"], gc_pb2.GC_RUN_STATE_UNSPECIFIED), dry_run=bool(r["dry_run"]),
        blobs_deleted=r["blobs_deleted"] or 0, bytes_freed=r["bytes_freed"] or 0,
        manifests_deleted=r["manifests_deleted"] or 0, error=error, errors=r["errors"] or 0,
        trigger=_TRIGGER_VALUES.get(r["trigger"], gc_pb2.GC_TRIGGER_UNSPECIFIED),
    )
    run.started_at.FromDatetime(_timestamp(r["started"]))
    if r["finished"]:
        run.finished_at.FromDatetime(_timestamp(r["finished"]))
    return run


class GcServicer(gc_pb2_grpc.GcServicer):
    def __init__(self, runs: GcRuns) -> None:
        self.runs = runs

    async def TriggerRun(self, request: gc_pb2.TriggerRunRequest, context: Any) -> gc_pb2.TriggerRunResponse:
        grace = request.grace_seconds if request.HasField("grace_seconds") else None
        if grace is not None and not 0 <= grace <= 10 * 365 * 86400:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grace_seconds: from 0 to ten years")
        try:
            run_id = await self.runs.start(trigger=_TRIGGERS.get(request.trigger, "api"), dry_run=request.dry_run,
                                           grace_seconds=grace)
        except RunInProgressError as exc:
            return gc_pb2.TriggerRunResponse(run_id=exc.run_id, started=False)
        return gc_pb2.TriggerRunResponse(run_id=run_id, started=True)

    async def ListRuns(self, request: gc_pb2.ListRunsRequest, context: Any) -> gc_pb2.ListRunsResponse:
        runs, token = await self.runs.history(limit=request.limit or 20, page_token=request.page_token or None)
        return gc_pb2.ListRunsResponse(runs=[run_message(r) for r in runs], next_page_token=token or "")

    async def GetRun(self, request: gc_pb2.GetRunRequest, context: Any) -> gc_pb2.GetRunResponse:
        limit = min(request.limit or DETAILS_DEFAULT, DETAILS_MAX)
        r = await self.runs.get(request.run_id, limit=limit) if request.run_id else None
        if r is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no GC run {request.run_id[:100]!r}")
            raise AssertionError("abort returns only by raising")  # pragma: no cover
        errors = r["error_messages"]
        return gc_pb2.GetRunResponse(
            run=run_message(r, error=errors[0] if errors else ""), deleted_total=r["deleted_total"],
            deleted=[gc_pb2.GcDeletedItem(kind=d["kind"], repository=d["repository"], digest=d["digest"],
                                          size=d["size"]) for d in r["deleted"]])

    async def GetStorage(self, request: gc_pb2.GetStorageRequest, context: Any) -> gc_pb2.GetStorageResponse:
        doc = await self.runs.storage()
        if doc is None:
            return gc_pb2.GetStorageResponse(measured=False)
        out = gc_pb2.GetStorageResponse(measured=True, run_id=str(doc.get("run", "")),
                                        total_bytes=int(doc.get("total_bytes") or 0),
                                        namespaces=doc.get("namespaces") or {},
                                        repositories=doc.get("repositories") or {})
        out.measured_at.FromDatetime(_timestamp(float(doc["at"])))
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


def candidate_handler(store: CandidateStore) -> EventHandler:
    """Records what a content event may have orphaned (idempotent: a redelivery makes it due again)."""

    async def handle(envelope: events_pb2.Envelope) -> None:
        for candidate in candidates_of(envelope):
            await store.record(candidate)

    return handle


async def incremental_loop(runs: GcRuns, interval: float, stop: asyncio.Event) -> None:
    """Every `interval` seconds, an incremental run when candidates are due (no run, and no history
    record, when none are)."""
    store = runs.collector.candidates
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
        if stop.is_set():
            break
        try:
            if await store.any_due(now=time.time()):
                await runs.start(trigger="schedule", incremental=True)
        except RunInProgressError:
            pass  # the running run (full or incremental) holds the lease; candidates wait for the next tick
        except Exception as exc:  # the next tick tries again
            log.warning("incremental GC did not start: %s", exc)
    await runs.wait()


async def build(c: Container) -> ServiceParts:
    topics = c.settings.topics
    runs = build_runs(c)
    await runs.setup()
    servicer = GcServicer(runs)
    handler = candidate_handler(runs.collector.candidates)
    loops = []
    if c.settings.gc.enabled:
        expression = CronExpression.parse(c.settings.gc.schedule)
        loops.append(lambda stop: schedule_loop(runs, expression, stop))
        interval = c.settings.gc.incremental_interval_seconds
        if interval > 0:
            loops.append(lambda stop: incremental_loop(runs, interval, stop))

    def register(server: grpc.aio.Server) -> None:
        gc_pb2_grpc.add_GcServicer_to_server(servicer, server)

    return ServiceParts(
        name="gc",
        consumes=[(topics.manifests, handler), (topics.tags, handler), (topics.blobs, handler)],
        produces=[topics.gc],
        grpc=[register],
        loops=loops,
    )
