"""The scan collections in metadata: OSV records and the database's state, scan reports, re-scan requests.

Written by: the vulnerability records and state by an import (the management API, the CLI, the scanner's
scheduled sync); reports by the scanner only (through the outbox, with their ScanCompleted event);
re-scan requests by the management API and gRPC (the scanner takes them). Everything is one document per
key, so it runs unchanged on SQLite and MongoDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from services.core.errors import ConflictError
from services.core.scan.osv import ecosystems
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index

VULNS = "vulndb_records"
VULNDB_STATE = "vulndb_state"
REPORTS = "scan_reports"
REQUESTS = "scan_requests"
_STATE_ID = "state"
_BATCH = 500

STATUSES = ("pending", "scanning", "complete", "failed", "unsupported")
SEVERITIES = ("critical", "high", "medium", "low", "unknown")


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int
    updated: int
    unchanged: int
    generation: int


def report_id(repository: str, digest: str) -> str:
    return f"{repository}@{digest}"


class VulnDbStore:
    """OSV records by id, and the state every importer bumps: a generation the scanner watches to re-match."""

    def __init__(self, docs: DocumentStore, *, clock: Any = time.time) -> None:
        self.docs = docs
        self._clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(VULNS)
        await self.docs.ensure_collection(VULNDB_STATE)

    async def state(self) -> dict[str, Any]:
        doc = await self.docs.get(VULNDB_STATE, _STATE_ID)
        return dict(doc) if doc else {"_id": _STATE_ID, "generation": 0, "updated_at": None, "counts": {},
                                      "last_import": None}

    async def import_records(self, records: Iterable[dict[str, Any]], *, source: str) -> ImportResult:
        """Store the records (new ids inserted, changed ones replaced); bumps the generation when anything
        changed. Idempotent: importing the same records again changes nothing."""
        imported = updated = unchanged = 0
        delta: dict[str, int] = {}
        batch: list[dict[str, Any]] = []

        async def flush() -> None:
            nonlocal imported, updated, unchanged
            existing = await self.docs.get_many(VULNS, [r["id"] for r in batch])
            for record in batch:
                raw = json.dumps(record, sort_keys=True, separators=(",", ":"))
                old = existing.get(record["id"])
                if old is not None and old.get("raw") == raw:
                    unchanged += 1
                    continue
                ecos = ecosystems(record)
                await self.docs.put(VULNS, {"_id": record["id"], "modified": record["modified"], "raw": raw,
                                            "ecosystems": ecos, "withdrawn": bool(record.get("withdrawn"))})
                for e in ecos:
                    delta[e] = delta.get(e, 0) + 1
                if old is None:
                    imported += 1
                else:
                    updated += 1
                    for e in old.get("ecosystems", []):
                        delta[e] = delta.get(e, 0) - 1
            batch.clear()

        for record in records:
            batch.append(record)
            if len(batch) >= _BATCH:
                await flush()
        if batch:
            await flush()
        generation = await self._bump(delta, changed=imported + updated > 0, last_import={
            "at": self._clock(), "source": source[:300], "imported": imported, "updated": updated,
            "unchanged": unchanged})
        return ImportResult(imported, updated, unchanged, generation)

    async def _bump(self, delta: dict[str, int], *, changed: bool, last_import: dict[str, Any]) -> int:
        for _ in range(20):
            state = await self.state()
            counts = dict(state.get("counts") or {})
            for e, n in delta.items():
                counts[e] = max(0, counts.get(e, 0) + n)
            generation = int(state.get("generation") or 0) + (1 if changed else 0)
            doc = {**state, "counts": {k: v for k, v in counts.items() if v}, "generation": generation,
                   "last_import": last_import}
            if changed:
                doc["updated_at"] = self._clock()
            if "generation" not in state or await self.docs.get(VULNDB_STATE, _STATE_ID) is None:
                try:
                    await self.docs.insert(VULNDB_STATE, doc)
                    return generation
                except DuplicateKeyError:  # a concurrent first import: retry as an update
                    continue
            fields = {k: v for k, v in doc.items() if k != "_id"}
            if await self.docs.update(VULNDB_STATE, _STATE_ID, fields, expect={"generation": state["generation"]}):
                return generation
        raise ConflictError("the vulnerability database is being imported concurrently; retry")

    async def records(self, *, page: int = _BATCH) -> AsyncIterator[dict[str, Any]]:
        """Every stored record (withdrawn ones left out), parsed, in id order."""
        after: str | None = None
        while True:
            docs = await self.docs.find(VULNS, after=after, limit=page)
            for d in docs:
                if not d.get("withdrawn"):
                    yield json.loads(d["raw"])
            if len(docs) < page:
                return
            after = str(docs[-1]["_id"])


class ReportStore:
    """Reports by (repository, manifest digest) and the re-scan queue. Reports are written by the scanner."""

    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def setup(self) -> None:
        await self.docs.ensure_collection(REPORTS, [Index(("updated_at",)), Index(("digest",))])
        await self.docs.ensure_collection(REQUESTS, [Index(("at",))])

    async def get(self, repository: str, digest: str) -> dict[str, Any] | None:
        return await self.docs.get(REPORTS, report_id(repository, digest))

    async def changed_since(self, at: float, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Reports stored after `at` (by `updated_at`), oldest first, as (_id, repository, digest, updated_at)."""
        return await self.docs.find(REPORTS, order_by="updated_at", after=at, limit=limit,
                                    fields=["repository", "digest", "updated_at"])

    async def request_scan(self, repository: str, digest: str, *, actor: str, now: float | None = None) -> bool:
        """Queue a re-scan; False when one is already queued (idempotent)."""
        try:
            await self.docs.insert(REQUESTS, {"_id": report_id(repository, digest), "repository": repository,
                                              "digest": digest, "actor": actor, "at": now or time.time()})
        except DuplicateKeyError:
            return False
        return True

    async def requests(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return await self.docs.find(REQUESTS, order_by="at", limit=limit)

    async def pending(self) -> int:
        """How many re-scan requests wait."""
        return await self.docs.count(REQUESTS)

    async def queued(self, repository: str, digest: str) -> bool:
        return await self.docs.get(REQUESTS, report_id(repository, digest)) is not None

    async def done(self, request: dict[str, Any]) -> None:
        await self.docs.delete(REQUESTS, str(request["_id"]), expect={"at": request["at"]})
