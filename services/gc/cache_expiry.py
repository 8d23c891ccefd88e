"""Expiry of pull-through cache entries, for a GC run's mark phase.

The distribution service records in `proxy_cache` when each cached manifest was last pulled, with `expires` =
that time + `proxy.retention` (services/distribution/cache/records.py; documents `m:<repository>@<digest>`
{kind: "manifest", repository, digest, last_pulled, expires}). A cached manifest not pulled since it expired
loses its tags here (through the outbox, with TagDeleted events; each delete conditional on the tag as read,
so a pull that refetched it meanwhile wins) and is handed to the plan as untagged and old: it goes with this
run, and the blobs only it referenced follow after the blob grace period. A pull that meets it on its way
refetches it from upstream. Entries whose manifest is gone are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from services.core.content import events
from services.core.events.outbox import Delete, Outbox
from services.core.oci.digest import Digest
from services.core.settings import TopicSettings
from services.core.storage import meta as m
from services.core.storage.documents import DocumentStore
from services.gc.mark import ManifestFacts

log = logging.getLogger(__name__)

CACHE: Final = "proxy_cache"
ACTOR: Final = "gc"
_PAGE: Final = 2000


async def _expired(docs: DocumentStore, now: float) -> AsyncIterator[dict[str, Any]]:
    after: str | None = None
    while True:
        page = await docs.find(CACHE, {"kind": "manifest"}, after=after, limit=_PAGE)
        for doc in page:
            if float(doc.get("expires") or 0.0) <= now:
                yield doc
        if len(page) < _PAGE:
            return
        after = str(page[-1]["_id"])


class CacheExpiry:
    """The expired cache entries of one run, applied to each repository's manifests as the run streams them."""

    def __init__(self, docs: DocumentStore, outbox: Outbox, topics: TopicSettings, expired: dict[str, str], *,
                 dry_run: bool) -> None:
        self.docs = docs
        self.outbox = outbox
        self.topics = topics
        self.expired = expired
        """`repository@digest` -> the entry's `_id`."""
        self.dry_run = dry_run
        self._held: set[str] = set()

    @classmethod
    async def load(cls, docs: DocumentStore, outbox: Outbox, topics: TopicSettings, *, now: float,
                   dry_run: bool) -> CacheExpiry:
        expired: dict[str, str] = {}
        if await docs.count(CACHE, {"kind": "manifest"}):
            expired = {f"{d['repository']}@{d['digest']}": str(d["_id"]) async for d in _expired(docs, now)}
        return cls(docs, outbox, topics, expired, dry_run=dry_run)

    async def apply(self, manifests: list[ManifestFacts]) -> list[ManifestFacts]:
        """`manifests` with the expired cache entries untagged and old (their tags deleted unless dry)."""
        if not self.expired:
            return manifests
        out: list[ManifestFacts] = []
        for f in manifests:
            key = f"{f.repository}@{f.digest}"
            if key in self.expired:
                self._held.add(key)
                if f.tagged and not self.dry_run:
                    await _untag(self.docs, self.outbox, self.topics, f)
                f = dataclasses.replace(f, tagged=False, created=0.0)
            out.append(f)
        return out

    async def finish(self) -> None:
        """After every repository was applied: drop the entries whose manifest is gone."""
        gone = [entry for key, entry in self.expired.items() if key not in self._held]
        if gone and not self.dry_run:
            await self.docs.delete_many(CACHE, gone)


async def expire_cache_entries(docs: DocumentStore, outbox: Outbox, topics: TopicSettings,
                               manifests: list[ManifestFacts], *, now: float, dry_run: bool) -> list[ManifestFacts]:
    """`manifests` (all of them) with the expired cache entries untagged and old (their tags deleted unless
    `dry_run`)."""
    expiry = await CacheExpiry.load(docs, outbox, topics, now=now, dry_run=dry_run)
    out = await expiry.apply(manifests)
    await expiry.finish()
    return out


async def _untag(docs: DocumentStore, outbox: Outbox, topics: TopicSettings, f: ManifestFacts) -> None:
    tags = await docs.find(m.TAGS, {"repository": f.repository, "digest": f.digest})
    for tag in tags:
        built = events.tag_deleted(f.repository, tag["name"], Digest.parse(f.digest), actor=ACTOR)
        event = dataclasses.replace(events.outbound(built, topics), op=0)
        try:
            await outbox.commit([Delete(m.TAGS, str(tag["_id"]), expect={"version": tag["version"]})], [event],
                                partial=True)
        except Exception as exc:  # the manifest stays tagged, so the plan keeps it: next run
            log.warning("gc: could not untag expired cache entry %s:%s: %s", f.repository, tag["name"], exc)
