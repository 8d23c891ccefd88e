"""One collection run over the ports: snapshot, plan (mark.py), then two-phase deletion through gc_marks.

Online: nothing is locked; the push path and this run meet on single-document compare-and-sets
(services/core/storage/gcmarks.py). Per phase: mark every candidate, wait `settle` seconds (once per phase,
not per batch: a run's time must not grow by `settle` for every 500 candidates), then batch by batch drop
those a manifest stored since the run started references, claim the rest (marked -> deleting: a push that rescued
one first wins), delete, and leave a tombstone. Manifests go first (parents before children, each delete
conditional on the generation read, through the outbox with its ManifestDeleted event); blobs are planned
after, from what was really deleted. A run that dies leaves `deleting` marks whose lease runs out: the next
run finishes them (`repair`), and drops every other mark of a dead run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.core.content import events
from services.core.events.outbox import Delete, OutboundEvent, Outbox
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.policy.document import PolicyDocument, parse_stored
from services.core.policy.merge import effective
from services.core.policy.store import POLICIES
from services.core.settings import TopicSettings
from services.core.storage import gcmarks as gm
from services.core.storage import meta as m
from services.core.storage.blobs import BlobBulkDeleter, BlobStore
from services.core.storage.documents import Document, DocumentStore, scan
from services.gc.cache_expiry import expire_cache_entries
from services.gc.mark import (
    Limits,
    LinkFacts,
    ManifestFacts,
    Retention,
    plan_blobs,
    plan_manifests,
    referenced_blobs,
    unlinked_garbage,
)

log = logging.getLogger(__name__)

ACTOR = "gc"
PAGE = 2000
BATCH = 500
LEASE_SECONDS = 600.0
CLOCK_SLACK_SECONDS = 60.0
"""Manifests stored up to this long before the run started count as 'since': replicas' clocks differ."""
MIN_UPLOAD_IDLE_SECONDS = 60.0


@dataclass
class Deleted:
    kind: str  # manifest | blob | upload
    repository: str
    digest: str
    size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "repository": self.repository, "digest": self.digest, "size": self.size}


@dataclass
class RunResult:
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    uploads_deleted: int = 0
    errors: list[str] = field(default_factory=list)
    deleted: list[Deleted] = field(default_factory=list)
    storage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOptions:
    run_id: str
    dry_run: bool = False
    grace_seconds: float | None = None
    """Replaces every grace period of the run (the blob grace, the untagged age, upload idleness)."""


def _scan(docs: DocumentStore, collection: str) -> AsyncIterator[Document]:
    return scan(docs, collection, page=PAGE)


class Collector:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        blobs: BlobStore,
        outbox: Outbox,
        topics: TopicSettings,
        default_policy: PolicyDocument,
        blob_grace_seconds: float,
        upload_expiry_seconds: float,
        settle_seconds: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        forget_manifest: Callable[[str, Digest], None] | None = None,
    ) -> None:
        self.docs = docs
        self.blobs = blobs
        self.outbox = outbox
        self.topics = topics
        self.default_policy = default_policy
        self.blob_grace = blob_grace_seconds
        self.upload_expiry = upload_expiry_seconds
        self.settle = settle_seconds
        self.marks = gm.GcMarks(docs, clock=clock, sleep=sleep)
        self._clock = clock
        self._sleep = sleep
        self._forget = forget_manifest

    async def setup(self) -> None:
        await self.marks.setup()

    # -- the run --------------------------------------------------------------------------------

    async def run(self, options: RunOptions) -> RunResult:
        if options.dry_run:
            return await self._run(options)
        # Pushes read marks only while a run is announced (gcmarks.GcMarks._collecting).
        await self.marks.announce(options.run_id)
        try:
            return await self._run(options)
        finally:
            await self.marks.conclude(options.run_id)

    async def _run(self, options: RunOptions) -> RunResult:
        result = RunResult()
        started = self._clock()
        grace = options.grace_seconds
        limits = Limits(now=started, blob_grace_seconds=self.blob_grace if grace is None else grace,
                        untagged_seconds=grace)
        if not options.dry_run:
            await self.repair(options.run_id, result)
        manifests = [f async for f in self._manifest_facts()]
        manifests = await expire_cache_entries(self.docs, self.outbox, self.topics, manifests, now=started,
                                               dry_run=options.dry_run)  # pull-through cache entries
        retention = await self._retention({f.repository for f in manifests})
        plan = plan_manifests(manifests, retention, limits)
        gone = await self._delete_manifests(plan.delete, options, started, result)
        referenced = referenced_blobs(manifests, gone)
        del manifests, plan
        links = [link async for link in self._links()]
        candidates = plan_blobs(links, referenced, limits)
        del referenced
        deleted_digests = await self._delete_blobs(candidates, options, started, result)
        linked = {link.digest for link in links if link.digest not in deleted_digests}
        result.storage = _accounting(link for link in links if link.digest not in deleted_digests)
        del links, candidates
        await self._delete_unlinked(linked, options, started, limits, result)
        await self._expire_uploads(options, limits, result)
        return result

    # -- snapshot -------------------------------------------------------------------------------

    async def _manifest_facts(self) -> AsyncIterator[ManifestFacts]:
        tagged: set[str] = set()
        async for tag in _scan(self.docs, m.TAGS):
            tagged.add(f"{tag['repository']}@{tag['digest']}")
        async for doc in _scan(self.docs, m.MANIFESTS):
            yield ManifestFacts(
                repository=doc["repository"], digest=doc["digest"], created=float(doc.get("created") or 0.0),
                references=tuple(doc.get("references") or ()), subject=doc.get("subject"),
                tagged=doc["_id"] in tagged, generation=doc.get("generation"), size=int(doc.get("size") or 0),
            )

    async def _links(self) -> AsyncIterator[LinkFacts]:
        async for doc in _scan(self.docs, m.BLOB_LINKS):
            yield LinkFacts(doc["repository"], doc["digest"], int(doc.get("size") or 0),
                            float(doc.get("created") or 0.0))

    async def _retention(self, repositories: Iterable[str]) -> dict[str, Retention]:
        stored: dict[str, PolicyDocument] = {}
        async for doc in _scan(self.docs, POLICIES):
            try:
                stored[doc["_id"]] = parse_stored(doc.get("document") or {})
            except ValueError as exc:  # a bad row must not stop GC; its repositories get the default
                log.warning("gc: ignoring unreadable policy %s: %s", doc["_id"], exc)
        out: dict[str, Retention] = {}
        for repo in repositories:
            namespace = _namespace(repo)
            policy = effective(self.default_policy, namespace=stored.get(f"ns:{namespace}"),
                               repository=stored.get(f"repo:{repo}"))
            out[repo] = Retention(policy.retention.untagged_after_days, policy.retention.keep_last)
        return out

    async def _recent_references(self, started: float) -> set[str]:
        """What manifests stored since the run started reference (as `repo@digest` and bare digests)."""
        out: set[str] = set()
        since = started - CLOCK_SLACK_SECONDS
        after: float = since
        while True:
            page = await self.docs.find(m.MANIFESTS, order_by="created", after=after, limit=PAGE)
            for doc in page:
                for ref in list(doc.get("references") or ()) + ([doc["subject"]] if doc.get("subject") else []):
                    out.add(ref)
                    out.add(f"{doc['repository']}@{ref}")
            if len(page) < PAGE:
                return out
            after = float(page[-1]["created"])

    # -- manifests ------------------------------------------------------------------------------

    async def _delete_manifests(self, garbage: list[ManifestFacts], options: RunOptions, started: float,
                                result: RunResult) -> set[tuple[str, str]]:
        gone: set[tuple[str, str]] = set()
        if options.dry_run:
            for f in garbage:
                gone.add((f.repository, f.digest))
                result.deleted.append(Deleted("manifest", f.repository, f.digest, f.size))
            result.manifests_deleted = len(garbage)
            return gone
        stays: set[tuple[str, str]] = set()  # what a manifest that stayed references: it stays too
        for f in garbage:  # every mark first, then one settle: not one per batch
            await self.marks.mark(gm.manifest_key(f.repository, f.digest), run=options.run_id,
                                  extra={"generation": f.generation})
        if garbage:
            await self._sleep(self.settle)
        for batch in _batches(garbage, BATCH):
            recent = await self._recent_references(started)
            for f in batch:  # parents before children (plan order)
                key = gm.manifest_key(f.repository, f.digest)
                if f"{f.repository}@{f.digest}" in recent or (f.repository, f.digest) in stays:
                    await self.marks.release(key, state=gm.MARKED)
                    stays |= _points_at(f)
                elif not await self.marks.claim(key, run=options.run_id, until=self._clock() + LEASE_SECONDS):
                    await self.marks.release(key, state=gm.RESCUED)
                    stays |= _points_at(f)
                elif await self._delete_manifest(f, result):
                    gone.add((f.repository, f.digest))
                    await self.marks.bury(key)
                else:
                    await self.marks.release(key)
                    stays |= _points_at(f)
        return gone

    async def _delete_manifest(self, f: ManifestFacts, result: RunResult) -> bool:
        """Delete through the outbox, only as read (its generation: a tag moved to it since wins)."""
        record = m.ManifestRecord(repository=f.repository, digest=Digest.parse(f.digest), media_type="",
                                  size=f.size, data=b"", subject=Digest.parse(f.subject) if f.subject else None,
                                  generation=f.generation)
        if await self.docs.find(m.TAGS, {"repository": f.repository, "digest": f.digest}, limit=1):
            return False
        op = Delete(m.MANIFESTS, f"{f.repository}@{f.digest}", expect={"generation": f.generation})
        event = self._event(events.manifest_deleted(record, actor=ACTOR), op=0)
        try:
            committed = await self.outbox.commit([op], [event], partial=True)
        except Exception as exc:
            result.errors.append(f"manifest {f.repository}@{f.digest}: {exc}"[:500])
            return False
        if not committed.applied[0]:
            return False
        if self._forget is not None:
            self._forget(f.repository, record.digest)
        result.manifests_deleted += 1
        result.deleted.append(Deleted("manifest", f.repository, f.digest, f.size))
        return True

    # -- blobs ----------------------------------------------------------------------------------

    async def _delete_blobs(self, candidates: list[Any], options: RunOptions, started: float,
                            result: RunResult) -> set[str]:
        deleted: set[str] = set()
        if options.dry_run:
            for c in candidates:
                deleted.add(c.digest)
                result.deleted.append(Deleted("blob", ",".join(sorted({x.repository for x in c.links})),
                                              c.digest, c.size))
                result.bytes_freed += c.size
            result.blobs_deleted = len(candidates)
            return deleted
        # Every mark first, then one settle (not one per batch). Blobs are independent of each other, so each
        # step goes CONCURRENCY at a time: on a remote metadata store a run is round trips, not work.
        await _each(candidates, lambda c: self.marks.mark(
            gm.blob_key(c.digest), run=options.run_id,
            extra={"links": [{"r": x.repository, "c": x.created} for x in c.links], "size": c.size}))
        if candidates:
            await self._sleep(self.settle)
        for batch in _batches(candidates, BATCH):
            recent = await self._recent_references(started)
            claimed = []

            async def settle(c: Any) -> None:
                key = gm.blob_key(c.digest)
                if c.digest in recent:  # noqa: B023 - awaited within the iteration
                    await self.marks.release(key, state=gm.MARKED)
                elif await self.marks.claim(key, run=options.run_id, until=self._clock() + LEASE_SECONDS):
                    claimed.append(c)  # noqa: B023
                else:
                    await self.marks.release(key, state=gm.RESCUED)

            await _each(batch, settle)
            done = await self._finish_blobs([(c.digest, c.size, [(x.repository, x.created) for x in c.links])
                                             for c in claimed], result)
            deleted |= done
        return deleted

    async def _finish_blobs(self, claimed: list[tuple[str, int, list[tuple[str, float]]]],
                            result: RunResult) -> set[str]:
        """Past the point of no return: the links as read (a re-link since wins: the bytes stay), then the
        bytes in one bulk delete, then tombstones."""
        ready: list[tuple[str, int, list[tuple[str, float]]]] = []

        async def unlink(item: tuple[str, int, list[tuple[str, float]]]) -> None:
            digest, _, links = item
            ops = [Delete(m.BLOB_LINKS, f"{repo}@{digest}", expect={"created": created}) for repo, created in links]
            outbound = [self._event(events.blob_deleted(repo, Digest.parse(digest), actor=ACTOR), op=i)
                        for i, (repo, _) in enumerate(links)]
            try:
                committed = await self.outbox.commit(ops, outbound, partial=True) if ops else None
            except Exception as exc:
                result.errors.append(f"blob {digest}: {exc}"[:500])
                await self.marks.release(gm.blob_key(digest))
                return
            if committed is not None and not committed.complete:
                await self.marks.release(gm.blob_key(digest))  # linked again meanwhile: it stays
                return
            ready.append(item)

        await _each(claimed, unlink)
        ready.sort(key=lambda item: item[0])
        if not ready:
            return set()
        digests = [Digest.parse(d) for d, _, _ in ready]
        if isinstance(self.blobs, BlobBulkDeleter):
            failed = {str(d) for d in await self.blobs.delete_many(digests)}
        else:
            failed = set()
            for d in digests:
                try:
                    await self.blobs.delete(d)
                except Exception:
                    failed.add(str(d))
        done: set[str] = set()
        await _each([d for d, _, _ in ready if d in failed], lambda d: self.marks.release(gm.blob_key(d)))
        await _each([d for d, _, _ in ready if d not in failed], lambda d: self.marks.bury(gm.blob_key(d)))
        for digest, size, links in ready:
            if digest in failed:
                result.errors.append(f"blob {digest}: could not delete its bytes; the next run retries")
                continue
            done.add(digest)
            result.blobs_deleted += 1
            result.bytes_freed += size
            repos = ",".join(sorted({r for r, _ in links}))
            result.deleted.append(Deleted("blob", repos, digest, size))
        return done

    async def _delete_unlinked(self, linked: set[str], options: RunOptions, started: float, limits: Limits,
                               result: RunResult) -> None:
        seen = {str(d["_id"])[2:]: float(d.get("since", 0.0)) for d in await self.marks.all_in_state(gm.SEEN)}
        stored = [(str(info.digest), info.size) async for info in self.blobs.iter_all()]
        delete, first_seen = unlinked_garbage(stored, linked, seen, limits)
        for digest in set(seen) & linked:
            await self.marks.release(gm.blob_key(digest), state=gm.SEEN)
        if options.dry_run:
            for digest, size in delete:
                result.deleted.append(Deleted("blob", "", digest, size))
                result.blobs_deleted += 1
                result.bytes_freed += size
            return
        for digest in first_seen:
            await self.marks.see(gm.blob_key(digest), since=limits.now)
        for digest, _ in delete:
            await self.marks.mark(gm.blob_key(digest), run=options.run_id, extra={"links": []})
        if delete:
            await self._sleep(self.settle)
        for batch in _batches(delete, BATCH):
            recent = await self._recent_references(started)
            claimed: list[tuple[str, int, list[tuple[str, float]]]] = []
            for digest, size in batch:
                key = gm.blob_key(digest)
                # Linked since the snapshot (a push between its put and its link): leave it.
                if digest in recent or await self.docs.find(m.BLOB_LINKS, {"digest": digest}, limit=1):
                    await self.marks.release(key)
                elif await self.marks.claim(key, run=options.run_id, until=self._clock() + LEASE_SECONDS):
                    claimed.append((digest, size, []))
                else:
                    await self.marks.release(key, state=gm.RESCUED)
            await self._finish_blobs(claimed, result)

    # -- uploads --------------------------------------------------------------------------------

    async def _expire_uploads(self, options: RunOptions, limits: Limits, result: RunResult) -> None:
        idle = self.upload_expiry if options.grace_seconds is None else max(options.grace_seconds,
                                                                              MIN_UPLOAD_IDLE_SECONDS)
        cutoff = limits.now - idle
        async for upload_id, modified in self.blobs.iter_uploads():
            if modified >= cutoff:
                continue
            result.deleted.append(Deleted("upload", "", upload_id))
            result.uploads_deleted += 1
            if not options.dry_run:
                await self.blobs.abort(upload_id)
                await self.docs.delete(m.UPLOADS, upload_id)

    # -- repair ---------------------------------------------------------------------------------

    async def repair(self, run_id: str, result: RunResult) -> None:
        """Finish what a dead run left `deleting`; drop its other marks and old tombstones."""
        now = self._clock()
        for state in (gm.MARKED, gm.RESCUED):
            for doc in await self.marks.all_in_state(state):
                await self.marks.release(str(doc["_id"]), state=state)
        for doc in await self.marks.all_in_state(gm.DELETED):
            if now - float(doc.get("at", 0.0)) > gm.TOMBSTONE_SECONDS:
                await self.marks.release(str(doc["_id"]), state=gm.DELETED)
        for doc in await self.marks.all_in_state(gm.DELETING):
            if float(doc.get("until", 0.0)) >= now or not await self.marks.take_over(
                doc, run=run_id, until=now + LEASE_SECONDS
            ):
                continue
            key = str(doc["_id"])
            if key.startswith("b:"):
                digest = key[2:]
                links = [(x["r"], float(x["c"])) for x in doc.get("links") or ()]
                await self._finish_blobs([(digest, int(doc.get("size") or 0), links)], result)
            else:
                repo, _, digest = key[2:].rpartition("@")
                stored = await self.docs.get(m.MANIFESTS, f"{repo}@{digest}")
                facts = ManifestFacts(repo, digest, 0.0, (), None, False, doc.get("generation"),
                                      int(stored.get("size") or 0) if stored else 0)
                if stored is None or await self._delete_manifest(facts, result):
                    await self.marks.bury(key)
                else:
                    await self.marks.release(key)

    def _event(self, built: events.Built, *, op: int) -> OutboundEvent:
        out = events.outbound(built, self.topics)
        return OutboundEvent(out.topic, out.key, out.value, out.headers, op)


def _points_at(f: ManifestFacts) -> set[tuple[str, str]]:
    return {(f.repository, r) for r in (*f.references, *([f.subject] if f.subject else []))}


def _namespace(repository: str) -> str:
    try:
        return RepositoryName.parse(repository).namespace
    except ValueError:
        return repository.split("/", 1)[0]


CONCURRENCY = 16
"""Metadata commands of the blob phase in flight at once (each blob's own steps stay in order)."""


async def _each(items: Iterable[Any], step: Callable[[Any], Awaitable[Any]]) -> None:
    """`step` for every item, CONCURRENCY at a time (that many workers, not a task per item: a phase may have
    a million); the first error is raised once the workers stop."""
    source = iter(items)
    errors: list[BaseException] = []

    async def worker() -> None:
        for item in source:
            if errors:
                return
            try:
                await step(item)
            except Exception as exc:
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    if errors:
        raise errors[0]


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _accounting(links: Iterable[LinkFacts]) -> dict[str, Any]:
    """Bytes per repository (each blob it links), per namespace and in total (a shared blob counted once)."""
    repos: dict[str, int] = defaultdict(int)
    namespaces: dict[str, dict[str, int]] = defaultdict(dict)
    total: dict[str, int] = {}
    for link in links:
        repos[link.repository] += link.size
        namespaces[_namespace(link.repository)][link.digest] = link.size
        total[link.digest] = link.size
    # Lists of {name, bytes}, not mappings keyed by name: a repository name may hold dots, which documents
    # refuse in keys (services/core/storage/docvalues.py).
    return {
        "total_bytes": sum(total.values()),
        "namespaces": [{"name": ns, "bytes": sum(d.values())} for ns, d in sorted(namespaces.items())],
        "repositories": [{"name": repo, "bytes": size} for repo, size in sorted(repos.items())],
    }
