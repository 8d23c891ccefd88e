"""What the pull-through cache remembers besides the content: in `proxy_cache`, when each cached manifest and
blob was last pulled (with the time after which GC may collect it: services/gc/cache_expiry.py reads it), and
when each cached tag was last confirmed by its upstream.

Documents: `m:<repository>@<digest>` and `b:<repository>@<digest>` {kind, repository, digest, last_pulled,
expires}; `t:<repository>:<tag>` {kind: "tag", repository, tag, digest, validated}. Pulls are recorded in
memory and written in batches (`flush`, every `proxy.access_flush_seconds`): a hit costs no write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from services.core.oci.digest import Digest
from services.core.storage.documents import DocumentStore, Index

log = logging.getLogger(__name__)

CACHE: Final = "proxy_cache"
MANIFEST, BLOB, TAG = "manifest", "blob", "tag"
_MAX_TAGS_IN_MEMORY: Final = 100_000


def entry_id(kind: str, repository: str, digest: str) -> str:
    return f"{kind[0]}:{repository}@{digest}"


def tag_id(repository: str, tag: str) -> str:
    return f"t:{repository}:{tag}"


class CacheRecords:
    def __init__(self, docs: DocumentStore, *, retention: float, clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self.retention = retention
        self._clock = clock
        self._pending: dict[str, tuple[str, str, str, float]] = {}
        self._validated: dict[tuple[str, str], tuple[str, float]] = {}

    async def setup(self) -> None:
        await self.docs.ensure_collection(CACHE, [Index(("kind",))])

    # -- last pulls ------------------------------------------------------------------------------

    def pulled(self, kind: str, repository: str, digest: Digest | str) -> None:
        """Record a pull (in memory until the next flush)."""
        key = entry_id(kind, repository, str(digest))
        self._pending[key] = (kind, repository, str(digest), self._clock())

    async def flush(self) -> None:
        """Write the pulls recorded since the last flush (one upsert per entry, the latest pull wins)."""
        pending, self._pending = self._pending, {}
        for key, (kind, repository, digest, at) in pending.items():
            try:
                await self.docs.put(CACHE, {"_id": key, "kind": kind, "repository": repository, "digest": digest,
                                            "last_pulled": at, "expires": at + self.retention})
            except Exception as exc:  # metadata away: keep the rest for the next flush
                log.warning("pull-through cache: could not record last pulls (%s); retrying", type(exc).__name__)
                for k, v in pending.items():
                    self._pending.setdefault(k, v)
                return

    async def flush_loop(self, interval: float) -> None:
        """Flush every `interval` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    # -- tag freshness ---------------------------------------------------------------------------

    async def validated(self, repository: str, tag: str, digest: Digest) -> float | None:
        """When the upstream last confirmed that `tag` is `digest` (None: never, or for another digest)."""
        known = self._validated.get((repository, tag))
        if known is None:
            doc = await self.docs.get(CACHE, tag_id(repository, tag))
            if doc is None:
                return None
            known = (str(doc["digest"]), float(doc["validated"]))
            self._remember(repository, tag, known)
        return known[1] if known[0] == str(digest) else None

    async def confirm(self, repository: str, tag: str, digest: Digest) -> None:
        """The upstream says `tag` is `digest` now."""
        now = self._clock()
        await self.docs.put(CACHE, {"_id": tag_id(repository, tag), "kind": TAG, "repository": repository,
                                    "tag": tag, "digest": str(digest), "validated": now})
        self._remember(repository, tag, (str(digest), now))

    def _remember(self, repository: str, tag: str, value: tuple[str, float]) -> None:
        if len(self._validated) >= _MAX_TAGS_IN_MEMORY:
            self._validated.pop(next(iter(self._validated)))
        self._validated[(repository, tag)] = value
