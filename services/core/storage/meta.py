"""MetadataStore: the registry's records and queries, written once over the DocumentStore port.

The SQLite and MongoDB adapters live below the DocumentStore port (sqlite.py, mongo.py), so every
query here runs unchanged on both. Changes that must emit events are not written here directly:
this module builds the operations, and the caller commits them through the outbox.

Collections and keys:
  repositories  _id = name
  blob_links    _id = "<repo>@<digest>"    a digest is reachable only in repositories that link it
  manifests     _id = "<repo>@<digest>"    exact pushed bytes in `data`
  manifests.generation                     changes whenever a tag is moved to the manifest, so a delete
                                           conditional on it loses to a concurrent push (no dangling tag)
  tags          _id = "<repo>:<tag>"       `version` changes on each change (compare-and-set); a new tag
                                           starts at a clock-derived value, so no later incarnation of a
                                           deleted tag repeats a version an old intent may still expect
  uploads       _id = upload id            the repository an upload session belongs to

Listings (`list_tags`, `list_repositories`) ask only for the names, which the (repository, name) index and
the `_id` index hold: they are answered from index order, with no per-item read.

Each MetadataStore remembers, for a short while, the repositories and manifests it has seen stored
(`KNOWN_TTL_SECONDS`), so a push to a known repository of a known manifest reads neither again. A stale
entry is harmless: a push that believes a deleted manifest exists moves its tags and then touches the
manifest, which re-creates it (`Touch`); a repository record is re-created within the TTL by the next
write that misses the cache. This replica's deletes forget what they delete at once.

Tag listings are served from the repository's names as last read (up to `TAG_LIST_NAMES`), until this
process sees the repository's tag set change or `tag_list_seconds` (setting `registry.tag_list_cache_seconds`)
pass; only in a process that follows other processes' tag events (the distribution service; `keep_tag_names`),
off elsewhere. It sees its own commits at once (`applied`, an outbox listener: a commit that creates or deletes
a tag changes the kept names alike, so pushing and then listing reads nothing), and other processes' through
their tag events (`tag_set_changed`, from the distribution service's event follower), so a replica lists
another's new tag within the event's delivery time, and within the TTL at worst (the event log down). A read
that began before a change it raced is not kept. FerretDB 1.x reads and sorts a repository's tags in its own
process for every listing (1,000 names: ~40 ms), MongoDB answers it from the index; either way a repeated
listing, and every page of a paged walk after the first, costs no command. A continuation page (`last=`) that
finds no names kept reads and keeps them all too (a walk spread over replicas by a load balancer, or one that
outlived a change): one read per replica, not one per page. A repository with more than `TAG_LIST_NAMES` tags is
paged from the index page by page (known as such for `TAG_LIST_TOO_BIG_SECONDS` after a read found it).

A manifest GET by tag reads the tag and then serves the manifest's record from a bounded in-process cache
(`tagged_manifest`): manifests are content-addressed, so a cached record of `<repo>@<digest>` holds the stored
bytes, and the tag just read is the proof that the repository holds it (a manifest delete deletes its tags
first; a tag move re-creates a manifest GC took meanwhile). One round trip instead of two. The cached
record's `generation` may be old, so nothing that writes uses it: deletes read `manifest()`.
"""

from __future__ import annotations

import bisect
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.core.events.outbox import Create, Delete, Insert, Operation, Put, Touch, Update
from services.core.oci.digest import Digest
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index

REPOSITORIES = "repositories"
BLOB_LINKS = "blob_links"
MANIFESTS = "manifests"
TAGS = "tags"
UPLOADS = "uploads"

KNOWN_TTL_SECONDS = 30.0
KNOWN_MAX_ENTRIES = 50_000
TAG_LIST_SECONDS = 10.0
TAG_LIST_NAMES = 10_000
"""Repositories with more tags are listed and paged straight from the index (their names are not kept)."""
TAG_LIST_TOO_BIG_SECONDS = 600.0
"""How long a repository found with more than TAG_LIST_NAMES tags is paged from the index without another try at
keeping its names (each try reads TAG_LIST_NAMES + 1 of them)."""
TAG_LIST_BYTES = 16 << 20
RECORD_CACHE_BYTES = 32 << 20
"""What the tagged-manifest cache may hold (manifest bytes; a record larger than an eighth is not cached)."""
_V = TypeVar("_V")


def _key(repository: str, sep: str, rest: str) -> str:
    return f"{repository}{sep}{rest}"


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    repository: str
    digest: Digest
    media_type: str
    size: int
    data: bytes
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    references: tuple[str, ...] = ()
    created: float = 0.0
    generation: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": _key(self.repository, "@", str(self.digest)),
            "repository": self.repository,
            "digest": str(self.digest),
            "media_type": self.media_type,
            "size": self.size,
            "data": self.data,
            "subject": str(self.subject) if self.subject else None,
            "artifact_type": self.artifact_type,
            # Annotation keys are dotted (org.opencontainers...), which MongoDB field names may not be.
            "annotations": [{"k": k, "v": v} for k, v in self.annotations.items()],
            "references": list(self.references),
            "created": self.created,
            "generation": self.generation,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ManifestRecord:
        return cls(
            repository=doc["repository"],
            digest=Digest.parse(doc["digest"]),
            media_type=doc["media_type"],
            size=doc["size"],
            data=doc["data"],
            subject=Digest.parse(doc["subject"]) if doc.get("subject") else None,
            artifact_type=doc.get("artifact_type"),
            annotations={a["k"]: a["v"] for a in doc.get("annotations") or ()},
            references=tuple(doc.get("references") or ()),
            created=doc.get("created", 0.0),
            generation=doc.get("generation"),
        )


@dataclass(frozen=True, slots=True)
class TagRecord:
    repository: str
    name: str
    digest: Digest
    version: int
    updated: float


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    actor: str
    created: float


class _Known:
    """Keys seen stored recently (bounded, each for `ttl` seconds): a hint, never the truth."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < self._clock():
            del self._until[key]
            return False
        return True

    def add(self, key: str) -> None:
        self._until[key] = self._clock() + self._ttl
        self._until.move_to_end(key)
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def discard(self, key: str) -> None:
        self._until.pop(key, None)


class _SizedLru(Generic[_V]):
    """Values by key, least recently used first out, bounded by the total of their sizes; a value over
    `max_bytes // max_share` is not kept."""

    def __init__(self, *, max_bytes: int, max_share: int) -> None:
        self._max = max_bytes
        self._max_item = max_bytes // max_share
        self._bytes = 0
        self._items: OrderedDict[str, tuple[_V, int]] = OrderedDict()

    def get(self, key: str) -> _V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def add(self, key: str, value: _V, size: int) -> None:
        self.discard(key)
        if size > self._max_item:
            return
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self._max:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= old

    def discard(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


class _TagNames:
    """Each repository's tag names as last read, until this process sees its tag set change (`changed`) or
    `ttl` passes; bounded by the bytes of the names (module docstring)."""

    _MAX_CHANGED = 10_000

    def __init__(self, *, ttl: float, max_bytes: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._names: _SizedLru[tuple[float, list[str]]] = _SizedLru(max_bytes=max_bytes, max_share=4)
        # A read stores its names only if no change to the repository was seen since it began: one that
        # raced a commit would otherwise cache the names from before it.
        self._seq = 0
        self._changed: dict[str, int] = {}
        self._floor = 0
        # Repositories last read with more than TAG_LIST_NAMES names, until when: a listing of theirs reads only
        # what it asks for instead of trying to keep them again.
        self._too_big: dict[str, float] = {}

    def get(self, repository: str) -> list[str] | None:
        entry = self._names.get(repository)
        if entry is None:
            return None
        if entry[0] < self._clock():
            self._names.discard(repository)
            return None
        return entry[1]

    def begin(self) -> int:
        return self._seq

    def too_big(self, repository: str) -> bool:
        return self._too_big.get(repository, float("-inf")) >= self._clock()

    def mark_too_big(self, repository: str) -> None:
        if len(self._too_big) >= self._MAX_CHANGED:
            self._too_big.clear()
        self._too_big[repository] = self._clock() + TAG_LIST_TOO_BIG_SECONDS

    def put(self, repository: str, names: list[str], began: int) -> None:
        if self.ttl <= 0 or began < self._floor or self._changed.get(repository, 0) > began:
            return
        self._keep(repository, names, self._clock() + self.ttl)

    def _keep(self, repository: str, names: list[str], expires: float) -> None:
        self._names.add(repository, (expires, names), sum(len(n) for n in names) + 64 * len(names))

    def forget_all(self) -> None:
        """Drop every kept name, and refuse the names of reads begun before now."""
        self._names.clear()
        self._changed.clear()
        self._too_big.clear()
        self._seq += 1
        self._floor = self._seq

    def changed(self, repository: str, *, added: str | None = None, removed: str | None = None) -> None:
        """The repository's tag set changed: its kept names are dropped, or, when the change is known (this
        process's commit of `added` or `removed`), changed alike so a push-then-list stays a cache hit."""
        name = added if added is not None else removed
        entry = self._names.get(repository)
        if entry is not None and name is not None and entry[0] >= self._clock():
            names = list(entry[1])
            at = bisect.bisect_left(names, name)
            present = at < len(names) and names[at] == name
            if added is not None and not present:
                names.insert(at, name)
            elif removed is not None and present:
                del names[at]
            self._keep(repository, names, entry[0])
        else:
            self._names.discard(repository)
        self._seq += 1
        self._changed[repository] = self._seq
        if len(self._changed) > self._MAX_CHANGED:
            # Forget which repositories changed: every read begun before now is then refused instead.
            self._changed.clear()
            self._floor = self._seq


class MetadataStore:
    """Reads, and operation builders for writes, over one DocumentStore."""

    def __init__(
        self,
        docs: DocumentStore,
        *,
        known_ttl_seconds: float = KNOWN_TTL_SECONDS,
        record_cache_bytes: int = RECORD_CACHE_BYTES,
        tag_list_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.docs = docs
        # Manifest records by key (tagged_manifest), bounded by the bytes of their manifests.
        self._records: _SizedLru[ManifestRecord] = _SizedLru(max_bytes=record_cache_bytes, max_share=8)
        self._known_repositories = _Known(ttl=known_ttl_seconds, max_entries=KNOWN_MAX_ENTRIES, clock=clock)
        self._known_manifests = _Known(ttl=known_ttl_seconds, max_entries=KNOWN_MAX_ENTRIES, clock=clock)
        self._tag_names = _TagNames(ttl=tag_list_seconds, max_bytes=TAG_LIST_BYTES, clock=clock)

    async def setup(self) -> None:
        await self.docs.ensure_collection(REPOSITORIES)
        # `created`: GC reads what was linked since its run started, after marking (services/gc/sweep.py).
        await self.docs.ensure_collection(BLOB_LINKS, [Index(("repository",)), Index(("digest",)), Index(("created",))])
        # `created`: GC reads what was stored since its run started, once per batch of candidates (a full scan
        # of the manifests each time without it: 0.3 s at 100,000 on SQLite).
        await self.docs.ensure_collection(MANIFESTS, [Index(("repository",)), Index(("subject",)), Index(("digest",)),
                                                      Index(("created",))])
        await self.docs.ensure_collection(TAGS, [Index(("repository", "name")), Index(("digest",))])
        await self.docs.ensure_collection(UPLOADS, [Index(("repository",))])

    # repositories

    async def ensure_repository(self, name: str, *, namespace: str) -> None:
        """Create the repository record if missing. Idempotent; an empty repository is harmless.
        No command at all when this store has seen the repository recently (module docstring)."""
        if name in self._known_repositories:
            return
        if await self.docs.get(REPOSITORIES, name) is None:
            # A read first: an insert refused as a duplicate is still a write (FerretDB locks for it).
            with contextlib.suppress(DuplicateKeyError):
                await self.docs.insert(REPOSITORIES, {"_id": name, "namespace": namespace, "created": time.time()})
        self._known_repositories.add(name)

    async def repository_exists(self, name: str) -> bool:
        """Read every time (a deleted repository answers NAME_UNKNOWN at once); refreshes the hint."""
        if await self.docs.get(REPOSITORIES, name) is None:
            self._known_repositories.discard(name)
            return False
        self._known_repositories.add(name)
        return True

    def forget_repository(self, name: str) -> None:
        """Call when the repository record is deleted: the next write to it creates the record again."""
        self._known_repositories.discard(name)

    async def delete_repository_record(self, name: str) -> None:
        """Delete the repository's record (its content first: the caller's job), and forget it."""
        self._known_repositories.discard(name)
        self._tag_names.changed(name)
        await self.docs.delete(REPOSITORIES, name)

    async def list_repositories(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        # Only `_id`: answered from the primary key's order.
        docs = await self.docs.find(REPOSITORIES, after=after, limit=limit, fields=())
        return [d["_id"] for d in docs]

    # blob links

    async def link_blob(self, repository: str, digest: Digest, size: int) -> None:
        """Make a committed blob reachable from `repository`. Idempotent."""
        await self.docs.put(
            BLOB_LINKS,
            {
                "_id": _key(repository, "@", str(digest)),
                "repository": repository,
                "digest": str(digest),
                "size": size,
                "created": time.time(),
            },
        )

    async def blob_link(self, repository: str, digest: Digest) -> int | None:
        """Size of the blob if `repository` links it, else None."""
        doc = await self.docs.get(BLOB_LINKS, _key(repository, "@", str(digest)))
        return None if doc is None else int(doc["size"])

    def unlink_blob_op(self, repository: str, digest: Digest) -> Operation:
        return Delete(BLOB_LINKS, _key(repository, "@", str(digest)))

    async def repositories_linking(self, digest: Digest, *, limit: int) -> list[str]:
        """Repositories that link `digest` (for mounts that do not name their source)."""
        docs = await self.docs.find(BLOB_LINKS, {"digest": str(digest)}, limit=limit)
        return [d["repository"] for d in docs]

    async def linked_digests(self, repository: str, digests: Sequence[str]) -> set[str]:
        keys = {_key(repository, "@", d): d for d in digests}
        found = await self.docs.get_many(BLOB_LINKS, list(keys))
        return {keys[k] for k in found}

    # manifests

    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        key = _key(repository, "@", str(digest))
        doc = await self.docs.get(MANIFESTS, key)
        if doc is None:
            self._known_manifests.discard(key)
            self._records.discard(key)
            return None
        self._known_manifests.add(key)
        record = ManifestRecord.from_doc(doc)
        self._records.add(key, record, len(record.data))
        return record

    async def tagged_manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        """The manifest a tag of `repository` was just read pointing at: from the cache when this replica has
        read it before (module docstring: the tag read is the proof of membership), else `manifest()`. Its
        `generation` may be old: for reads only."""
        cached = self._records.get(_key(repository, "@", str(digest)))
        return cached if cached is not None else await self.manifest(repository, digest)

    async def manifests(self, repository: str, digests: Sequence[Digest]) -> dict[str, ManifestRecord]:
        """The stored manifests among `digests`, by digest: one round trip per batch of keys (a page of
        tags shows its manifests without one read each)."""
        keys = {_key(repository, "@", str(d)): str(d) for d in digests}
        found = await self.docs.get_many(MANIFESTS, list(keys))
        return {keys[k]: ManifestRecord.from_doc(doc) for k, doc in found.items()}

    async def manifest_exists(self, repository: str, digest: str) -> bool:
        key = _key(repository, "@", digest)
        exists = await self.docs.get(MANIFESTS, key) is not None
        if exists:
            self._known_manifests.add(key)
        else:
            self._known_manifests.discard(key)
        return exists

    def manifest_known(self, repository: str, digest: Digest) -> bool:
        """True if this store saw the manifest stored recently (a hint: see the module docstring)."""
        return _key(repository, "@", str(digest)) in self._known_manifests

    def remember_manifest(self, repository: str, digest: Digest) -> None:
        """After a commit that stored (or touched) the manifest."""
        self._known_manifests.add(_key(repository, "@", str(digest)))

    def forget_manifest(self, repository: str, digest: Digest) -> None:
        """After a commit that deleted the manifest."""
        key = _key(repository, "@", str(digest))
        self._known_manifests.discard(key)
        self._records.discard(key)

    def put_manifest_op(self, record: ManifestRecord, *, absent: bool = False) -> Operation:
        """Content-addressed: a stored manifest with this digest already has these bytes. `absent`: the
        caller has just read it missing, so the writer inserts without reading it again."""
        return Create(MANIFESTS, record.to_doc(), absent=absent)

    def touch_manifest_op(self, record: ManifestRecord) -> Operation:
        """After tags moved to the manifest: a new generation, and the manifest again if it was deleted."""
        return Touch(MANIFESTS, record.to_doc(), {"generation": uuid.uuid4().hex})

    def delete_manifest_op(self, record: ManifestRecord) -> Operation:
        """Delete the manifest as read: only if no push has moved a tag to it since (its generation)."""
        return Delete(MANIFESTS, _key(record.repository, "@", str(record.digest)),
                      expect={"generation": record.generation})

    async def referrers(self, repository: str, subject: Digest) -> list[ManifestRecord]:
        docs = await self.docs.find(MANIFESTS, {"repository": repository, "subject": str(subject)})
        return [ManifestRecord.from_doc(d) for d in docs]

    # tags

    async def tag(self, repository: str, name: str) -> TagRecord | None:
        doc = await self.docs.get(TAGS, _key(repository, ":", name))
        if doc is None:
            return None
        return TagRecord(repository, name, Digest.parse(doc["digest"]), doc["version"], doc["updated"])

    async def tags(self, repository: str, names: Sequence[str]) -> dict[str, TagRecord]:
        """The tags among `names` that exist, by name: one round trip per batch of keys (a page of tags)."""
        keys = {_key(repository, ":", name): name for name in names}
        found = await self.docs.get_many(TAGS, list(keys))
        return {
            keys[k]: TagRecord(repository, keys[k], Digest.parse(d["digest"]), d["version"], d["updated"])
            for k, d in found.items()
        }

    async def list_tags(self, repository: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Names in code point order, after `after`, at most `limit`; cached as the module docstring says."""
        names = self._tag_names.get(repository)
        if names is None:
            if self._tag_names.ttl <= 0 or self._tag_names.too_big(repository):
                # Nothing would be kept: read only what is asked.
                return await self._tag_names_from_index(repository, after=after, limit=limit)
            # Read them all to keep them, a continuation page too: its walk may have begun on another replica
            # (each page of a round-robin walk lands on a different one) or before the names changed, and on
            # FerretDB 1.x a page costs as much as all the repository's names (it reads and sorts them all).
            began = self._tag_names.begin()
            whole = limit is None and after is None
            names = await self._tag_names_from_index(
                repository, after=None, limit=None if whole else max(limit or 0, TAG_LIST_NAMES + 1))
            if len(names) <= TAG_LIST_NAMES:
                self._tag_names.put(repository, names, began)
            else:
                self._tag_names.mark_too_big(repository)
                if after is not None:
                    return await self._tag_names_from_index(repository, after=after, limit=limit)
        start = 0 if after is None else bisect.bisect_right(names, after)
        return names[start:] if limit is None else names[start : start + limit]

    async def _tag_names_from_index(self, repository: str, *, after: str | None, limit: int | None) -> list[str]:
        # Only the names: answered from the (repository, name) index, in its order.
        docs = await self.docs.find(
            TAGS, {"repository": repository}, order_by="name", after=after, limit=limit, fields=("name",)
        )
        return [d["name"] for d in docs]

    def keep_tag_names(self, seconds: float) -> None:
        """Keep tag names for `seconds` (0: never, the default). Only a process that also follows the tag events
        of other processes (`tag_set_changed`) may keep them: without, it would list another's change late.
        Either way what was kept (or is being read) until now is dropped: turned off, the follower lost events;
        turned on, a read begun before the follower was positioned may have missed one."""
        self._tag_names.ttl = seconds
        self._tag_names.forget_all()

    def tag_names_kept(self, repository: str) -> bool:
        """Whether this replica keeps some tag names of `repository` (then listing it costs no command)."""
        return bool(self._tag_names.get(repository))

    def tag_set_changed(self, repository: str) -> None:
        """A tag of `repository` was created or deleted (by any process): list its tags from the store."""
        self._tag_names.changed(repository)

    def applied(self, ops: Sequence[Operation], certain: bool = True) -> None:
        """Outbox listener (`Outbox.on_applied`): what this process's commits changed. Kept names take a
        change that surely applied; one that may have (a commit failed midway) drops them."""
        for op in ops:
            if isinstance(op, Insert | Delete | Put | Create) and op.collection == TAGS:
                key = op.key if isinstance(op, Delete) else str(op.doc["_id"])
                repository, _, name = key.partition(":")
                if not certain:
                    self._tag_names.changed(repository)
                elif isinstance(op, Delete):
                    self._tag_names.changed(repository, removed=name)
                else:
                    self._tag_names.changed(repository, added=name)

    async def tags_of(self, repository: str, digest: Digest) -> list[TagRecord]:
        docs = await self.docs.find(TAGS, {"repository": repository, "digest": str(digest)})
        return [TagRecord(repository, d["name"], digest, d["version"], d["updated"]) for d in docs]

    def set_tag_op(self, repository: str, name: str, digest: Digest, *, current: TagRecord | None) -> Operation:
        """Compare-and-set: point the tag at `digest` only if it is still as read in `current`."""
        now = time.time()
        if current is None:
            return Insert(
                TAGS,
                {
                    "_id": _key(repository, ":", name),
                    "repository": repository,
                    "name": name,
                    "digest": str(digest),
                    "version": time.time_ns(),
                    "updated": now,
                },
            )
        return Update(
            TAGS,
            _key(repository, ":", name),
            {"digest": str(digest), "version": current.version + 1, "updated": now},
            expect={"version": current.version},
        )

    def delete_tag_op(self, current: TagRecord) -> Operation:
        return Delete(TAGS, _key(current.repository, ":", current.name), expect={"version": current.version})

    # uploads

    async def create_upload(self, upload_id: str, repository: str, *, actor: str) -> None:
        await self.docs.insert(
            UPLOADS,
            {
                "_id": upload_id,
                "repository": repository,
                "actor": actor,
                "created": time.time(),
            },
        )

    async def upload(self, upload_id: str) -> UploadRecord | None:
        doc = await self.docs.get(UPLOADS, upload_id)
        if doc is None:
            return None
        return UploadRecord(doc["_id"], doc["repository"], doc.get("actor", ""), doc["created"])

    async def delete_upload(self, upload_id: str) -> None:
        await self.docs.delete(UPLOADS, upload_id)
