"""A manifest's graph, walked from metadata: an index's platform manifests, each image's config and layers,
with sizes and media types. Reads only stored manifests (exact pushed bytes), never blob contents."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from services.core.errors import ManifestUnknownError
from services.core.oci.digest import Digest
from services.core.oci.manifest import Descriptor, ParsedManifest, parse_manifest
from services.core.oci.mediatypes import INDEX_TYPES
from services.core.oci.platform import Platform
from services.core.storage.meta import MANIFESTS, ManifestRecord, MetadataStore

MAX_DEPTH = 4
"""An index of indexes of images is as deep as real content goes; deeper is refused, not recursed."""


@dataclass(frozen=True, slots=True)
class ManifestNode:
    """One manifest of the graph: what it is, where an index placed it, and its children or blobs."""

    record: ManifestRecord
    parsed: ParsedManifest
    platform: Platform | None = None
    children: tuple[ManifestNode, ...] = ()
    missing: tuple[Descriptor, ...] = field(default=())
    """Children an index names that this repository does not hold (allowed for foreign platforms)."""

    @property
    def digest(self) -> Digest:
        return self.record.digest

    @property
    def media_type(self) -> str:
        return self.record.media_type

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config, then layers (an image's own; an index has none)."""
        return self.parsed.blob_references

    def images(self) -> Iterator[ManifestNode]:
        """Every image manifest of the graph (itself, if it is one), depth first in index order."""
        if not self.parsed.is_index:
            yield self
        for child in self.children:
            yield from child.images()

    def all_blobs(self) -> list[Descriptor]:
        """Every blob the graph references, first occurrence of each digest."""
        seen: dict[Digest, Descriptor] = {}
        for image in self.images():
            for blob in image.blobs:
                seen.setdefault(blob.digest, blob)
        return list(seen.values())

    @property
    def total_size(self) -> int:
        """Manifest bytes plus each distinct blob once."""
        manifests = sum(n.record.size for n in self._nodes())
        return manifests + sum(b.size for b in self.all_blobs())

    def _nodes(self) -> Iterator[ManifestNode]:
        yield self
        for child in self.children:
            yield from child._nodes()


async def walk(meta: MetadataStore, repository: str, digest: Digest, *, max_bytes: int = 4 * 1024 * 1024,
               platform: Platform | None = None, _depth: int = 0) -> ManifestNode:
    """The graph under `digest` in `repository`. ManifestUnknownError if the top manifest is not there."""
    record = await meta.manifest(repository, digest)
    if record is None:
        raise ManifestUnknownError(f"manifest {digest} is not in repository {repository}")
    parsed = parse_manifest(record.data, record.media_type, max_bytes=max(max_bytes, record.size))
    if not parsed.is_index or _depth >= MAX_DEPTH:
        return ManifestNode(record, parsed, platform)
    children: list[ManifestNode] = []
    missing: list[Descriptor] = []
    for child in parsed.manifests:
        try:
            node = await walk(meta, repository, child.digest, max_bytes=max_bytes, platform=child.platform,
                              _depth=_depth + 1)
        except ManifestUnknownError:
            missing.append(child)
            continue
        children.append(node)
    return ManifestNode(record, parsed, platform, tuple(children), tuple(missing))


async def indexes_listing(meta: MetadataStore, repository: str, manifest: ManifestRecord, *, page: int = 500
                          ) -> list[ManifestRecord]:
    """The indexes of `repository` that list `manifest` as a child (for gates on platform manifests).
    Reads the repository's indexes page by page; callers cache what they learn."""
    found: list[ManifestRecord] = []
    digest = str(manifest.digest)
    for media_type in sorted(INDEX_TYPES):
        after: str | None = None
        while True:
            docs = await meta.docs.find(MANIFESTS, {"repository": repository, "media_type": media_type},
                                        after=after, limit=page)
            found += [ManifestRecord.from_doc(d) for d in docs if digest in (d.get("references") or ())]
            if len(docs) < page:
                break
            after = str(docs[-1]["_id"])
    return found
