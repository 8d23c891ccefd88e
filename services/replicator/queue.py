"""The replicator's durable work queue and per-rule status, over the DocumentStore.

An event becomes one queue item per matching rule before it is acknowledged, so nothing is lost when the
replicator dies mid-copy: the item stays until its copy succeeded, and a restart (or another replica, once
the lease ran out) takes it again. Items of one (rule, repository) are done in order (`_id` sorts them: rule,
repository, event time), one at a time; a failing item is retried with backoff, forever, holding back the
items behind it, so a target that is down catches up in order when it comes back.

Collections (both also read by the management API, services/distribution/management_replication.py):
- `replication_queue`: `{_id: "<rule> <repository> <time_ns>-<id>", rule, repository, kind, reference,
  digest, event_id, event_time, attempts, next_attempt, lease_until, lease_owner, last_error}`.
- `replication_status`: `{_id: rule, last_event_id, last_event_at, last_success, last_error, last_error_at,
  last_lag_seconds, copied_manifests, copied_bytes, succeeded_total, failed_total, version}`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index

QUEUE: Final = "replication_queue"
STATUS: Final = "replication_status"
SCAN_LIMIT: Final = 2000
"""Queue items looked at per pass (a full sync is one item per repository, so the queue stays short)."""

KINDS: Final = frozenset({"tag", "manifest", "delete_tag", "delete_manifest", "sync_repository", "sync_rule"})


@dataclass(frozen=True, slots=True)
class WorkItem:
    id: str
    rule: str
    repository: str
    kind: str
    reference: str = ""
    """A tag (tag, delete_tag) or a digest (manifest, delete_manifest); empty for syncs."""
    digest: str = ""
    """The digest the event named (a tag's manifest)."""
    event_id: str = ""
    event_time: float = 0.0
    attempts: int = 0
    next_attempt: float = 0.0
    lease_until: float = 0.0
    last_error: str = ""

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> WorkItem:
        return cls(id=str(doc["_id"]), rule=str(doc["rule"]), repository=str(doc.get("repository") or ""),
                   kind=str(doc["kind"]), reference=str(doc.get("reference") or ""),
                   digest=str(doc.get("digest") or ""), event_id=str(doc.get("event_id") or ""),
                   event_time=float(doc.get("event_time") or 0.0), attempts=int(doc.get("attempts") or 0),
                   next_attempt=float(doc.get("next_attempt") or 0.0),
                   lease_until=float(doc.get("lease_until") or 0.0), last_error=str(doc.get("last_error") or ""))

    @property
    def group(self) -> tuple[str, str]:
        return self.rule, self.repository


@dataclass(frozen=True, slots=True)
class RuleStatus:
    rule: str
    pending: int
    oldest_event_time: float | None
    last_event_id: str = ""
    last_event_at: float | None = None
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_lag_seconds: float | None = None
    copied_manifests: int = 0
    copied_bytes: int = 0
    succeeded_total: int = 0
    failed_total: int = 0

    def lag_seconds(self, now: float) -> float:
        return max(0.0, now - self.oldest_event_time) if self.oldest_event_time else 0.0

    def state(self, now: float, *, lagging_after: float) -> str:
        """`failing` when the last attempt failed and work waits; `lagging` when work waits too long; `ok`."""
        if self.pending and self.last_error_at and (self.last_success or 0) < self.last_error_at:
            return "failing"
        if self.pending and self.lag_seconds(now) > lagging_after:
            return "lagging"
        return "ok"


def backoff(attempts: int, *, initial: float, maximum: float) -> float:
    """Seconds before attempt `attempts + 1` (doubling from `initial`, capped)."""
    return float(min(maximum, initial * (2 ** max(0, min(attempts - 1, 30)))))


class ReplicationQueue:
    def __init__(self, docs: DocumentStore, *, clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self.owner = uuid.uuid4().hex[:12]
        self._clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(QUEUE, [Index(("rule", "event_time"))])
        await self.docs.ensure_collection(STATUS)

    # queue

    async def enqueue(self, *, rule: str, repository: str, kind: str, reference: str = "", digest: str = "",
                      event_id: str = "", event_time: float | None = None) -> str:
        """Queue one item. Idempotent per (rule, event): a redelivered event finds its item already queued."""
        if kind not in KINDS:
            raise ValueError(f"unknown work kind {kind!r}")
        when = event_time if event_time is not None else self._clock()
        suffix = (event_id or uuid.uuid4().hex)[:36] + ("" if kind not in ("tag", "delete_tag") else f"-{reference}")
        item_id = f"{rule} {repository} {int(when * 1e9):020d}-{suffix}"
        doc = {"_id": item_id, "rule": rule, "repository": repository, "kind": kind, "reference": reference,
               "digest": digest, "event_id": event_id, "event_time": when, "attempts": 0, "next_attempt": 0.0,
               "lease_until": 0.0, "lease_owner": "", "last_error": ""}
        with contextlib.suppress(DuplicateKeyError):
            await self.docs.insert(QUEUE, doc)
        return item_id

    async def ready(self) -> list[WorkItem]:
        """The head item of every (rule, repository) that is due and not leased by a live worker."""
        now = self._clock()
        heads: dict[tuple[str, str], WorkItem] = {}
        for doc in await self.docs.find(QUEUE, limit=SCAN_LIMIT):
            item = WorkItem.from_doc(doc)
            heads.setdefault(item.group, item)
        return [i for i in heads.values() if i.next_attempt <= now and i.lease_until <= now]

    async def next_due(self) -> float | None:
        """When the earliest waiting head becomes due (None: the queue is empty)."""
        heads: dict[tuple[str, str], WorkItem] = {}
        for doc in await self.docs.find(QUEUE, limit=SCAN_LIMIT):
            item = WorkItem.from_doc(doc)
            heads.setdefault(item.group, item)
        return min((max(i.next_attempt, i.lease_until) for i in heads.values()), default=None)

    async def claim(self, item: WorkItem, *, lease_seconds: float) -> bool:
        """Take `item` for `lease_seconds` (compare-and-set on its lease): False when another worker has it."""
        return await self.docs.update(
            QUEUE, item.id, {"lease_until": self._clock() + lease_seconds, "lease_owner": self.owner},
            expect={"lease_until": item.lease_until},
        )

    async def extend(self, item: WorkItem, *, lease_seconds: float) -> None:
        await self.docs.update(QUEUE, item.id, {"lease_until": self._clock() + lease_seconds},
                               expect={"lease_owner": self.owner})

    async def done(self, item: WorkItem) -> None:
        await self.docs.delete(QUEUE, item.id)

    async def failed(self, item: WorkItem, error: str, *, delay: float) -> None:
        await self.docs.update(QUEUE, item.id, {
            "attempts": item.attempts + 1, "next_attempt": self._clock() + delay, "lease_until": 0.0,
            "lease_owner": "", "last_error": error[:1000],
        })

    async def retry_now(self, rule: str) -> int:
        """Make every waiting item of `rule` due now (a resync asked for it): how many."""
        count = 0
        for doc in await self.docs.find(QUEUE, {"rule": rule}, limit=SCAN_LIMIT):
            if float(doc.get("next_attempt") or 0) > self._clock():
                count += await self.docs.update(QUEUE, str(doc["_id"]), {"next_attempt": 0.0})
        return count

    async def pending(self, rule: str) -> tuple[int, float | None]:
        """(items queued for `rule`, event time of the oldest)."""
        count = await self.docs.count(QUEUE, {"rule": rule})
        oldest = await self.docs.find(QUEUE, {"rule": rule}, order_by="event_time", limit=1)
        return count, (float(oldest[0]["event_time"]) if oldest else None)

    # status

    async def record(self, rule: str, *, item: WorkItem | None = None, error: str | None = None,
                     manifests: int = 0, nbytes: int = 0, lag: float | None = None) -> None:
        """Count a success (error None) or a failure of `rule`; read-modify-write by compare-and-set."""
        now = self._clock()
        for _attempt in range(10):
            doc = await self.docs.get(STATUS, rule)
            if doc is None:
                await self.first_seen(rule)
                continue
            changes: dict[str, Any] = {"version": int(doc.get("version") or 0) + 1}
            if error is None:
                changes.update(last_success=now, succeeded_total=int(doc.get("succeeded_total") or 0) + 1,
                               copied_manifests=int(doc.get("copied_manifests") or 0) + manifests,
                               copied_bytes=int(doc.get("copied_bytes") or 0) + nbytes)
                if item is not None and item.event_id:
                    changes.update(last_event_id=item.event_id, last_event_at=item.event_time)
                if lag is not None:
                    changes["last_lag_seconds"] = lag
            else:
                changes.update(last_error=error[:1000], last_error_at=now,
                               failed_total=int(doc.get("failed_total") or 0) + 1)
            if await self.docs.update(STATUS, rule, changes, expect={"version": doc.get("version")}):
                return

    async def first_seen(self, rule: str) -> bool:
        """Create the rule's status document; True when this call created it (the rule is new)."""
        try:
            await self.docs.insert(STATUS, {"_id": rule, "version": 0, "copied_manifests": 0, "copied_bytes": 0,
                                            "succeeded_total": 0, "failed_total": 0})
        except DuplicateKeyError:
            return False
        return True

    async def status(self, rule: str) -> RuleStatus:
        pending, oldest = await self.pending(rule)
        doc = await self.docs.get(STATUS, rule) or {}
        return status_from(rule, doc, pending, oldest)

    async def forget(self, rule: str) -> None:
        """A deleted rule: its queue and status go."""
        await self.docs.delete_where(QUEUE, {"rule": rule})
        await self.docs.delete(STATUS, rule)


def status_from(rule: str, doc: Mapping[str, Any], pending: int, oldest: float | None) -> RuleStatus:
    def opt(name: str) -> float | None:
        value = doc.get(name)
        return float(value) if value is not None else None

    return RuleStatus(rule=rule, pending=pending, oldest_event_time=oldest,
                      last_event_id=str(doc.get("last_event_id") or ""), last_event_at=opt("last_event_at"),
                      last_success=opt("last_success"), last_error=str(doc.get("last_error") or ""),
                      last_error_at=opt("last_error_at"), last_lag_seconds=opt("last_lag_seconds"),
                      copied_manifests=int(doc.get("copied_manifests") or 0),
                      copied_bytes=int(doc.get("copied_bytes") or 0),
                      succeeded_total=int(doc.get("succeeded_total") or 0),
                      failed_total=int(doc.get("failed_total") or 0))
