"""GC runs: one at a time across replicas (a lease document), their history and what each deleted.

Collections (written only by the gc service): `gc_runs` (`_id` = run id; the record; `newest` is a key
that sorts newest first, so history is read a page at a time), `gc_run_items` (what a run deleted, or
would), `gc_storage` (`_id` = "latest": bytes per namespace and repository after the last run), and the
lease `gc-run` in the outbox's `leases` collection.

A run whose replica died keeps the status `running` until the next run takes the lease over: that run
records it as failed.
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
from services.core.storage.documents import Document, DocumentStore, DuplicateKeyError, Index
from services.core.telemetry import Metrics
from services.gc.sweep import Collector, RunOptions, RunResult

log = logging.getLogger(__name__)

RUNS = "gc_runs"
ITEMS = "gc_run_items"
STORAGE = "gc_storage"
LEASE = "gc-run"
LEASE_SECONDS = 120.0
ITEMS_PER_DOC = 1000
HISTORY_MAX = 1000
_NEWEST_BASE = 10**11  # seconds; started times stay below it until the year 5138


def newest_key(started: float, run_id: str) -> str:
    """A string that sorts ascending from the newest run to the oldest (the store sorts only ascending)."""
    return f"{_NEWEST_BASE - started:018.6f}~{run_id}"


class RunInProgressError(Exception):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"GC run {run_id} is in progress")
        self.run_id = run_id


class GcRuns:
    def __init__(self, docs: DocumentStore, outbox: Outbox, collector: Collector, topics: TopicSettings, *,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.docs = docs
        self.outbox = outbox
        self.collector = collector
        self.topics = topics
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = metrics
        self.last_success: float | None = None
        """When the newest run that succeeded (not a dry run) finished, as far as this process knows."""
        if metrics is not None:
            metrics.gc_last_success_age.set_function(self._last_success_age)

    def _last_success_age(self) -> float:
        return float("nan") if self.last_success is None else max(0.0, self._clock() - self.last_success)

    async def setup(self) -> None:
        await self.docs.ensure_collection(RUNS, [Index(("started",)), Index(("newest",))])
        await self.docs.ensure_collection(ITEMS, [Index(("run",))])
        await self.docs.ensure_collection(STORAGE)
        await self.docs.ensure_collection(LEASES)
        await self.collector.setup()
        await self._backfill_newest()
        await self.refresh_last_success()

    async def _backfill_newest(self) -> None:
        """Records written before `newest` existed get it (once; a page at a time)."""
        after: str | None = None
        while True:
            page = await self.docs.find(RUNS, after=after, limit=HISTORY_MAX)
            for doc in page:
                if "newest" not in doc:
                    await self.docs.update(RUNS, doc["_id"], {"newest": newest_key(float(doc["started"]), doc["_id"])})
            if len(page) < HISTORY_MAX:
                return
            after = str(page[-1]["_id"])

    async def refresh_last_success(self) -> None:
        """Read when the last successful (not dry) run finished, for the age metric; pages until it finds one."""
        token: str | None = None
        while True:
            page = await self.docs.find(RUNS, order_by="newest", after=token, limit=50)
            for doc in page:
                if doc.get("status") == "succeeded" and not doc.get("dry_run") and doc.get("finished"):
                    self.last_success = max(self.last_success or 0.0, float(doc["finished"]))
                    return
            if len(page) < 50:
                return
            token = str(page[-1]["newest"])

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
        if lease is not None and lease.get("owner"):
            await self._abandoned(str(lease["owner"]))

    async def _abandoned(self, run_id: str) -> None:
        """The run that held the expired lease died (its replica stopped holding it): record it as failed,
        so it does not stay `running` for ever. Its marks are repaired by the new run."""
        doc = await self.docs.get(RUNS, run_id)
        if doc is None or doc.get("status") != "running":
            return
        message = "the run stopped (its process ended or lost the metadata store); the next run repaired it"
        changed = {"status": "failed", "finished": self._clock(), "errors": int(doc.get("errors") or 0) + 1,
                   "error_messages": [*(doc.get("error_messages") or [])[:99], message]}
        if await self.docs.update(RUNS, run_id, changed, expect={"status": "running"}):
            log.warning("GC run %s was abandoned; recorded as failed", run_id)
            if self._metrics is not None:
                self._metrics.gc_runs.labels(status="failed", trigger=str(doc.get("trigger") or "")).inc()

    async def _hold(self, run_id: str, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                async with asyncio.timeout(LEASE_SECONDS / 3):
                    await done.wait()
            except TimeoutError:
                try:
                    await self.docs.update(LEASES, LEASE, {"expires": self._clock() + LEASE_SECONDS},
                                           expect={"owner": run_id})
                except Exception as exc:  # a blip must not end the renewals: the lease would lapse mid-run
                    log.warning("GC run %s could not renew its lease (retrying): %s", run_id, exc)

    async def start(self, *, trigger: str, dry_run: bool = False, grace_seconds: float | None = None,
                    incremental: bool = False) -> str:
        """Start a run in the background and return its id; RunInProgressError with the running one's id.
        `incremental`: over the due candidates only (candidates.py), recorded with `scope` "incremental"."""
        run_id = uuid.uuid4().hex
        await self._take_lease(run_id)
        started = self._clock()
        record = {"_id": run_id, "id": run_id, "newest": newest_key(started, run_id), "trigger": trigger,
                  "dry_run": dry_run, "status": "running", "started": started, "finished": None,
                  "manifests_deleted": 0, "blobs_deleted": 0,
                  "bytes_freed": 0, "errors": 0, "error_messages": [], "grace_seconds": grace_seconds,
                  "scope": "incremental" if incremental else "full"}
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
                                                         grace_seconds=grace_seconds,
                                                         incremental=record.get("scope") == "incremental"))
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
                   "uploads_deleted": result.uploads_deleted, "items": len(result.deleted)}
        try:
            await self._record(record, result)
        except Exception:
            # The lease lapses on its own; the next run records this one as failed (_abandoned).
            log.exception("GC run %s finished but could not be recorded", run_id)
            return
        self._observe(record, result)

    async def _record(self, record: dict[str, Any], result: RunResult) -> None:
        run_id = record["_id"]
        for i in range(0, len(result.deleted), ITEMS_PER_DOC):
            await self.docs.put(ITEMS, {"_id": f"{run_id}:{i // ITEMS_PER_DOC:06d}", "run": run_id,
                                        "items": [d.as_dict() for d in result.deleted[i : i + ITEMS_PER_DOC]]})
        if result.storage and not record["dry_run"] and record["status"] == "succeeded":
            await self.docs.put(STORAGE, {"_id": "latest", "run": run_id, "at": record["finished"], **result.storage})
        await self.outbox.commit([Put(RUNS, record)], [self._completed(record)])
        await self.docs.delete(LEASES, LEASE, expect={"owner": run_id})

    def _observe(self, record: dict[str, Any], result: RunResult) -> None:
        if record["status"] == "succeeded" and not record["dry_run"]:
            self.last_success = float(record["finished"])
        metrics = self._metrics
        if metrics is None:
            return
        metrics.gc_runs.labels(status=record["status"], trigger=record["trigger"]).inc()
        metrics.gc_run_duration.labels(dry_run=str(bool(record["dry_run"])).lower()).observe(
            max(0.0, float(record["finished"]) - float(record["started"])))
        metrics.gc_errors.inc(len(result.errors))
        if record["dry_run"]:
            return
        metrics.gc_deleted.labels(kind="manifest").inc(result.manifests_deleted)
        metrics.gc_deleted.labels(kind="blob").inc(result.blobs_deleted)
        metrics.gc_deleted.labels(kind="upload").inc(result.uploads_deleted)
        metrics.gc_bytes_freed.inc(result.bytes_freed)

    def _completed(self, record: dict[str, Any]) -> OutboundEvent:
        env = new_envelope(pb.GcRunCompleted(
            run_id=record["_id"], blobs_deleted=record["blobs_deleted"], bytes_freed=record["bytes_freed"],
            manifests_deleted=record["manifests_deleted"], dry_run=record["dry_run"]), repository="", actor="gc")
        env.gc_run_completed.started_at.FromDatetime(datetime.fromtimestamp(record["started"], UTC))
        env.gc_run_completed.finished_at.FromDatetime(datetime.fromtimestamp(record["finished"], UTC))
        return OutboundEvent(topic=topic_for(env, self.topics), key="gc", value=encode(env),
                             headers=(("event-type", env.type.encode()), ("event-id", env.id.encode())))

    async def history(
        self, *, limit: int = 20, page_token: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` runs (at most HISTORY_MAX), newest first, after `page_token` (the token of the previous
        page); and the token of the next page (None on the last). Reads one page of the index, not every run."""
        limit = max(0, min(limit, HISTORY_MAX))
        if not limit:
            return [], None
        docs = await self.docs.find(RUNS, order_by="newest", after=page_token or None, limit=limit + 1)
        page = docs[:limit]
        return [_public(d) for d in page], (str(page[-1]["newest"]) if len(docs) > limit else None)

    async def get(self, run_id: str, *, limit: int | None = None) -> dict[str, Any] | None:
        """The run's record with what it deleted (at most `limit` items; `deleted_total` counts them all)."""
        doc = await self.docs.get(RUNS, run_id)
        if doc is None:
            return None
        deleted: list[dict[str, Any]] = []
        after: str | None = None
        while limit is None or len(deleted) < limit:
            parts = await self.docs.find(ITEMS, {"run": run_id}, after=after, limit=10)
            for part in parts:
                deleted += part["items"]
            if len(parts) < 10:
                break
            after = str(parts[-1]["_id"])
        if limit is not None:
            deleted = deleted[:limit]
        total = int(doc["items"]) if "items" in doc else len(deleted)
        return {**_public(doc), "deleted": deleted, "deleted_total": total,
                "error_messages": list(doc.get("error_messages") or []), "grace_seconds": doc.get("grace_seconds")}

    async def storage(self) -> dict[str, Any] | None:
        """Bytes per namespace and repository as the last run (not a dry run) counted them: `run`, `at`,
        `total_bytes`, `namespaces` and `repositories` (name -> bytes); None before the first such run."""
        doc = await self.docs.get(STORAGE, "latest")
        if doc is None:
            return None
        return {"run": doc.get("run"), "at": doc.get("at"), "total_bytes": int(doc.get("total_bytes") or 0),
                "namespaces": _sizes(doc.get("namespaces")), "repositories": _sizes(doc.get("repositories"))}


def _sizes(value: Any) -> dict[str, int]:
    return {str(x["name"]): int(x["bytes"]) for x in value or ()}


def _public(doc: Document) -> dict[str, Any]:
    keys = ("id", "trigger", "dry_run", "status", "started", "finished", "manifests_deleted", "blobs_deleted",
            "bytes_freed", "errors")
    return {**{k: doc.get(k) for k in keys}, "scope": doc.get("scope") or "full"}
