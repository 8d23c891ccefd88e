"""GC runs: one at a time across replicas (a lease document), their history and what each deleted.

Collections (written only by the gc service): `gc_runs` (`_id` = run id; the record, newest by `started`),
`gc_run_items` (what a run deleted, or would), `gc_storage` (`_id` = "latest": bytes per namespace and
repository after the last run), and the lease `gc-run` in the outbox's `leases` collection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.core.events.envelope import encode, new_envelope, topic_for
from services.core.events.outbox import LEASES, OutboundEvent, Outbox, Put
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import TopicSettings
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index
from services.gc.sweep import Collector, RunOptions, RunResult

log = logging.getLogger(__name__)

RUNS = "gc_runs"
ITEMS = "gc_run_items"
STORAGE = "gc_storage"
LEASE = "gc-run"
LEASE_SECONDS = 120.0
ITEMS_PER_DOC = 1000


class RunInProgressError(Exception):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"GC run {run_id} is in progress")
        self.run_id = run_id


class GcRuns:
    def __init__(self, docs: DocumentStore, outbox: Outbox, collector: Collector, topics: TopicSettings, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self.outbox = outbox
        self.collector = collector
        self.topics = topics
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def setup(self) -> None:
        await self.docs.ensure_collection(RUNS, [Index(("started",))])
        await self.docs.ensure_collection(ITEMS, [Index(("run",))])
        await self.docs.ensure_collection(STORAGE)
        await self.docs.ensure_collection(LEASES)
        await self.collector.setup()

    async def _take_lease(self, run_id: str) -> None:
        now = self._clock()
        doc = {"_id": LEASE, "owner": run_id, "expires": now + LEASE_SECONDS}
        lease = await self.docs.get(LEASES, LEASE)
        if lease is None:
            try:
                await self.docs.insert(LEASES, doc)
                return
            except DuplicateKeyError:
                lease = await self.docs.get(LEASES, LEASE)
        if lease is not None and float(lease["expires"]) >= now:
            raise RunInProgressError(str(lease["owner"]))
        expect = {"owner": lease["owner"], "expires": lease["expires"]} if lease else {"owner": None}
        if not await self.docs.update(LEASES, LEASE, {"owner": run_id, "expires": doc["expires"]}, expect=expect):
            current = await self.docs.get(LEASES, LEASE)
            raise RunInProgressError(str((current or {}).get("owner", "")))

    async def _hold(self, run_id: str, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                async with asyncio.timeout(LEASE_SECONDS / 3):
                    await done.wait()
            except TimeoutError:
                await self.docs.update(LEASES, LEASE, {"expires": self._clock() + LEASE_SECONDS},
                                       expect={"owner": run_id})

    async def start(self, *, trigger: str, dry_run: bool = False, grace_seconds: float | None = None) -> str:
        """Start a run in the background and return its id; RunInProgressError with the running one's id."""
        run_id = uuid.uuid4().hex
        await self._take_lease(run_id)
        record = {"_id": run_id, "id": run_id, "trigger": trigger, "dry_run": dry_run, "status": "running",
                  "started": self._clock(), "finished": None, "manifests_deleted": 0, "blobs_deleted": 0,
                  "bytes_freed": 0, "errors": 0, "error_messages": [], "grace_seconds": grace_seconds}
        await self.docs.put(RUNS, record)
        task = asyncio.create_task(self._run(record, grace_seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run_id

    async def wait(self) -> None:
        """Until the runs this object started are over (tests, shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, record: dict[str, Any], grace_seconds: float | None) -> None:
        run_id = record["_id"]
        done = asyncio.Event()
        holder = asyncio.create_task(self._hold(run_id, done))
        result = RunResult()
        status = "succeeded"
        try:
            result = await self.collector.run(RunOptions(run_id=run_id, dry_run=record["dry_run"],
                                                         grace_seconds=grace_seconds))
        except Exception as exc:
            log.exception("GC run %s failed", run_id)
            status = "failed"
            result.errors.append(f"{type(exc).__name__}: {exc}"[:500])
        finally:
            done.set()
            await asyncio.gather(holder, return_exceptions=True)
        finished = self._clock()
        record |= {"status": status, "finished": finished, "manifests_deleted": result.manifests_deleted,
                   "blobs_deleted": result.blobs_deleted, "bytes_freed": result.bytes_freed,
                   "errors": len(result.errors), "error_messages": result.errors[:100],
                   "uploads_deleted": result.uploads_deleted}
        items = [d.as_dict() for d in result.deleted]
        for i in range(0, len(items), ITEMS_PER_DOC):
            await self.docs.put(ITEMS, {"_id": f"{run_id}:{i // ITEMS_PER_DOC:06d}", "run": run_id,
                                        "items": items[i : i + ITEMS_PER_DOC]})
        if result.storage and not record["dry_run"]:
            await self.docs.put(STORAGE, {"_id": "latest", "run": run_id, "at": finished, **result.storage})
        await self.outbox.commit([Put(RUNS, record)], [self._completed(record)])
        await self.docs.delete(LEASES, LEASE, expect={"owner": run_id})

    def _completed(self, record: dict[str, Any]) -> OutboundEvent:
        env = new_envelope(pb.GcRunCompleted(
            run_id=record["_id"], blobs_deleted=record["blobs_deleted"], bytes_freed=record["bytes_freed"],
            manifests_deleted=record["manifests_deleted"], dry_run=record["dry_run"]), repository="", actor="gc")
        env.gc_run_completed.started_at.FromDatetime(datetime.fromtimestamp(record["started"], UTC))
        env.gc_run_completed.finished_at.FromDatetime(datetime.fromtimestamp(record["finished"], UTC))
        return OutboundEvent(topic=topic_for(env, self.topics), key="gc", value=encode(env),
                             headers=(("event-type", env.type.encode()), ("event-id", env.id.encode())))

    async def history(self, *, limit: int = 20) -> list[dict[str, Any]]:
        docs = await self.docs.find(RUNS, order_by="started")
        return [_public(d) for d in reversed(docs[-limit:])] if limit else []

    async def get(self, run_id: str) -> dict[str, Any] | None:
        doc = await self.docs.get(RUNS, run_id)
        if doc is None:
            return None
        deleted = [item for part in await self.docs.find(ITEMS, {"run": run_id}) for item in part["items"]]
        return {**_public(doc), "deleted": deleted}


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "trigger", "dry_run", "status", "started", "finished", "manifests_deleted", "blobs_deleted",
            "bytes_freed", "errors")
    return {k: doc.get(k) for k in keys}
