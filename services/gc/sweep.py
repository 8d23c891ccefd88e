"""One collection run over the ports: snapshot, plan (mark.py), then two-phase deletion through gc_marks.

Online: nothing is locked; the push path and this run meet on single-document compare-and-sets
(services/core/storage/gcmarks.py). Per phase: mark every candidate, wait `settle` seconds (once per phase,
not per batch: a run's time must not grow by `settle` for every 500 candidates), then batch by batch drop
those a manifest stored since the run started references or a push linked since (anywhere: its links are read
by `created`), claim the rest (marked -> deleting: a push that rescued
one first wins), delete, and leave a tombstone. Manifests go first (parents before children, each delete
conditional on the generation read, through the outbox with its ManifestDeleted event); blobs are planned
after, from what was really deleted. A run that dies leaves `deleting` marks whose lease runs out: the next
run finishes them (`repair`), and drops every other mark of a dead run.

Memory: the snapshot streams. Manifests are read a repository at a time (their `_id` order groups them) and
planned there; what kept manifests reference goes into a DigestSet (32 bytes a digest, digestset.py). Blob
links are read in digest order, so each blob's links arrive together and are judged at once; only the
garbage among them is held. A run over a million blob records stays within a few hundred MiB.

Incremental runs (`RunOptions.incremental`) examine only the candidates that content events recorded
(candidates.py): the repositories they name, planned exactly as a full run plans them, and the blobs those
repositories (or the events) leave unreferenced, each checked against every repository that links it.
Deletion is the same two-phase path, so a candidate re-linked or re-pushed before its point of no return stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterable
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
from services.core.storage.documents import INSERT_BATCH, Document, DocumentStore, background, scan
from services.gc import candidates as cand
from services.gc.cache_expiry import CacheExpiry
from services.gc.digestset import DigestSet, DigestSetBuilder
from services.gc.mark import (
    BlobCandidate,
    Limits,
    LinkFacts,
    ManifestFacts,
    Retention,
    linked_since,
    links_due,
    next_expiry,
    plan_blobs,
    plan_manifests,
    unlinked_garbage,
)

log = logging.getLogger(__name__)

ACTOR = "gc"
PAGE = 2000
SQLITE_PAGE = 200
"""The page on the embedded SQLite store: at most sqlite._DECODE_ON_LOOP_MAX rows, decoded on the loop."""
YIELD_EVERY = 200
"""Items a planning loop handles before it lets the event loop serve others (`serve` runs GC beside pushes)."""
BATCH = 500
BUSY_CONCURRENCY = 1
"""A run's commands in flight on a remote store while requests are served (Collector.busy_concurrency)."""
BUSY_PAGE = 200
"""A run's page on a remote store while requests are served (Collector.busy_page)."""
GATE_POLL_SECONDS = 0.05
"""How often a step held back while requests are served looks again."""
CLAIM_SECONDS = 60.0
"""A claim's lease (`until`): a push waiting on what the collector claimed takes it over once the lease is over,
or gcmarks.WAIT_SECONDS after it first saw the claim (gcmarks._Wait)."""
DELETE_WITHIN_SECONDS = 30.0
"""The collector deletes what it claimed only this soon after the claim: later, a push may be about to take it
over and keep it. The rest of the lease covers the deletion itself and the clocks' drift between replicas; what
is left is finished by a later run under a claim of its own (or, for bytes whose links went, as unlinked bytes)."""
CLOCK_SLACK_SECONDS = 60.0
"""Manifests stored up to this long before the run started count as 'since': replicas' clocks differ."""
MIN_UPLOAD_IDLE_SECONDS = 60.0
CONCURRENCY = 16
"""Metadata commands of the blob phase in flight at once, by default (each blob's own steps stay in order)."""
LINKS_PER_CLAIM = 500
"""Blob links claimed at once (their blobs'): paced behind requests on FerretDB, a link's conditional delete and
the pause after it take ~25 ms, so 500 go well within DELETE_WITHIN_SECONDS."""
UNLINK_BATCH = 50
"""Blobs whose links go in one outbox change."""
REMOVE_BATCH = 50
"""Old marks a run removes in one step (`_remove_marks`)."""
UNLINK_SHARE = 8
"""Outbox changes of links in flight: gc.concurrency / UNLINK_SHARE (each sends its deletes 16 at a time). On
FerretDB more of them at once only lengthen the queue of lease locks (measured: 32 changes of 16 blobs at once
took 9-12 s for 2,000 blobs, 4 changes of 50 took 7)."""
UNLINK_PAUSE = 2.0
"""On a remote store while requests are served, an outbox change of links is followed by this many times its own
time beyond the run's usual pause (`yield_ratio`), while the claimed share still fits well within
DELETE_WITHIN_SECONDS (`unlink_pause`). The conditional link deletes are the one step the slow pushes overlap
on FerretDB 1.x, which scans the whole collection for each (bench/README.md: `--trace-ops`); measured, push p99
during a run 1.25-1.39x of the p99 without one with it, 1.32-1.58x without."""
CANDIDATES_PER_RUN = 10_000
"""Candidates an incremental run examines; the rest wait for the next run."""
MANIFEST_FIELDS = ("repository", "digest", "created", "references", "subject", "generation", "size")
LINK_FIELDS = ("repository", "digest", "size", "created")
TAG_FIELDS = ("repository", "digest")


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
    incremental: bool = False
    """Examine the due candidates (candidates.py) instead of the whole graph."""


def _facts(doc: Document) -> ManifestFacts:
    return ManifestFacts(repository=doc["repository"], digest=doc["digest"], created=float(doc.get("created") or 0.0),
                         references=tuple(doc.get("references") or ()), subject=doc.get("subject"),
                         generation=doc.get("generation"), size=int(doc.get("size") or 0))


def _link(doc: Document) -> LinkFacts:
    return LinkFacts(doc["repository"], doc["digest"], int(doc.get("size") or 0), float(doc.get("created") or 0.0))


def _with_tags(held: list[ManifestFacts], tagged: Container[str]) -> list[ManifestFacts]:
    return [dataclasses.replace(f, tagged=True) if f.digest in tagged else f for f in held]


class _TagsInStep:
    """The tags collection walked once in `_id` order (`repository:name`) beside the manifests' walk
    (`repository@digest`), handing out each repository's tagged digests as the manifests reach it: one query for
    the whole snapshot instead of one per repository (on FerretDB 1.x each of those read the whole collection).

    The two walks order repositories alike: they differ only in the separator (':' or '@'), and no character
    of a repository name lies between the two (the OCI name grammar), so comparing names followed by '@' is
    the order of both. Tags of a repository with no manifest are passed over."""

    def __init__(self, walk: AsyncIterator[Document]) -> None:
        self._walk = walk
        self._next: Document | None = None
        self._done = False

    async def of(self, repository: str) -> set[str]:
        """The digests `repository`'s tags point at. Called with repositories in the manifests' order."""
        key = repository + "@"
        out: set[str] = set()
        while not self._done:
            if self._next is None:
                try:
                    self._next = await anext(self._walk)
                except StopAsyncIteration:
                    self._done = True
                    break
            at = str(self._next["repository"]) + "@"
            if at > key:
                break
            if at == key:
                out.add(str(self._next["digest"]))
            self._next = None
        return out

    async def close(self) -> None:
        """End the walk (its query) when the snapshot ends early."""
        aclose = getattr(self._walk, "aclose", None)
        if aclose is not None:
            await aclose()


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class _Accounting:
    """Bytes per repository (each blob it links), per namespace and in total (a shared blob counted once),
    from each blob's links at once (links arrive grouped by digest, so nothing per blob is kept)."""

    def __init__(self) -> None:
        self.repos: dict[str, int] = defaultdict(int)
        self.namespaces: dict[str, int] = defaultdict(int)
        self.total = 0

    def add(self, links: list[LinkFacts]) -> None:
        size = links[0].size
        for link in links:
            self.repos[link.repository] += link.size
        for ns in {_namespace(link.repository) for link in links}:
            self.namespaces[ns] += size
        self.total += size

    def summary(self) -> dict[str, Any]:
        # Lists of {name, bytes}, not mappings keyed by name: a repository name may hold dots, which documents
        # refuse in keys (services/core/storage/docvalues.py).
        return {
            "total_bytes": self.total,
            "namespaces": [{"name": ns, "bytes": size} for ns, size in sorted(self.namespaces.items())],
            "repositories": [{"name": repo, "bytes": size} for repo, size in sorted(self.repos.items())],
        }


@dataclass
class _BlobPlan:
    candidates: list[BlobCandidate] = field(default_factory=list)
    linked: DigestSetBuilder = field(default_factory=DigestSetBuilder)
    accounting: _Accounting = field(default_factory=_Accounting)

    def keep(self, links: list[LinkFacts]) -> None:
        self.linked.add(links[0].digest)
        self.accounting.add(links)


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
        concurrency: int = CONCURRENCY,
        yield_ratio: float = 0.0,
        page: int = PAGE,
        busy: Callable[[], bool] = lambda: True,
        busy_concurrency: int | None = None,
        busy_page: int | None = None,
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
        self.candidates = cand.CandidateStore(docs, clock=clock)
        self.concurrency = concurrency
        """Metadata commands in flight at once. Remote stores want many (a run is round trips); the embedded
        SQLite store has one connection that pushes share, so there a few keep pushes from queueing behind GC."""
        self.yield_ratio = yield_ratio
        self.page = page
        """Documents a snapshot reads at once. Remote stores want big pages (round trips); on the embedded SQLite
        store small ones are decoded on the event loop in a slice of a few ms, where a big one went to a worker
        thread that then held the interpreter, in 5 ms turns, against every push waiting on the loop."""
        self._busy = busy
        """Whether requests are being served now (services/core/activity.py): only then does a run pause."""
        self.busy_concurrency = busy_concurrency
        """Steps in flight at once, and commands each step sends at once, while requests are served (None:
        `concurrency` always). A remote store that serves pushes too queues their commands behind every one of a
        run's in flight; pausing each step alone would leave `concurrency / (1 + yield_ratio)` of them there.
        Measured on FerretDB (bench/README.md): push p99 during a run 2.4x with 2, 1.4x with 1."""
        self.busy_page = busy_page
        """The batch of a walk while requests are served (None: `page` always). A big batch is a reply that holds
        a remote store (and on a small machine, a core) for a while every push shares. Walks are one query each
        (DocumentStore.batches), so small batches cost round trips, not reads."""
        self._in_flight = 0
        self._paced_at = time.monotonic()
        self._clock = clock
        self._sleep = sleep
        self._forget = forget_manifest

    def _width(self) -> int:
        """Commands a step sends at once: `busy_concurrency` while requests are served. Gating the steps alone
        is not enough: a step (an outbox change of 50 blobs' links, a batch of claims) fans out too, and 64
        deletes in flight on FerretDB made every push wait behind them (bench/README.md)."""
        if self.busy_concurrency is not None and self._busy():
            return min(self.concurrency, self.busy_concurrency)
        return self.concurrency

    def _page(self) -> int:
        if self.busy_page is not None and self._busy():
            return min(self.page, self.busy_page)
        return self.page

    async def setup(self) -> None:
        await self.marks.setup()
        await self.candidates.setup()

    async def _each(self, items: Iterable[Any], step: Callable[[Any], Awaitable[Any]], *,
                    workers: int | None = None) -> None:
        async def paced(item: Any) -> None:
            # Polled: whether requests come changes with no event to wait on.
            while self.busy_concurrency is not None and self._in_flight >= self.busy_concurrency and self._busy():  # noqa: ASYNC110
                await asyncio.sleep(GATE_POLL_SECONDS)
            self._in_flight += 1
            try:
                started = time.monotonic()
                await step(item)
            finally:
                self._in_flight -= 1
            await self._yield(started)

        pacing = self.yield_ratio or self.busy_concurrency is not None
        await _each(items, paced if pacing else step, workers=workers or self.concurrency)

    async def _pace(self) -> None:
        """In a planning loop, every YIELD_EVERY items: pause `yield_ratio` times as long as the loop ran since
        the last pause (at least a turn for others): planning is CPU on the event loop `serve` shares."""
        ran = time.monotonic() - self._paced_at
        await asyncio.sleep(min(ran, 1.0) * self.yield_ratio if self._busy() else 0.0)
        self._paced_at = time.monotonic()

    async def _yield(self, started: float) -> None:
        """Pause `yield_ratio` times as long as the work since `started` took: a store that serves pushes too
        (the embedded SQLite, one connection) then spends at most 1 / (1 + ratio) of its time on GC. Only while
        requests are being served: an idle registry's run goes at full speed."""
        if self.yield_ratio and self._busy():
            await asyncio.sleep((time.monotonic() - started) * self.yield_ratio)

    # -- the run --------------------------------------------------------------------------------

    async def run(self, options: RunOptions) -> RunResult:
        # Requests first: a store shared with them (the embedded SQLite) serves the run after them.
        with background():
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
        self._paced_at = time.monotonic()
        grace = options.grace_seconds
        limits = Limits(now=started, blob_grace_seconds=self.blob_grace if grace is None else grace,
                        untagged_seconds=grace)
        if not options.dry_run:
            await self.repair(options.run_id, result)
        if options.incremental:
            await self._incremental(options, started, limits, result)
            return result
        policies = await self._policies()
        expiry = await CacheExpiry.load(self.docs, self.outbox, self.topics, now=started,
                                        dry_run=options.dry_run)  # pull-through cache entries
        garbage: list[ManifestFacts] = []
        referenced = DigestSetBuilder()
        async for facts in self._repositories():
            facts = await expiry.apply(facts)
            plan = plan_manifests(facts, self._retention(policies, facts[0].repository), limits)
            garbage += plan.delete
            doomed = {f.digest for f in plan.delete}
            for f in facts:
                if f.digest not in doomed:
                    referenced.update(f.references)
        await expiry.finish()
        gone = await self._delete_manifests(garbage, options, started, result)
        for f in garbage:  # kept after all (rescued, re-tagged): what it references stays
            if (f.repository, f.digest) not in gone:
                referenced.update(f.references)
        del garbage
        # The merge of the sorted chunks is seconds of CPU at a million digests: in a thread, so that
        # requests served by the same event loop (`serve`) keep getting turns.
        blobs = await self._plan_blobs(await asyncio.to_thread(referenced.build), limits)
        del referenced
        deleted = await self._delete_blobs(blobs.candidates, options, started, result)
        for c in blobs.candidates:
            if c.digest not in deleted:
                blobs.linked.add(c.digest)
                blobs.accounting.add(c.links)
        result.storage = blobs.accounting.summary()
        blobs.candidates = []
        await self._delete_unlinked(await asyncio.to_thread(blobs.linked.build), options, started, limits, result)
        await self._expire_uploads(options, limits, result)
        return result

    # -- snapshot -------------------------------------------------------------------------------

    async def _repositories(self) -> AsyncIterator[list[ManifestFacts]]:
        """Every repository's manifests, one repository at a time (`_id` = `repository@digest` groups them),
        without their bytes, with their tags from one walk of the tags beside it (`_TagsInStep`)."""
        held: list[ManifestFacts] = []
        tags = _TagsInStep(scan(self.docs, m.TAGS, page=self._page, fields=TAG_FIELDS))
        try:
            async for doc in scan(self.docs, m.MANIFESTS, page=self._page, fields=MANIFEST_FIELDS):
                if held and doc["repository"] != held[-1].repository:
                    yield _with_tags(held, await tags.of(held[0].repository))
                    held = []
                    await self._pace()  # planning is CPU: let requests in between repositories
                elif len(held) % YIELD_EVERY == YIELD_EVERY - 1:
                    await self._pace()
                held.append(_facts(doc))
            if held:
                yield _with_tags(held, await tags.of(held[0].repository))
        finally:
            await tags.close()

    async def _repository(self, repository: str) -> list[ManifestFacts]:
        held = [_facts(doc) async for doc in scan(self.docs, m.MANIFESTS, {"repository": repository}, page=self._page,
                                                  fields=MANIFEST_FIELDS)]
        return await self._tagged(held) if held else []

    async def _tagged(self, held: list[ManifestFacts]) -> list[ManifestFacts]:
        """One repository's manifests with their tags, read by a query of their own (incremental runs)."""
        repository = held[0].repository
        tagged = {str(t["digest"]) async for t in scan(self.docs, m.TAGS, {"repository": repository}, page=self._page,
                                                        fields=("digest",))}
        return _with_tags(held, tagged)

    async def _links_by_digest(self) -> AsyncIterator[list[LinkFacts]]:
        """Every blob's links, one blob at a time, in digest order."""
        group: list[LinkFacts] = []
        async for batch in self.docs.batches(m.BLOB_LINKS, order_by="digest", size=self._page, fields=LINK_FIELDS):
            for doc in batch:
                if group and doc["digest"] != group[-1].digest:
                    yield group
                    group = []
                group.append(_link(doc))
            await asyncio.sleep(0)
        if group:
            yield group

    async def _plan_blobs(self, referenced: DigestSet, limits: Limits) -> _BlobPlan:
        """Stream the links: garbage blobs become candidates; the rest are counted and remembered as linked."""
        out = _BlobPlan()
        seen = 0
        async for links in self._links_by_digest():
            seen += 1
            if seen % YIELD_EVERY == 0:
                await self._pace()
            digest = links[0].digest
            if digest in referenced:
                out.keep(links)
                continue
            found = plan_blobs(links, set(), limits)
            if found:
                out.candidates += found
            else:
                out.keep(links)
        return out

    async def _policies(self) -> dict[str, PolicyDocument]:
        stored: dict[str, PolicyDocument] = {}
        async for doc in scan(self.docs, POLICIES, page=self._page):
            try:
                stored[doc["_id"]] = parse_stored(doc.get("document") or {})
            except ValueError as exc:  # a bad row must not stop GC; its repositories get the default
                log.warning("gc: ignoring unreadable policy %s: %s", doc["_id"], exc)
        return stored

    def _retention(self, stored: dict[str, PolicyDocument], repo: str) -> dict[str, Retention]:
        namespace = _namespace(repo)
        policy = effective(self.default_policy, namespace=stored.get(f"ns:{namespace}"),
                           repository=stored.get(f"repo:{repo}"))
        return {repo: Retention(policy.retention.untagged_after_days, policy.retention.keep_last)}

    async def _recent_links(self, started: float, among: Container[str]) -> dict[str, list[LinkFacts]]:
        """The blob links written since the run started to the blobs `among` (what the run means to delete; a busy
        registry links many more), by digest. Read once every mark of a phase is written: a push that linked a
        candidate after the snapshot and before its mark read no mark (and a mount into another repository is in
        no snapshot), and one that links after this read reads the mark (gcmarks.py), so one read a phase is
        enough however many batches follow. One read by `created` (indexed), not one per candidate: FerretDB 1.x
        answers a query by digest by reading the whole collection, as it does this one."""
        out: dict[str, list[LinkFacts]] = defaultdict(list)
        async for batch in self.docs.batches(m.BLOB_LINKS, order_by="created", after=started - CLOCK_SLACK_SECONDS,
                                             size=self._page, fields=LINK_FIELDS):
            for doc in batch:
                if doc["digest"] in among:
                    out[str(doc["digest"])].append(_link(doc))
        return out

    async def _recent_references(self, started: float) -> set[str]:
        """What manifests stored since the run started, and pushes in flight, reference (as `repo@digest` and
        bare digests). Read once a phase, after its marks are written: the holds first, so that a push that stores
        its manifest and drops its hold in between is found among the manifests, and a push that writes its hold
        after this read reads the marks and rescues what is still marked (gcmarks.py), as for `_recent_links`.
        Once, not once per batch: FerretDB 1.x reads every manifest for the range on `created`."""
        out = await self.marks.held()
        since = started - CLOCK_SLACK_SECONDS
        async for batch in self.docs.batches(m.MANIFESTS, order_by="created", after=since, size=self._page,
                                             fields=("repository", "references", "subject")):
            for doc in batch:
                for ref in list(doc.get("references") or ()) + ([doc["subject"]] if doc.get("subject") else []):
                    out.add(ref)
                    out.add(f"{doc['repository']}@{ref}")
        return out

    # -- incremental ------------------------------------------------------------------------------

    async def _incremental(self, options: RunOptions, started: float, limits: Limits, result: RunResult) -> None:
        """Examine the due candidates (module docstring); each is then removed, or deferred to when what kept
        it stops counting. A failed run leaves them all for the next one."""
        due = await self.candidates.due(now=started, limit=CANDIDATES_PER_RUN)
        if not due:
            return
        repos = sorted({str(d["name"]) for d in due if d["kind"] == cand.REPOSITORY})
        policies = await self._policies()
        garbage: list[ManifestFacts] = []
        held: dict[str, list[ManifestFacts]] = {}
        later: dict[str, float | None] = {}  # candidate key -> when to look again
        for repo in repos:
            facts = held[repo] = await self._repository(repo)
            retention = self._retention(policies, repo)
            garbage += plan_manifests(facts, retention, limits).delete
            later[cand.Candidate(cand.REPOSITORY, repo).key] = next_expiry(facts, retention, limits)
        gone = await self._delete_manifests(garbage, options, started, result)
        # What each repository's remaining manifests reference (others are read when a blob needs them).
        refs = {repo: {r for f in facts if (repo, f.digest) not in gone for r in f.references}
                for repo, facts in held.items()}
        del held, garbage
        origin: dict[str, set[str]] = defaultdict(set)  # digest -> candidate keys that led to it
        for d in due:
            if d["kind"] == cand.BLOB:
                origin[str(d["name"])].add(str(d["_id"]))
        for repo in repos:
            async for doc in scan(self.docs, m.BLOB_LINKS, {"repository": repo}, page=self._page, fields=("digest",)):
                if doc["digest"] not in refs[repo]:
                    origin[str(doc["digest"])].add(cand.Candidate(cand.REPOSITORY, repo).key)
        blob_candidates: list[BlobCandidate] = []
        unlinked: list[str] = []
        for digest in sorted(origin):
            links = [_link(doc) async for doc in scan(self.docs, m.BLOB_LINKS, {"digest": digest}, page=self._page,
                                                      fields=LINK_FIELDS)]
            if not links:
                unlinked.append(digest)
            elif not await self._referenced_in(digest, {x.repository for x in links}, refs):
                at = links_due(links, limits)
                if at is None:
                    blob_candidates += plan_blobs(links, set(), limits)
                for key in origin[digest]:
                    later[key] = _earliest(later.get(key), at)
        await self._delete_blobs(blob_candidates, options, started, result)
        stored = []
        for digest in unlinked:
            try:
                parsed = Digest.parse(digest)
            except ValueError:  # not a digest this registry stores: nothing to collect, and never a run's failure
                continue
            info = await self.blobs.stat(parsed)
            if info is not None:
                stored.append((digest, info.size))
        seen = await self._seen([d for d, _ in stored])
        waits = await self._sweep_unlinked(stored, DigestSet(), seen, options, started, limits, result)
        for digest, at in waits.items():
            for key in origin[digest]:
                later[key] = _earliest(later.get(key), at)
        if options.dry_run or result.errors:
            return  # a failed part is retried by the next run, which finds the candidates still due
        for doc in due:
            at = later.get(str(doc["_id"]))
            if at is None:
                await self.candidates.done(doc)
            else:
                await self.candidates.defer(doc, due=at)

    async def _referenced_in(self, digest: str, repositories: set[str], refs: dict[str, set[str]]) -> bool:
        """Whether a manifest of one of `repositories` references `digest` (a repository's references are
        read once per run, and only when a blob asks)."""
        for repo in sorted(repositories, key=lambda r: r not in refs):
            if repo not in refs:
                refs[repo] = {r async for doc in scan(self.docs, m.MANIFESTS, {"repository": repo}, page=self._page,
                                                      fields=("references",))
                              for r in doc.get("references") or ()}
            if digest in refs[repo]:
                return True
        return False

    async def _seen(self, digests: list[str]) -> dict[str, float]:
        found = await self.marks.get_many([gm.blob_key(d) for d in digests])
        return {k[2:]: float(v.get("since", 0.0)) for k, v in found.items() if v.get("state") == gm.SEEN}

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
        # Every mark first, then one settle: not one per batch.
        await self._each(_batches(garbage, INSERT_BATCH), lambda fs: self.marks.mark_each(
            [gm.manifest_key(f.repository, f.digest) for f in fs], run=options.run_id,
            extra=[{"generation": f.generation} for f in fs]))
        if garbage:
            await self._sleep(self.settle)
        paced = time.monotonic()
        recent = await self._recent_references(started) if garbage else set()
        for batch in _batches(garbage, BATCH):
            for f in batch:  # parents before children (plan order)
                await self._yield(paced)
                paced = time.monotonic()
                key = gm.manifest_key(f.repository, f.digest)
                if f"{f.repository}@{f.digest}" in recent or (f.repository, f.digest) in stays:
                    await self._let_go(key)
                    stays |= _points_at(f)
                elif not await self.marks.claim(key, run=options.run_id, until=self._clock() + CLAIM_SECONDS):
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

    async def _let_go(self, key: str) -> None:
        """Drop this run's mark on something that stays, whether or not a push rescued it meanwhile."""
        if not await self.marks.release(key, state=gm.MARKED):
            await self.marks.release(key, state=gm.RESCUED)

    # -- blobs ----------------------------------------------------------------------------------

    async def _delete_blobs(self, candidates: list[BlobCandidate], options: RunOptions, started: float,
                            result: RunResult) -> set[str]:
        deleted: set[str] = set()
        if options.dry_run:
            for c in candidates:
                deleted.add(c.digest)
                result.deleted.append(Deleted("blob", ",".join(sorted({x.repository for x in c.links})),
                                              c.digest, c.size))
                result.bytes_freed += c.size
            result.blobs_deleted += len(candidates)
            return deleted
        # Every mark first, then one settle (not one per batch). Blobs are independent of each other, so each
        # step goes `concurrency` at a time: on a remote metadata store a run is round trips, not work.
        # Blob marks are decided by verdicts (gcmarks.py): claims and tombstones are inserts, a batch a command.
        await self._each(_batches(candidates, INSERT_BATCH), lambda cs: self.marks.mark_each(
            [gm.blob_key(c.digest) for c in cs], run=options.run_id, verdict=True,
            extra=[{"links": [{"r": x.repository, "c": x.created} for x in c.links], "size": c.size} for c in cs]))
        if candidates:
            await self._sleep(self.settle)
        linked = await self._recent_links(started, {c.digest for c in candidates}) if candidates else {}
        recent = await self._recent_references(started) if candidates else set()
        for batch in _batches(candidates, BATCH):
            stays = {c.digest for c in batch if c.digest in recent or linked_since(c.links, linked.get(c.digest, []))}
            await self.marks.let_go([gm.blob_key(d) for d in stays], run=options.run_id, concurrency=self._width())
            # Claimed a share at a time, so that each share's links go within DELETE_WITHIN_SECONDS of its claim
            # even paced behind requests (a claim after the check above is as safe as one right after it: a push
            # since has rescued the mark, and the claim then loses).
            for share in _by_links([c for c in batch if c.digest not in stays], LINKS_PER_CLAIM):
                claimed_at = self._clock()
                won = await self._claim_each([gm.blob_key(c.digest) for c in share], options.run_id, claimed_at)
                claimed = [c for c in share if gm.blob_key(c.digest) in won]
                deleted |= await self._finish_blobs(
                    [(c.digest, c.size, [(x.repository, x.created) for x in c.links]) for c in claimed], result,
                    options.run_id, claimed_at, verdicts=options.run_id)
        return deleted

    async def _claim_each(self, keys: list[str], run: str, at: float) -> set[str]:
        """Claim blob marks of run `run` (their `deleting` verdicts), a batch a command, leased from `at`
        (the instant _finish_blobs counts DELETE_WITHIN_SECONDS from); the rescued ones (a push touched them) are
        let go."""
        if not keys:
            return set()
        paced = time.monotonic()
        won = await self.marks.claim_verdicts(keys, run=run, until=at + CLAIM_SECONDS)
        await self.marks.let_go([k for k in keys if k not in won], run=run, concurrency=self._width())
        await self._yield(paced)
        return won

    async def _finish_blobs(self, claimed: list[tuple[str, int, list[tuple[str, float]]]],
                            result: RunResult, run: str, claimed_at: float, *, verdicts: str | None = None
                            ) -> set[str]:
        """Past the point of no return: the links as read (a re-link since wins: the bytes stay), then the
        bytes in one bulk delete, then tombstones. The links of up to UNLINK_BATCH blobs go in one outbox
        change (partial: each link's delete is conditional on its own), so a blob costs its conditional
        deletes and a share of one intent, not an intent of its own.

        `verdicts`: the run whose marks with verdicts these are (their tombstones are inserted, a blob that
        stays is let go: gcmarks.py); None: marks of the previous kind, held by `run` (buried, released).
        `claimed_at`: when the claims were made (this collector's clock); the bytes are deleted only within
        DELETE_WITHIN_SECONDS of it."""
        ready: list[tuple[str, int, list[tuple[str, float]]]] = []

        async def release(keys: list[str]) -> None:
            if verdicts is not None:
                await self.marks.let_go(keys, run=verdicts, concurrency=self._width())
            else:
                await self.marks.release_each(keys, concurrency=self._width())

        unlinked, unlinking = 0, 0.0  # items and seconds of the outbox changes so far

        async def unlink(items: list[tuple[str, int, list[tuple[str, float]]]]) -> None:
            nonlocal unlinked, unlinking
            began = time.monotonic()
            await unlink_now(items)
            work = time.monotonic() - began
            unlinked += len(items)
            unlinking += work
            if self.busy_concurrency is not None and self._busy():
                pause = unlink_pause(work, since_claim=self._clock() - claimed_at, left=len(claimed) - unlinked,
                                     per_item=unlinking * (1 + self.yield_ratio) / unlinked)
                if pause:
                    await self._sleep(pause)

        async def unlink_now(items: list[tuple[str, int, list[tuple[str, float]]]]) -> None:
            ops: list[Delete] = []
            outbound: list[OutboundEvent] = []
            spans: list[tuple[int, int]] = []
            for digest, _, links in items:
                first = len(ops)
                for repo, created in links:
                    outbound.append(self._event(events.blob_deleted(repo, Digest.parse(digest), actor=ACTOR),
                                                op=len(ops)))
                    ops.append(Delete(m.BLOB_LINKS, f"{repo}@{digest}", expect={"created": created}))
                spans.append((first, len(ops)))
            try:
                # Bounded only while busy on a remote store: on the embedded SQLite its 16 deletes at once go into
                # one group commit, and 2 at a time (gc.concurrency there) made runs twice as long.
                bound = self._width() if self.busy_concurrency is not None and self._busy() else None
                committed = (await self.outbox.commit(ops, outbound, partial=True, concurrency=bound)
                             if ops else None)
            except Exception as exc:
                for digest, _, _ in items:
                    result.errors.append(f"blob {digest}: {exc}"[:500])
                await release([gm.blob_key(digest) for digest, _, _ in items])
                return
            stays: list[str] = []
            for item, (a, b) in zip(items, spans, strict=True):
                if committed is not None and not all(committed.applied[a:b]):
                    stays.append(gm.blob_key(item[0]))  # linked again meanwhile: it stays
                else:
                    ready.append(item)
            await release(stays)

        await self._each(_batches(claimed, UNLINK_BATCH), unlink, workers=max(1, self.concurrency // UNLINK_SHARE))
        ready.sort(key=lambda item: item[0])
        if not ready:
            return set()
        late = self._clock() - claimed_at
        if late > DELETE_WITHIN_SECONDS:
            # Stalled: a push waiting on these claims may take one over any time now and keep the blob. Left
            # claimed, bytes in place: pushes take them over once the lease is over, a later run finishes the rest.
            for digest, _, _ in ready:
                result.errors.append(f"blob {digest}: claimed {late:.0f} s ago, too long to delete its bytes "
                                     "safely; a later run finishes it")
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
        paced = time.monotonic()
        await release([gm.blob_key(d) for d, _, _ in ready if d in failed])
        if verdicts is not None:
            await self.marks.entomb([gm.blob_key(d) for d, _, _ in ready if d not in failed], run=verdicts)
        else:
            await self.marks.bury_each([gm.blob_key(d) for d, _, _ in ready if d not in failed], run=run,
                                       concurrency=self._width())
        await self._yield(paced)
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

    async def _delete_unlinked(self, linked: DigestSet, options: RunOptions, started: float, limits: Limits,
                               result: RunResult) -> None:
        """Stored bytes no repository links (a push that never linked, a link deleted by hand)."""
        seen = {str(d["_id"])[2:]: float(d.get("since", 0.0)) for d in await self.marks.all_in_state(gm.SEEN)}
        # Bytes stored since the run started (pushes after the links' snapshot, nearly all linked by now) are left
        # to the next run while a grace period applies: this one would delete none of them, and marking each as
        # seen cost three commands and a lease lock on FerretDB (~850 a run in a row under bench.gc's pushes).
        young = started - CLOCK_SLACK_SECONDS if limits.blob_grace_seconds > 0 else float("inf")
        stored = [(str(info.digest), info.size) async for info in self.blobs.iter_all()
                  if str(info.digest) not in linked and (info.modified is None or info.modified < young)]
        await self._sweep_unlinked(stored, linked, seen, options, started, limits, result)

    async def _sweep_unlinked(self, stored: list[tuple[str, int]], linked: DigestSet, seen: dict[str, float],
                              options: RunOptions, started: float, limits: Limits,
                              result: RunResult) -> dict[str, float]:
        """Two-phase deletion of unlinked bytes old enough (`unlinked_garbage`); returns, for those not yet,
        when they will be."""
        delete, first_seen = unlinked_garbage(stored, linked, seen, limits)
        waits = {d: (seen.get(d, limits.now) + limits.blob_grace_seconds) for d, _ in stored}
        for digest, _ in delete:
            waits.pop(digest, None)
        await self._each([d for d in seen if d in linked],
                         lambda d: self.marks.release(gm.blob_key(d), state=gm.SEEN))
        if options.dry_run:
            for digest, size in delete:
                result.deleted.append(Deleted("blob", "", digest, size))
                result.blobs_deleted += 1
                result.bytes_freed += size
            return waits
        await self._each(first_seen, lambda d: self.marks.see(gm.blob_key(d), since=limits.now))
        await self._each(_batches(delete, INSERT_BATCH), lambda items: self.marks.mark_each(
            [gm.blob_key(d) for d, _ in items], run=options.run_id, extra=[{"links": []}] * len(items), verdict=True))
        if delete:
            await self._sleep(self.settle)
        since = await self._recent_links(started, {d for d, _ in delete}) if delete else {}
        recent = await self._recent_references(started) if delete else set()
        for batch in _batches(delete, BATCH):
            unlinked: list[tuple[str, int]] = []
            for digest, size in batch:
                if digest in recent or digest in since:  # linked since the snapshot (a push between its put and link)
                    await self.marks.let_go([gm.blob_key(digest)], run=options.run_id)
                else:
                    unlinked.append((digest, size))
            claimed_at = self._clock()
            won = await self._claim_each([gm.blob_key(d) for d, _ in unlinked], options.run_id, claimed_at)
            await self._finish_blobs([(d, size, []) for d, size in unlinked if gm.blob_key(d) in won], result,
                                     options.run_id, claimed_at, verdicts=options.run_id)
        return waits

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
        states = {state: await self.marks.all_in_state(state)
                  for state in (gm.MARKED, gm.RESCUED, gm.DELETED, gm.DELETING)}
        # Marks with verdicts, their verdicts (x:) and tombstones (t:), gcmarks.py.
        decided = [d for d in states[gm.MARKED] if d.get("verdict")]
        verdicts = {str(d["_id"]): d for state in (gm.RESCUED, gm.DELETING) for d in states[state]
                    if str(d["_id"]).startswith("x:")}
        tombs = {str(d["_id"]): d for d in states[gm.DELETED] if str(d["_id"]).startswith("t:")}
        for state in (gm.MARKED, gm.RESCUED):
            await self._remove_marks([str(d["_id"]) for d in states[state]
                                      if not d.get("verdict") and not str(d["_id"]).startswith("x:")], state=state)
        await self._remove_marks([str(d["_id"]) for d in states[gm.DELETED] if not str(d["_id"]).startswith("t:")
                                  and now - float(d.get("at", 0.0)) > gm.TOMBSTONE_SECONDS], state=gm.DELETED)
        await self._repair_verdicts(decided, verdicts, tombs, run_id, now, result)
        for doc in states[gm.DELETING]:
            if str(doc["_id"]).startswith("x:"):
                continue
            at = self._clock()  # this claim's own time: the deletion must follow it closely
            if float(doc.get("until", 0.0)) >= now or not await self.marks.take_over(
                doc, run=run_id, until=at + CLAIM_SECONDS
            ):
                continue
            key = str(doc["_id"])
            if key.startswith("b:"):
                digest = key[2:]
                links = [(x["r"], float(x["c"])) for x in doc.get("links") or ()]
                await self._finish_blobs([(digest, int(doc.get("size") or 0), links)], result, run_id, at)
            else:
                repo, _, digest = key[2:].rpartition("@")
                stored = await self.docs.get(m.MANIFESTS, f"{repo}@{digest}")
                facts = ManifestFacts(repo, digest, 0.0, (), None, False, doc.get("generation"),
                                      int(stored.get("size") or 0) if stored else 0)
                if stored is None or await self._delete_manifest(facts, result):
                    await self.marks.bury(key)
                else:
                    await self.marks.release(key)

    async def _repair_verdicts(self, decided: list[Document], verdicts: dict[str, Document],
                               tombs: dict[str, Document], run_id: str, now: float, result: RunResult) -> None:
        """Earlier runs' marks with verdicts (gcmarks.py): finish a dead run's claimed deletions once their
        lease is over; remove what was let go, rescued or never claimed, and what was deleted once its
        tombstone stops counting (mark first, then verdict, then tombstone)."""
        old = now - gm.TOMBSTONE_SECONDS
        gone: list[str] = []
        for mark in decided:
            key, run = str(mark["_id"]), str(mark.get("run"))
            verdict = verdicts.pop(gm.verdict_key(run, key), None)
            tomb = tombs.pop(gm.tombstone_key(run, key), None)
            if tomb is not None:
                if float(tomb.get("at", 0.0)) < old:
                    gone += [key, gm.verdict_key(run, key), gm.tombstone_key(run, key)]
            elif verdict is None or verdict.get("state") == gm.RESCUED:
                gone += [key] + ([gm.verdict_key(run, key)] if verdict is not None else [])
            elif float(verdict.get("until", 0.0)) < now and await self.marks.take_over(
                verdict, run=str(verdict.get("run")), until=(at := self._clock()) + CLAIM_SECONDS
            ):
                # A dead run's claim (the verdict's `run` stays: the tombstone's key needs it).
                links = [(x["r"], float(x["c"])) for x in mark.get("links") or ()]
                await self._finish_blobs([(key[2:], int(mark.get("size") or 0), links)], result, run_id, at,
                                         verdicts=run)
        # Verdicts and tombstones whose mark is gone or belongs to a later run: removed once over.
        for tomb_id, tomb in tombs.items():
            if float(tomb.get("at", 0.0)) < old:
                gone.append(tomb_id)
                verdicts.pop("x:" + tomb_id[2:], None)
                gone.append("x:" + tomb_id[2:])
        for verdict_id, verdict in verdicts.items():
            if ("t:" + verdict_id[2:]) not in tombs and (
                verdict.get("state") == gm.RESCUED or float(verdict.get("until", 0.0)) < now
            ):
                gone.append(verdict_id)
        # Marks, then verdicts, then tombstones (gcmarks.py: the order a push reads them in).
        for prefix in ("b:", "x:", "t:"):
            if keys := [k for k in gone if k.startswith(prefix)]:
                await self._remove_marks(keys)

    async def _remove_marks(self, keys: list[str], *, state: str | None = None) -> None:
        """Delete documents of `gc_marks` (each only if still in `state`, when given), REMOVE_BATCH at a time and
        paced like every step: a run removes the marks, verdicts and tombstones of every blob a run deleted
        TOMBSTONE_SECONDS ago, three per blob, and in one burst (16 deletes in flight on FerretDB) those of 1,000
        blobs held the store from the pushes for seconds (bench/README.md: push p99 365-395 ms in the round that
        removed them, 110-130 ms in the others)."""
        async def remove(batch: list[str]) -> None:
            if state is not None or (self.busy_concurrency is not None and self._busy()):
                await self.marks.release_each(batch, state=state, concurrency=self._width())
            else:
                await self.docs.delete_many(gm.GC_MARKS, batch)

        await self._each(_batches(keys, REMOVE_BATCH), remove, workers=1)

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


def unlink_pause(work: float, *, since_claim: float, left: int, per_item: float) -> float:
    """The extra pause after an outbox change of links that took `work` seconds (UNLINK_PAUSE times it), or none
    when, with it, the `left` items of the share at `per_item` seconds each (as paced so far, without such
    pauses) would end later than half of DELETE_WITHIN_SECONDS after the claim: a share must be unlinked in time
    for its bytes to go (`_finish_blobs`), and the rest of the window is the margin for a slow store."""
    pause = UNLINK_PAUSE * work
    if since_claim + pause + left * per_item > DELETE_WITHIN_SECONDS / 2:
        return 0.0
    return pause


async def _each(items: Iterable[Any], step: Callable[[Any], Awaitable[Any]], *, workers: int = CONCURRENCY) -> None:
    """`step` for every item, `workers` at a time (that many workers, not a task per item: a phase may have
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

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    if errors:
        raise errors[0]


def _by_links(candidates: list[BlobCandidate], links: int) -> Iterable[list[BlobCandidate]]:
    """Consecutive candidates with at most `links` links in all (a candidate with more goes alone)."""
    share: list[BlobCandidate] = []
    count = 0
    for c in candidates:
        if share and count + len(c.links) > links:
            yield share
            share, count = [], 0
        share.append(c)
        count += len(c.links)
    if share:
        yield share


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
