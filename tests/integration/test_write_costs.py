"""Metadata commands per request, counted on the DocumentStore port of both adapters (issue 10).

A tag push in the steady state (the manifest already stored, the repository already known) costs at most
four commands on the request path; the relay's commands are counted apart (they are batched). A listing
costs one query for the names only, plus the read of the repository's record; a repeated one only that read.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.core.content.registry import Registry
from services.core.content.repositories import delete_repository
from services.core.errors import ManifestUnknownError, NameUnknownError
from services.core.events.local import LocalEventLog
from services.core.events.outbox import LEASES, OUTBOX, Outbox, OutboxRelay
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.settings import RegistrySettings, TopicSettings
from services.core.storage.documents import Document, DocumentStore, Index
from services.core.storage.fs import FilesystemBlobStore
from services.core.storage.meta import TAG_LIST_SECONDS, MetadataStore
from services.core.storage.mongo import MongoDocumentStore
from services.core.storage.sqlite import SqliteDocumentStore
from services.distribution.replica_caches import ReplicaCacheInvalidation
from tests.conftest import infra
from tests.integration.oci import OCI_MANIFEST, digest_of, image_manifest

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="request")


class CountingDocumentStore:
    """Delegates every call and counts it by method, for the request path and the relay apart."""

    def __init__(self, inner: DocumentStore) -> None:
        self.inner = inner
        self.calls: Counter[tuple[str, str]] = Counter()  # (caller, method)

    def _count(self, method: str) -> None:
        self.calls[(_caller.get(), method)] += 1

    def total(self, caller: str) -> int:
        return sum(n for (who, _), n in self.calls.items() if who == caller)

    def of(self, caller: str) -> dict[str, int]:
        return {method: n for (who, method), n in sorted(self.calls.items()) if who == caller}

    async def ensure_collection(self, name: str, indexes: Sequence[Index] = ()) -> None:
        await self.inner.ensure_collection(name, indexes)

    async def get(self, collection: str, key: str) -> Document | None:
        if collection == LEASES:
            # The GC lease, read at most every gcmarks.NOTICE_SECONDS per process: not a per-push cost.
            self.calls[("periodic", "get")] += 1
        else:
            self._count("get")
        return await self.inner.get(collection, key)

    async def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Document]:
        self._count("get_many")
        return await self.inner.get_many(collection, keys)

    async def insert(self, collection: str, doc: Mapping[str, Any]) -> None:
        self._count("insert")
        await self.inner.insert(collection, doc)

    async def put(self, collection: str, doc: Mapping[str, Any]) -> None:
        self._count("put")
        await self.inner.put(collection, doc)

    async def update(self, collection: str, key: str, changes: Mapping[str, Any], **kwargs: Any) -> bool:
        self._count("update")
        return await self.inner.update(collection, key, changes, **kwargs)

    async def delete(self, collection: str, key: str, **kwargs: Any) -> bool:
        self._count("delete")
        return await self.inner.delete(collection, key, **kwargs)

    async def delete_many(self, collection: str, keys: Sequence[str]) -> int:
        self._count("delete_many")
        return await self.inner.delete_many(collection, keys)

    async def find(self, collection: str, where: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        self._count("find")
        return await self.inner.find(collection, where, **kwargs)

    async def batches(self, collection: str, where: Mapping[str, Any] | None = None, **kwargs: Any
                      ) -> AsyncIterator[list[Document]]:
        self._count("batches")  # one query (its getMores are not commands a request waits on apart)
        async for batch in self.inner.batches(collection, where, **kwargs):
            yield batch

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        self._count("count")
        return await self.inner.count(collection, where)

    async def delete_where(self, collection: str, where: Mapping[str, Any]) -> int:
        self._count("delete_where")
        return await self.inner.delete_where(collection, where)

    async def drop_collection(self, name: str) -> None:
        await self.inner.drop_collection(name)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class World:
    def __init__(self, docs: CountingDocumentStore, registry: Registry, relay: OutboxRelay, events: LocalEventLog
                 ) -> None:
        self.docs = docs
        self.registry = registry
        self.relay = relay
        self.events = events
        self.published = 0

    async def settle(self) -> None:
        """Wait until the relay has published everything committed so far."""
        async with asyncio.timeout(30):
            while await self.docs.inner.count(OUTBOX):
                await asyncio.sleep(0.01)


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    inner: DocumentStore
    if request.param == "sqlite":
        inner = SqliteDocumentStore(tmp_path / "metadata.db")
    else:
        inner = MongoDocumentStore(infra("HANZO_TEST_MONGO_URI"), f"hzr_costs_{uuid.uuid4().hex[:10]}")
    docs = CountingDocumentStore(inner)
    events = LocalEventLog(tmp_path / "events.db", retention_seconds=3600)
    meta = MetadataStore(docs, tag_list_seconds=TAG_LIST_SECONDS)
    await meta.setup()
    outbox = Outbox(docs)
    await outbox.setup()
    outbox.on_applied(meta.applied)
    relay = OutboxRelay(docs, events, poll_interval=0.05)
    outbox.on_commit(relay.wake)
    registry = Registry(
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        meta=meta,
        outbox=outbox,
        settings=RegistrySettings(),
        topics=TopicSettings(),
    )
    w = World(docs, registry, relay, events)
    relay._on_published = lambda _topic: setattr(w, "published", w.published + 1)
    stop = asyncio.Event()
    token = _caller.set("relay")
    task = asyncio.create_task(relay.run(stop))
    _caller.reset(token)
    try:
        yield w
    finally:
        stop.set()
        await task
        if isinstance(inner, MongoDocumentStore):
            for name in await inner.collection_names():
                await inner.drop_collection(name)
        await docs.close()
        await events.close()


async def _manifest(w: World, repo: str) -> bytes:
    config, layer = f"config {uuid.uuid4()}".encode(), f"layer {uuid.uuid4()}".encode()
    for blob in (config, layer):
        await w.registry.meta.link_blob(repo, Digest.parse(digest_of(blob)), len(blob))
    return image_manifest(config, [layer])


async def _push(w: World, repo: str, tag: str, manifest: bytes) -> None:
    await w.registry.put_manifest(RepositoryName(repo), Tag(tag), manifest, OCI_MANIFEST, actor="test")


async def test_a_tag_push_in_the_steady_state_costs_at_most_four_commands(world: World) -> None:
    repo, pushes = "costs/app", 40
    manifest, other = await _manifest(world, repo), await _manifest(world, repo)
    await _push(world, repo, "first", manifest)
    await _push(world, repo, "moving", other)
    await world.settle()
    world.docs.calls.clear()
    published = world.published

    for i in range(pushes):
        await _push(world, repo, f"t{i:04d}", manifest)  # a new tag
    new_tags = world.docs.of("request")
    for i in range(pushes):
        await _push(world, repo, "moving", manifest if i % 2 == 0 else other)  # an existing tag moves
    await world.settle()

    request = world.docs.total("request")
    assert request <= 4 * 2 * pushes, world.docs.of("request")
    # Exactly: the tag's read, the intent, the tag's write, the manifest's touch; no flip (the relay of this
    # process takes it in memory), no read of the repository or the manifest (known).
    assert new_tags == {"get": pushes, "insert": 2 * pushes, "update": pushes}, new_tags
    # Every change announced: the manifest and the tag of each push.
    assert world.published - published == 2 * 2 * pushes
    # The relay reads and deletes in batches: at most two commands per push even one push at a time.
    assert world.docs.total("relay") <= 2 * 2 * pushes, world.docs.of("relay")


async def test_concurrent_tag_pushes_share_the_relays_commands(world: World) -> None:
    repo, pushes = "costs/concurrent", 64
    manifest = await _manifest(world, repo)
    await _push(world, repo, "first", manifest)
    await world.settle()
    world.docs.calls.clear()
    published = world.published
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await _push(world, repo, f"c{i:04d}", manifest)

    await asyncio.gather(*(one(i) for i in range(pushes)))
    await world.settle()
    assert world.docs.total("request") <= 4 * pushes, world.docs.of("request")
    assert world.published - published == 2 * pushes
    assert world.docs.total("relay") < pushes, world.docs.of("relay")
    assert await world.registry.meta.list_tags(repo) == [*(f"c{i:04d}" for i in range(pushes)), "first"]


async def test_listings_are_one_query_for_the_names_and_repeats_none(world: World) -> None:
    repo = "costs/list"
    manifest = await _manifest(world, repo)
    for i in range(30):
        await _push(world, repo, f"v{i:03d}", manifest)
    await world.settle()
    world.docs.calls.clear()
    assert await world.registry.list_tags(RepositoryName(repo), after=None, limit=None) == [
        f"v{i:03d}" for i in range(30)
    ]
    assert await world.registry.list_tags(RepositoryName(repo), after="v009", limit=5) == [
        f"v{i:03d}" for i in range(10, 15)
    ]
    # One query for the names, kept for the second listing; the repository's record is read to tell
    # NAME_UNKNOWN from no tags, unless names are kept (they prove it exists).
    assert world.docs.of("request") == {"find": 1, "get": 1}
    assert "costs/list" in await world.registry.meta.list_repositories()
    # A tag pushed here is listed at once, with no command: its commit changes the kept names alike.
    await _push(world, repo, "v100", manifest)
    world.docs.calls.clear()
    assert (await world.registry.list_tags(RepositoryName(repo), after=None, limit=None))[-1] == "v100"
    assert world.docs.of("request") == {}
    # A deleted repository is unknown at once, here (and on other replicas once its tags' events arrive).
    await delete_repository(world.registry, RepositoryName(repo), actor="test", force=True)
    with pytest.raises(NameUnknownError):
        await world.registry.list_tags(RepositoryName(repo), after=None, limit=None)


class _NoGates:
    def invalidate(self, **_: object) -> None:
        pass


async def test_another_replicas_new_tag_is_listed_when_its_event_arrives_and_ours_cost_nothing(world: World
                                                                                                ) -> None:
    repo = RepositoryName("costs/replicas")
    manifest = await _manifest(world, str(repo))
    group = f"costs-{uuid.uuid4().hex[:8]}"
    follower = ReplicaCacheInvalidation(world.events, [TopicSettings().tags], _NoGates(),  # type: ignore[arg-type]
                                        world.registry.meta, world.registry.outbox, group=group)
    stop = asyncio.Event()
    following = asyncio.create_task(follower.run(stop))
    try:
        # This replica's own tag events reach its follower after its commit dropped the names: skipped.
        await _push(world, str(repo), "mine", manifest)
        assert await world.registry.list_tags(repo, after=None, limit=None) == ["mine"]
        await world.settle()
        await asyncio.sleep(1.0)  # the follower has had the event
        world.docs.calls.clear()
        assert await world.registry.list_tags(repo, after=None, limit=None) == ["mine"]
        assert world.docs.of("request") == {}
        # Another replica: its own store and outbox; this process's relay publishes its intent.
        other = Registry(blobs=world.registry.blobs, meta=MetadataStore(world.docs.inner),
                         outbox=Outbox(world.docs.inner), settings=RegistrySettings(), topics=TopicSettings())
        await other.put_manifest(repo, Tag("theirs"), manifest, OCI_MANIFEST, actor="test")
        async with asyncio.timeout(TAG_LIST_SECONDS / 2):  # the event, not the TTL
            while "theirs" not in await world.registry.list_tags(repo, after=None, limit=None):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await following


async def test_a_manifest_get_by_tag_is_one_read_and_a_delete_is_seen_at_once(world: World) -> None:
    repo = "costs/get"
    manifest = await _manifest(world, repo)
    digest = Digest.parse(digest_of(manifest))
    await _push(world, repo, "v1", manifest)
    await _push(world, repo, "v2", manifest)
    await world.settle()
    world.docs.calls.clear()
    for _ in range(20):
        record = await world.registry.resolve(RepositoryName(repo), Tag("v1"))
        assert record.data == manifest and record.digest == digest
    # The tag's read each time; the manifest's only the first time, then from this replica's cache of
    # content-addressed records.
    assert world.docs.of("request") == {"get": 20 + 1}
    # By digest: the manifest's own read (it proves membership), never the cache.
    world.docs.calls.clear()
    assert (await world.registry.resolve(RepositoryName(repo), digest)).data == manifest
    assert world.docs.of("request") == {"get": 1}

    # Another replica (a store without this one's cache) deletes the manifest and its tags: the tag read
    # here says so at once.
    other = MetadataStore(world.docs.inner)
    registry = Registry(blobs=world.registry.blobs, meta=other, outbox=Outbox(world.docs.inner),
                        settings=RegistrySettings(), topics=TopicSettings())
    await registry.delete_manifest(RepositoryName(repo), digest, actor="test")
    for tag in ("v1", "v2"):
        with pytest.raises(ManifestUnknownError):
            await world.registry.resolve(RepositoryName(repo), Tag(tag))
    with pytest.raises(ManifestUnknownError):
        await world.registry.resolve(RepositoryName(repo), digest)
