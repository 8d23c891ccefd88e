"""The content model as the pull-through cache fills it: a manifest fetched from an upstream is stored (with
its events, tags and GC guard) before the blobs it references, which are fetched when a client asks for them."""

from __future__ import annotations

from services.core.content.registry import Registry
from services.core.oci.manifest import ParsedManifest
from services.core.oci.names import RepositoryName


class CacheFillRegistry(Registry):
    """A Registry whose manifests may reference blobs and child manifests it does not hold yet: a cached
    repository mirrors an upstream lazily, so a pushed manifest's completeness check does not apply. Every
    other rule (digest verification, tag compare-and-set, events through the outbox, the GC guard) does."""

    async def _check_references(self, repo: RepositoryName, parsed: ParsedManifest) -> None:
        return None
