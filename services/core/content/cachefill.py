"""The content model as the pull-through cache fills it: a manifest fetched from an upstream is stored (with
its events, tags and GC guard) before the blobs it references, which are fetched when a client asks for them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from services.core.content.registry import Registry
from services.core.oci.digest import Digest
from services.core.oci.manifest import ParsedManifest
from services.core.oci.names import RepositoryName
from services.core.storage.gcmarks import BlobGuard, CollectedWhileStoringError


class _LazyReferences:
    """The GC guard for manifests whose references are fetched on demand: what a run has marked is rescued as
    for any push, but references a run deleted do not refuse the manifest (a client that asks for them gets
    them from upstream again). The manifest itself: its store is conditional like every other (meta.py)."""

    def __init__(self, inner: BlobGuard) -> None:
        self._inner = inner

    async def after_link(self, digest: Digest, *, exists: Callable[[], Awaitable[bool]]) -> bool:
        return await self._inner.after_link(digest, exists=exists)

    @contextlib.asynccontextmanager
    async def storing_manifest(self, repository: str, blobs: Sequence[str], manifests: Sequence[str]
                               ) -> AsyncIterator[list[str]]:
        with contextlib.suppress(CollectedWhileStoringError):  # fetched again from upstream when asked
            async with self._inner.storing_manifest(repository, blobs, manifests):
                yield []


class CacheFillRegistry(Registry):
    """A Registry whose manifests may reference blobs and child manifests it does not hold (yet): a cached
    repository mirrors an upstream lazily, so a pushed manifest's completeness check does not apply. Every
    other rule (digest verification, tag compare-and-set, events through the outbox) does."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.blob_guard = _LazyReferences(self.blob_guard)

    async def _check_references(self, repo: RepositoryName, parsed: ParsedManifest) -> None:
        return None
